"""What evaluators share: a jitted embedder over the current params, and the eval data context.

An entry of `config.evals` (or of a suite file) names its evaluator by `type`, the evaluator's own
arguments, and optionally where its images come from:

- `data`: a data section like `config.data` (any registered source: `tfds` with `tfds_name` and
  `fields`, `csv`/`jsonl` with `files`, `label_key` and `class_names[_file]`, `vlmjax_shapes`);
  unset keys take the base config's defaults. Default: the training data.
- `resize`: 'crop' (shorter side to the model's image size, then the centre: CLIP's evaluation
  transform) or 'squash'. Default: 'crop' on an entry's own data, 'squash' on the training data
  (as training sees it).
- `image_size`: the resolution the entry runs at. Default: the model's `input.image_size`. At
  another size the model's learned position table is resampled to that patch grid
  (`vit.resample_posemb`, as big_vision fine-tunes at a higher resolution).
"""
import dataclasses
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

import ml_collections

from vlmjax import sharding
from vlmjax.config import EVAL_ENTRY_KEYS, base_config
from vlmjax.data import pipeline, sources
from vlmjax.data.tokenizer import Tokenizer


def eval_data_config(train_data, entry) -> ml_collections.ConfigDict:
  """The data section an eval entry reads: its own `data` over the base defaults, else `train_data`.
  ValueError naming the key for one the data section does not have."""
  own = entry.get("data")
  if not own:
    return train_data
  data = base_config().data
  for key, value in (own.items() if hasattr(own, "items") else []):
    if key not in data:
      raise ValueError(f"config: unknown key 'data.{key}' of an eval entry (known: {', '.join(data.keys())})")
    data[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
  if data.name == "vlmjax_shapes" and not data.data_dir:
    data.data_dir = train_data.get("data_dir", "") if train_data.name == "vlmjax_shapes" else ""
  return data


def entry_resize(entry) -> str:
  resize = entry.get("resize") or ("crop" if entry.get("data") else "squash")
  if resize not in pipeline.RESIZE_MODES:
    raise ValueError(f"config: 'resize' {resize!r} of an eval entry must be one of {', '.join(pipeline.RESIZE_MODES)}")
  return resize


def entry_image_size(entry) -> int:
  """An entry's own `image_size`, or 0 for the model's. ValueError unless a positive integer."""
  size = entry.get("image_size")
  if size is None:
    return 0
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ValueError(f"config: 'image_size' {size!r} of an eval entry must be a positive integer")
  return size


def evaluator_kwargs(entry) -> dict:
  """An entry's arguments for its evaluator's constructor."""
  entry = entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)
  return {k: v for k, v in entry.items() if k not in EVAL_ENTRY_KEYS}


