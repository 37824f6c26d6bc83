"""What evaluators share: a jitted embedder over the current params, and the eval data context."""
import dataclasses

import jax
import numpy as np

from vlmjax import sharding
from vlmjax.data import pipeline, sources
from vlmjax.data.tokenizer import Tokenizer


class Embedder:
  """Embeds images and texts with fixed-size, sharded batches (one compilation each), under the
  mesh and the logical axis `rules` the model trains with (`sharding.use`).

  `embed_images(images [N, S, S, 3]) -> [N, E]`, `embed_texts(tokens [N, T]) -> [N, E]`, float32.
  """

  def __init__(self, model, params, mesh, batch_size: int, rules=sharding.DEFAULT_RULES):
    self.model, self.mesh, self.batch_size, self.params, self.rules = model, mesh, batch_size, params, rules
    self._images = jax.jit(lambda p, x: model.apply({"params": p}, images=x)["image_embeds"],
                           out_shardings=sharding.replicated(mesh))
    self._texts = jax.jit(lambda p, x: model.apply({"params": p}, texts=x)["text_embeds"],
                          out_shardings=sharding.replicated(mesh))

  def use(self):
    """The context a jitted apply of the model is traced and run under: mesh and rules."""
    return sharding.use(self.mesh, self.rules)

  def _run(self, fn, x):
    out = []
    for start in range(0, len(x), self.batch_size):
      chunk = x[start:start + self.batch_size]
      padded = np.concatenate([chunk, np.zeros((self.batch_size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
      with self.use():
        out.append(np.asarray(fn(self.params, sharding.global_batch(padded, self.mesh)))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  def embed_images(self, images):
    return self._run(self._images, np.asarray(images, np.float32))

  def embed_texts(self, tokens):
    return self._run(self._texts, np.asarray(tokens, np.int32))


@dataclasses.dataclass
class EvalContext:
  """Everything an evaluator reads: the data config, preprocessing, tokenizer and embedder."""
  data_config: object
  input_config: object
  tokenizer: Tokenizer
  embedder: Embedder
  batch_size: int

  def source(self, split: str):
    return sources.make_source(self.data_config, split)

  def batches(self, split: str, passthrough=(), limit: int = 0, fields=()):
    """Preprocessed eval batches of `split` (its first `limit` records when > 0), with the extra
    batch `fields` (`batch_spec.Field`s, e.g. hard-negative captions)."""
    source = self.source(split)
    indices = range(min(limit, len(source))) if limit > 0 else None
    preprocess = pipeline.Preprocess(self.tokenizer, self.input_config.image_size,
                                     self.input_config.max_text_len, train=False,
                                     passthrough=tuple(passthrough), fields=tuple(fields),
                                     input_config=self.input_config)
    return source, pipeline.eval_batches(source, preprocess, self.batch_size, indices)

  def tokenize(self, texts):
    return self.tokenizer.encode(texts, self.input_config.max_text_len)
