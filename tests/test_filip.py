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


# --- FILIP's own score at evaluation: token-wise retrieval ---------------------------------------


def _reference_scores(x, y, mask):
  """[N, n, E], [M, T, E], [M, T] -> (image→text [N, M], text→image [N, M]) by loops, float64."""
  s_image, s_text = np.zeros((len(x), len(y))), np.zeros((len(x), len(y)))
  for i in range(len(x)):
    for j in range(len(y)):
      valid = np.flatnonzero(mask[j])
      if len(valid):
        sims = x[i] @ y[j][valid].T
        s_image[i, j], s_text[i, j] = sims.max(axis=1).mean(), sims.max(axis=0).mean()
  return s_image, s_text


def test_token_scores_match_reference_in_image_chunks():
  from vlmjax.evals.retrieval import token_scores
  rng = np.random.default_rng(4)
  x, y = _normalised(rng, (10, 6, 8)), _normalised(rng, (7, 5, 8))
  mask = np.arange(5)[None] < rng.integers(1, 6, size=7)[:, None]
  got = token_scores(np.float32(x), np.float32(y), mask, images_per_chunk=3)
  for g, want in zip(got, _reference_scores(x, y, mask)):
    np.testing.assert_allclose(g, want, atol=1e-5)


def test_token_retrieval_ranks_by_late_interaction(tiny_data_dir, tiny_tokenizer):
  """The evaluator's recalls on a (randomly initialised) model equal the recalls of the reference
  scores of its own token embeddings: image→text by the image-side score, text→image by the
  text-side one. They differ from the pooled embeddings' recalls."""
  from conftest import single_device_mesh, tiny_config
  from vlmjax import experiment
  from vlmjax.evals.common import Embedder, EvalContext
  from vlmjax.evals.retrieval import Retrieval, multi_caption_recall
  config = tiny_config(tiny_data_dir)
  built = experiment.build(config, tiny_tokenizer.vocab_size, mesh=single_device_mesh(), validate=False)
  embedder = Embedder(built.model, built.init_state(0)[0]["params"], built.mesh, batch_size=16)
  ctx = EvalContext(config.data, config.input, tiny_tokenizer, embedder, 16)
  got = Retrieval(name="ret", split="test", num_examples=48, score="tokens").run(ctx)
  pooled = Retrieval(name="ret", split="test", num_examples=48).run(ctx)
  source, batches = ctx.batches("test", indices=range(48))
  images = np.concatenate([embedder.embed_image_tokens(b["image"]) for b in batches])
  texts, mask = embedder.embed_text_tokens(ctx.tokenize([source[i]["caption"] for i in range(48)]))
  s_image, s_text = _reference_scores(np.float64(images), np.float64(texts), mask)
  want_i2t = multi_caption_recall(s_image, np.arange(48))["image_to_text"]
  want_t2i = multi_caption_recall(s_text, np.arange(48))["text_to_image"]
  assert {k: got[f"ret/image_to_text_R@{k}"] for k in (1, 5, 10)} == want_i2t
  assert {k: got[f"ret/text_to_image_R@{k}"] for k in (1, 5, 10)} == want_t2i
  assert any(got[k] != pooled[k] for k in got if "R@" in k)


def test_unknown_retrieval_score_is_a_clear_error():
  from vlmjax.evals.retrieval import Retrieval
  with pytest.raises(ValueError, match="evals.ret.score must be one of pooled, tokens"):
    Retrieval(name="ret", score="token")