class Embedder:
  """Embeds images and texts with fixed-size, sharded batches (one compilation each), under the
  mesh and the logical axis `rules` the model trains with (`sharding.use`).

  `embed_images(images [N, S, S, 3]) -> [N, E]`, `embed_texts(tokens [N, T]) -> [N, E]`, float32;
  `embed_image_tokens` and `embed_text_tokens`: the projected, L2-normalised token embeddings (FILIP's
  late interaction), [N, n, E] and ([N, T, E], mask [N, T]); `embed_composed(images, tokens)`: a
  model with a composer's query for each image and text, [N, E] (composed image retrieval);
  `embed_pseudo_sentences(images)` and `embed_pseudo_composed(images, tokens)`: a model with
  pseudo-words (ISA), each image's pseudo-sentence alone and followed by the text, [N, E].
  """

  def __init__(self, model, params, mesh, batch_size: int, rules=sharding.DEFAULT_RULES):
    self.model, self.mesh, self.batch_size, self.params, self.rules = model, mesh, batch_size, params, rules
    replicated = sharding.replicated(mesh)
    self._images = jax.jit(lambda p, x: model.apply({"params": p}, images=x)["image_embeds"],
                           out_shardings=replicated)
    self._texts = jax.jit(lambda p, x: model.apply({"params": p}, texts=x)["text_embeds"],
                          out_shardings=replicated)
    l2 = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    self._image_tokens = jax.jit(lambda p, x: l2(model.apply({"params": p}, images=x)["image_tokens"]),
                                 out_shardings=replicated)
    self._text_tokens = jax.jit(
        lambda p, x: (lambda out: (l2(out["text_tokens"]), out["text_mask"]))(model.apply({"params": p}, texts=x)),
        out_shardings=replicated)
    self._composed = jax.jit(
        lambda p, x: model.apply({"params": p}, images=x[0], texts=x[1])["composed_embeds"], out_shardings=replicated)
    self._pseudo_sentences = jax.jit(lambda p, x: model.apply({"params": p}, images=x)["pseudo_sentence_embeds"],
                                     out_shardings=replicated)
    self._pseudo_composed = jax.jit(
        lambda p, x: model.apply({"params": p}, images=x[0], texts=x[1])["pseudo_composed_embeds"],
        out_shardings=replicated)

  def use(self):
    """The context a jitted apply of the model is traced and run under: mesh and rules."""
    return sharding.use(self.mesh, self.rules)

  def run(self, fn, x):
    """A jitted fn(params, batch) over x (an array, or a tuple of arrays of one length) in fixed-size,
    sharded batches -> its outputs, concatenated."""
    out = []
    for start in range(0, len(jax.tree.leaves(x)[0]), self.batch_size):
      chunk = jax.tree.map(lambda a: a[start:start + self.batch_size], x)
      count = len(jax.tree.leaves(chunk)[0])
      batch = jax.tree.map(lambda a: sharding.global_batch(sharding.padded(a, self.batch_size), self.mesh), chunk)
      with self.use():
        out.append(jax.tree.map(lambda y: np.asarray(y)[:count], fn(self.params, batch)))
    if not out:
      return np.zeros((0, 0), np.float32)
    return jax.tree.map(lambda *parts: np.concatenate(parts), *out)

  def embed_images(self, images):
    return self.run(self._images, np.asarray(images, np.float32))

  def embed_texts(self, tokens):
    return self.run(self._texts, np.asarray(tokens, np.int32))

  def embed_image_tokens(self, images):
    return self.run(self._image_tokens, np.asarray(images, np.float32))

  def embed_text_tokens(self, tokens):
    return self.run(self._text_tokens, np.asarray(tokens, np.int32))

  def embed_composed(self, images, tokens):
    return self.run(self._composed, (np.asarray(images, np.float32), np.asarray(tokens, np.int32)))

  def embed_pseudo_sentences(self, images):
    return self.run(self._pseudo_sentences, np.asarray(images, np.float32))

  def embed_pseudo_composed(self, images, tokens):
    return self.run(self._pseudo_composed, (np.asarray(images, np.float32), np.asarray(tokens, np.int32)))


@dataclasses.dataclass
class EvalContext:
  """Everything an evaluator reads: the data config, preprocessing, tokenizer and embedder.
  `progress`: a label to show a progress bar (on stderr) per pass over a split, or ''."""
  data_config: object
  input_config: object
  tokenizer: Tokenizer
  embedder: Embedder
  batch_size: int
  resize: str = "squash"
  progress: str = ""

  def source(self, split: str):
    return sources.make_source(self.data_config, split)

  def batches(self, split: str, passthrough=(), limit: int = 0, fields=(), indices=None, caption_field=None):
    """Preprocessed eval batches of `split` (the records at `indices`, else its first `limit` when
    > 0, else all), with the extra batch `fields` (`batch_spec.Field`s, e.g. hard-negative
    captions). Each batch's 'index' holds its records' indices (a bad record is left out).
    `caption_field`: the record's text that becomes 'text' (default: `input.caption_field`)."""
    source = self.source(split)
    if indices is None and limit > 0:
      indices = range(min(limit, len(source)))
    preprocess = pipeline.Preprocess(self.tokenizer, self.input_config.image_size,
                                     self.input_config.max_text_len, train=False,
                                     passthrough=tuple(passthrough), fields=tuple(fields),
                                     input_config=self.input_config, resize=self.resize,
                                     caption_field=caption_field or pipeline.caption_field(self.input_config))
    batches = pipeline.eval_batches(source, preprocess, self.batch_size, indices)
    if self.progress:
      total = len(source) if indices is None else len(indices)
      batches = progress_bar(batches, math.ceil(total / self.batch_size), f"{self.progress} {split}")
    return source, batches

  def tokenize(self, texts):
    return self.tokenizer.encode(texts, self.input_config.max_text_len)


def progress_bar(batches, total: int, label: str):
  """`batches` with a tqdm bar on stderr (a line per pass when stderr is not a terminal)."""
  from tqdm import tqdm
  yield from tqdm(batches, total=total, desc=label, unit="batch", file=sys.stderr, leave=True,
                  mininterval=1.0, disable=None)
