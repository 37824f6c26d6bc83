"""DreamLIP's losses against float64 numpy references, with padded slots; sub-caption sampling."""
import jax
import numpy as np

from vlmjax.data.pipeline import sample_sentences, split_sentences
from vlmjax.objectives.dreamlip import grouped_patches, grouping_loss, multi_positive_loss


def _normalised(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _masked_clip(u, v, valid, theta):
  """Straight from the definition: pairs with an invalid text are not in the loss at all."""
  keep = np.flatnonzero(valid)
  if len(keep) == 0:
    return 0.0
  logits = np.exp(theta) * u @ v[keep].T  # all images against the valid texts
  i2t = [np.log(np.exp(logits[i]).sum()) - logits[i, c] for c, i in enumerate(keep)]
  t2i = [np.log(np.exp(logits[:, c]).sum()) - logits[i, c] for c, i in enumerate(keep)]
  return 0.5 * (np.mean(i2t) + np.mean(t2i))


def test_multi_positive_loss_matches_reference():
  rng = np.random.default_rng(0)
  u, t = _normalised(rng, (5, 8)), _normalised(rng, (5, 3, 8))
  valid = np.ones((5, 3), bool)
  valid[1, 2] = valid[3, 1] = False  # two padded sub-captions
  want = np.mean([_masked_clip(u, t[:, k], valid[:, k], 2.0) for k in range(3)])
  got = multi_positive_loss(np.float32(u), np.float32(t), valid, np.float32(2.0))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  grads = jax.grad(multi_positive_loss, argnums=(0, 1))(np.float32(u), np.float32(t), valid, np.float32(2.0))
  np.testing.assert_array_equal(np.asarray(grads[1])[~valid], 0.0)  # padded slots get no gradient


def test_all_padded_slots_give_zero_loss_not_nan():
  rng = np.random.default_rng(1)
  u, t = _normalised(rng, (4, 8)), _normalised(rng, (4, 2, 8))
  valid = np.zeros((4, 2), bool)
  loss, grads = jax.value_and_grad(multi_positive_loss, argnums=(0, 1))(
      np.float32(u), np.float32(t), valid, np.float32(2.0))
  assert float(loss) == 0.0 and all(np.isfinite(np.asarray(g)).all() for g in grads)
  group = grouping_loss(np.float32(_normalised(rng, (4, 6, 8))), np.float32(t), valid, np.float32(2.0))
  assert float(group) == 0.0


def _grouped_reference(p, t, sigma):
  out = np.zeros(t.shape)
  for b in range(len(p)):
    for k in range(t.shape[1]):
      s = p[b] @ t[b, k]
      w = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else np.zeros_like(s)
      w = np.where(w < sigma, 0, w)
      w = w / w.sum() if w.sum() > 0 else np.full_like(s, 1 / len(s))
      v = w @ p[b]
      out[b, k] = v / np.linalg.norm(v)
  return out


def test_grouping_matches_reference_and_guards_flat_similarities():
  rng = np.random.default_rng(2)
  p, t = _normalised(rng, (3, 6, 8)), _normalised(rng, (3, 2, 8))
  for sigma in (0.0, 0.5):
    np.testing.assert_allclose(grouped_patches(np.float32(p), np.float32(t), sigma),
                               _grouped_reference(p, t, sigma), atol=1e-5)
  views = _grouped_reference(p, t, 0.0).reshape(6, 8)
  want = _masked_clip(views, t.reshape(6, 8), np.ones(6, bool), 1.5)
  got = grouping_loss(np.float32(p), np.float32(t), np.ones((3, 2), bool), np.float32(1.5))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Every patch equally similar (max = min): uniform weights, finite loss and gradients.
  flat = np.float32(np.broadcast_to(p[:, :1], p.shape))
  loss, grad = jax.value_and_grad(grouping_loss)(flat, np.float32(t), np.ones((3, 2), bool), np.float32(1.5))
  assert np.isfinite(float(loss)) and np.isfinite(np.asarray(grad)).all()


def test_subcaption_sampling():
  text = "There is a red circle. There is a blue star.\nThe red circle is left of the blue star. There are two objects."
  assert split_sentences(text) == ["There is a red circle", "There is a blue star",
                                   "The red circle is left of the blue star", "There are two objects"]
  rng = np.random.default_rng(0)
  three = sample_sentences(text, 3, rng)
  assert len(set(three)) == 3 and all(s[:-1] in split_sentences(text) for s in three)  # no repeats
  six = sample_sentences(text, 6, rng)  # more than there are: with replacement, all can appear
  assert len(six) == 6
  seen = {s for _ in range(50) for s in sample_sentences(text, 2, rng)}
  assert seen == {s + "." for s in split_sentences(text)}  # the last sentence is drawn too
  assert sample_sentences("", 2, rng) == ["", ""]
