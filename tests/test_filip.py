"""FILIP's token-wise loss against a plain float64 numpy reference, with padding and empty captions."""
import jax
import numpy as np
import pytest

from vlmjax.objectives.contrastive import filip_loss, filip_similarities


def _normalised(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference(x, y, mask, theta):
  """Loops written straight from the formula, float64."""
  batch = len(x)
  s_image, s_text = np.zeros((batch, batch)), np.zeros((batch, batch))
  for i in range(batch):
    for j in range(batch):
      valid = np.flatnonzero(mask[j])
      if len(valid) == 0:
        continue  # no valid token: both similarities stay 0
      sims = x[i] @ y[j][valid].T  # [N, valid]
      s_image[i, j] = sims.max(axis=1).mean()
      s_text[i, j] = sims.max(axis=0).mean()
  scale = np.exp(theta)
  log_softmax = lambda z, axis: z - np.log(np.exp(z - z.max(axis, keepdims=True)).sum(axis, keepdims=True)) \
      - z.max(axis, keepdims=True)
  image_to_text = -np.diag(log_softmax(scale * s_image, 1)).mean()
  text_to_image = -np.diag(log_softmax(scale * s_text, 0)).mean()
  return 0.5 * (image_to_text + text_to_image), s_image, s_text


@pytest.mark.parametrize("chunk_size", [0, 2, 3])
def test_filip_matches_reference(chunk_size):
  rng = np.random.default_rng(0)
  batch, n_image, n_text, dim = 6, 5, 7, 8
  x, y = _normalised(rng, (batch, n_image, dim)), _normalised(rng, (batch, n_text, dim))
  lengths = np.array([7, 3, 1, 0, 5, 2])  # caption 3 is all padding
  mask = np.arange(n_text)[None] < lengths[:, None]
  want, want_image, want_text = _reference(x, y, mask, 2.0)
  got_image, got_text = filip_similarities(np.float32(x), np.float32(y), mask, chunk_size)
  np.testing.assert_allclose(got_image, want_image, atol=1e-5)
  np.testing.assert_allclose(got_text, want_text, atol=1e-5)
  got = filip_loss(np.float32(x), np.float32(y), mask, np.float32(2.0), chunk_size)
  np.testing.assert_allclose(got, want, rtol=1e-5)

  # Gradients: finite, zero for padded text tokens, and equal to float64 finite differences in θ.
  grads = jax.grad(filip_loss, argnums=(0, 1, 3))(np.float32(x), np.float32(y), mask, np.float32(2.0),
                                                 chunk_size)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  np.testing.assert_array_equal(np.asarray(grads[1])[~mask], 0.0)
  eps = 1e-5
  fd = (_reference(x, y, mask, 2.0 + eps)[0] - _reference(x, y, mask, 2.0 - eps)[0]) / (2 * eps)
  np.testing.assert_allclose(grads[2], fd, rtol=1e-3)


def test_filip_masked_max_is_not_zero_padding():
  """All similarities negative: a zero-padded max would wrongly return 0 for the image side."""
  x = np.array([[[1.0, 0.0]]], np.float32)
  y = np.array([[[-1.0, 0.0], [0.0, 0.0]]], np.float32)  # one valid token, one pad
  mask = np.array([[True, False]])
  s_image, _ = filip_similarities(x, y, mask)
  np.testing.assert_allclose(s_image, [[-1.0]])
