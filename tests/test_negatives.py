"""Hard negatives: the loss with extra negative columns, and the compositional (ARO-style) evaluator."""
import hashlib

import jax
import numpy as np

from conftest import tiny_config
from test_evals import OracleEmbedder, _key
from vlmjax.evals.common import EvalContext
from vlmjax.evals.compositional import Compositional
from vlmjax.objectives.contrastive import clip_loss, clip_loss_with_negatives


def _normalised(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference(u, v, n, theta):
  s = np.exp(theta)
  logits, negatives = s * u @ v.T, s * np.einsum("id,ikd->ik", u, n)
  rows = np.concatenate([logits, negatives], 1)
  lse = lambda z, axis: np.log(np.exp(z).sum(axis))
  image_to_text = np.mean(lse(rows, 1) - np.diag(logits))
  text_to_image = np.mean(lse(logits, 0) - np.diag(logits))
  return 0.5 * (image_to_text + text_to_image)


def test_negatives_loss_matches_reference_and_only_touches_own_row():
  rng = np.random.default_rng(0)
  u, v, n = _normalised(rng, (6, 8)), _normalised(rng, (6, 8)), _normalised(rng, (6, 3, 8))
  got = clip_loss_with_negatives(np.float32(u), np.float32(v), np.float32(n), np.float32(2.0))
  np.testing.assert_allclose(got, _reference(u, v, n, 2.0), rtol=1e-5)
  # Image i's negatives get gradient only through row i.
  grad = jax.grad(lambda n: clip_loss_with_negatives(np.float32(u), np.float32(v), n, np.float32(2.0)))(
      np.float32(n))
  np.testing.assert_allclose(np.einsum("ikd,id->ik", grad, np.float32(u)) != 0, True)
  # Negatives far from every image change nothing: the loss is CLIP's again.
  far = np.float32(np.broadcast_to(-u[:, None], n.shape))
  with_far = clip_loss_with_negatives(np.float32(u), np.float32(v), far, np.float32(6.0))
  assert with_far >= clip_loss(np.float32(u), np.float32(v), np.float32(6.0))  # more columns, never less loss
  np.testing.assert_allclose(with_far, clip_loss(np.float32(u), np.float32(v), np.float32(6.0)), rtol=1e-2)


def _text_vector(text, dim=64):
  seed = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)
  v = np.random.default_rng(seed).normal(size=dim)
  return v / np.linalg.norm(v)


def _run(tiny_data_dir, tokenizer, image_text):
  """Compositional on 'test' with each image embedded as the text `image_text(record)` would be."""
  config = tiny_config(tiny_data_dir, **{"input.max_text_len": 48})  # keep whole captions
  ctx = EvalContext(config.data, config.input, tokenizer, None, 16)
  source, batches = ctx.batches("test")
  keep = lambda text: tokenizer.decode(tokenizer.encode([text], 48))[0]
  vectors, index = {}, 0
  for batch in batches:
    for image in batch["image"]:
      vectors[_key(image)] = _text_vector(keep(image_text(source[index])))
      index += 1
  ctx.embedder = OracleEmbedder(tokenizer, vectors, _text_vector)
  return Compositional(name="comp", split="test").run(ctx)


def test_compositional_with_oracle_embedders(tiny_data_dir, tiny_tokenizer):
  perfect = _run(tiny_data_dir, tiny_tokenizer, lambda record: record["caption"])
  assert perfect == {"comp/attribute": 1.0, "comp/relation": 1.0, "comp/count": 1.0}
  # A model that confuses every image with its attribute-swapped caption fails exactly that kind.
  fooled = _run(tiny_data_dir, tiny_tokenizer, lambda record: record["negative_captions"][0])
  assert fooled["comp/attribute"] == 0.0
  assert 0.2 < fooled["comp/relation"] < 0.8 and 0.2 < fooled["comp/count"] < 0.8, fooled
