"""The batch vocabulary: every field a model or objective reads, declared once.

A `Field` is one key of a batch: its per-example shape (a function of `config.input`), its dtype,
how the input pipeline makes it from a record (`make`), and how a synthetic batch draws it (`draw`).
Models declare theirs with `model.batch_fields(input_config, prompt_len)`, objectives with a
`batch_fields` tuple. From that one list come the input pipeline's extra fields, the synthetic
batches of the benchmarks, the abstract batch of TPU sizing and the batch of one that initialises
the params (`experiment.Experiment`), so they cannot disagree.

The decoder layout lives here too: token ids with `IMAGE_TOKEN` placeholders and one attention kind
per token (`PAD` never attended, `BIDIRECTIONAL` a block that attends to itself as a whole: the
image tokens, `CAUSAL` the text), made by `caption_sequence`. `input.prefix_attention`
('causal' or 'bidirectional', `PREFIX_ATTENTIONS`) says whether BOS and the prompt join the image
block: 'bidirectional' is PaliGemma's prefix-LM, where image, BOS and prompt attend to each other and
only the caption is causal.
"""
import dataclasses
from typing import Callable

import jax
import numpy as np

from vlmjax.data.tokenizer import BOS, EOS

IMAGE_TOKEN = -1  # placeholder id at image positions; never a tokenizer piece
PAD, BIDIRECTIONAL, CAUSAL = 0, 1, 2  # attention_mask kinds (PAD is also the padding token id)
PREFIX_ATTENTIONS = ("causal", "bidirectional")  # input.prefix_attention: how BOS and the prompt attend

# Why the input pipeline skipped a record; a train batch's `bad_records` counts them in this order.
BAD_REASONS = ("corrupt_image", "empty_image", "empty_caption", "long_caption", "not_utf8")


@dataclasses.dataclass(frozen=True)
class Field:
  """One batch key. `shape(input_config)` -> the per-example shape; `dtype` a numpy dtype name.

  `make(example, shape) -> array`: how the pipeline makes it from an `pipeline.Example` (the
  record, its decoded image, the example so far, the RNG); None when the pipeline's base
  preprocessing or the model's preprocess makes it.
  `draw(rng, batch_size, input_config, vocab_size, batch) -> array or {key: array}`: a synthetic
  value for `batch_size` examples (`batch` holds the fields drawn before); a dict sets several
  fields drawn together. None when another field's draw sets it.
  """
  name: str
  shape: Callable
  dtype: str
  make: Callable | None = None
  draw: Callable | None = None


def random_texts(rng: np.random.Generator, lead: tuple, length: int, vocab_size: int) -> np.ndarray:
  """int32 [*lead, length] rows as `Tokenizer.encode` writes them: BOS, random pieces of random
  length, EOS, then padding."""
  tokens = rng.integers(4, max(vocab_size, 5), size=(*lead, length), dtype=np.int32)
  lengths = rng.integers(3, length + 1, size=lead)
  positions = np.arange(length)
  tokens[..., 0] = BOS
  tokens = np.where(positions == (lengths - 1)[..., None], EOS, tokens)
  return np.where(positions < lengths[..., None], tokens, PAD).astype(np.int32)


def draw_images(rng, batch_size, input_config, vocab_size, batch):
  del vocab_size, batch
  size = input_config.image_size
  return rng.uniform(-1, 1, size=(batch_size, size, size, 3)).astype(np.float32)


def draw_texts(rng, batch_size, input_config, vocab_size, batch):
  del batch
  return random_texts(rng, (batch_size,), input_config.max_text_len, vocab_size)


def draw_zeros(field: "Field"):
  return lambda rng, batch_size, input_config, vocab_size, batch: np.zeros(
      (batch_size, *field.shape(input_config)), field.dtype)


IMAGE = Field("image", lambda inp: (inp.image_size, inp.image_size, 3), "float32", draw=draw_images)
TEXT = Field("text", lambda inp: (inp.max_text_len,), "int32", draw=draw_texts)
# Made by the train pipeline (`pipeline.SkipBadRecords`) in every train batch: the bad records
# passed over to fill each example's slot, by reason.
BAD_RECORDS = Field("bad_records", lambda inp: (len(BAD_REASONS),), "int32",
                    draw=lambda rng, batch_size, inp, vocab, batch: np.zeros((batch_size, len(BAD_REASONS)), np.int32))
# In the train batches of a mixture of datasets (`vlmjax.data.mixture`): the index of the part each
# example comes from.
SOURCE = Field("source", lambda inp: (), "int32",
               draw=lambda rng, batch_size, inp, vocab, batch: np.zeros((batch_size,), np.int32))
# Each training example's record: its position in the train split (in a mixture, the parts'
# positions follow each other in the parts' order), what per-example state in the train state is
# indexed by (`pipeline.train_examples` tags it; -1 where nothing did, e.g. evaluation).
RECORD_INDEX = Field("record_index", lambda inp: (), "int32",
                     make=lambda example, shape: example.record.get("record_index", -1),
                     draw=lambda rng, batch_size, inp, vocab, batch: np.arange(batch_size, dtype=np.int32))
# Whether the example's caption is another record's (`data.caption_noise`): for metrics only.
CAPTION_NOISY = Field("caption_noisy", lambda inp: (), "int32",
                      make=lambda example, shape: example.record.get("caption_noisy", 0),
                      draw=lambda rng, batch_size, inp, vocab, batch: np.zeros((batch_size,), np.int32))


# --- Decoder examples ----------------------------------------------------------------------------


def caption_sequence(text, num_image_tokens: int, prompt=(), prefix_attention: str = "causal",
                     question_len: int = 0) -> dict:
  """A caption as a decoder example. text int [L] = [BOS pieces EOS pad...] (`Tokenizer.encode`),
  prompt: piece ids (no BOS/EOS) -> int32/float32 arrays of length n + len(prompt) + L:

  - `tokens`: [IMAGE_TOKEN × n] BOS prompt pieces EOS pad...
  - `targets`: the next token where it is supervised (a caption piece or the EOS), else 0;
  - `loss_weights`: 1.0 there, 0.0 at image, BOS/prompt and padding positions;
  - `attention_mask`: BIDIRECTIONAL for image slots (one block), CAUSAL for text, PAD for padding;
    with `prefix_attention='bidirectional'` BOS and the prompt are in the image's block too.

  A question (visual question answering: text = [BOS question answer EOS pad...]) is its first
  `question_len` pieces: part of the prefix like the prompt, so only the answer and its EOS are
  supervised, and the layout up to the answer is `generation_prefix`'s with the question appended
  to the prompt.
  """
  if prefix_attention not in PREFIX_ATTENTIONS:
    raise ValueError(f"prefix_attention must be one of {', '.join(PREFIX_ATTENTIONS)}, got {prefix_attention!r}")
  text, prompt = np.asarray(text, np.int32), np.asarray(prompt, np.int32).reshape(-1)
  tokens = np.concatenate([np.full(num_image_tokens, IMAGE_TOKEN, np.int32), text[:1], prompt, text[1:]])
  start = num_image_tokens + 1 + len(prompt) + question_len  # the first supervised piece
  is_caption = np.zeros(len(tokens), bool)
  is_caption[start:] = tokens[start:] != PAD
  supervised = np.append(is_caption[1:], False)
  kinds = np.where(tokens == IMAGE_TOKEN, BIDIRECTIONAL, np.where(tokens != PAD, CAUSAL, PAD)).astype(np.int32)
  if prefix_attention == "bidirectional":
    kinds[:start] = BIDIRECTIONAL
  return {"tokens": tokens,
          "targets": np.where(supervised, np.roll(tokens, -1), PAD).astype(np.int32),
          "loss_weights": supervised.astype(np.float32),
          "attention_mask": kinds}


def caption_fields(num_image_tokens: int, prompt_len: int = 0) -> tuple:
  """The decoder fields of `caption_sequence` (made by the model's preprocess, `pipeline`):
  tokens, attention_mask, targets int32 and loss_weights float32, each [n + prompt_len + T]."""
  length = lambda inp: (num_image_tokens + prompt_len + inp.max_text_len,)

  def draw(rng, batch_size, input_config, vocab_size, batch):
    del batch
    texts = random_texts(rng, (batch_size,), input_config.max_text_len, vocab_size)
    prompt = rng.integers(4, max(vocab_size, 5), size=prompt_len)
    prefix_attention = input_config.get("prefix_attention", "causal")
    examples = [caption_sequence(text, num_image_tokens, prompt, prefix_attention) for text in texts]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

  return (Field("tokens", length, "int32", draw=draw), Field("attention_mask", length, "int32"),
          Field("targets", length, "int32"), Field("loss_weights", length, "float32"))


# --- Batches from a list of fields -------------------------------------------------------------


def merge(*groups) -> dict:
  """{name: Field} of several field lists in order; a name declared twice must be the same field."""
  out = {}
  for field in (f for group in groups for f in group):
    if field.name in out and out[field.name] != field:
      raise ValueError(f"batch field '{field.name}' is declared twice, differently")
    out[field.name] = field
  return out


def shapes(fields: dict, input_config, batch_size: int) -> dict:
  """{name: (shape with the batch dimension, dtype)}."""
  return {name: ((batch_size, *f.shape(input_config)), np.dtype(f.dtype)) for name, f in fields.items()}


def zeros_batch(fields: dict, input_config, batch_size: int = 1) -> dict:
  """Zeros of every field: init and eval_shape read only the shapes. The image slots of decoder
  tokens are set, since a VLM's init counts them."""
  batch = {k: np.zeros(s, d) for k, (s, d) in shapes(fields, input_config, batch_size).items()}
  if "tokens" in batch and "image" in batch:
    drawn = fields["tokens"].draw(np.random.default_rng(0), batch_size, input_config, 8, batch)
    batch.update({k: v for k, v in drawn.items() if k in batch})
  return batch


def synthetic_batch(fields: dict, input_config, batch_size: int, vocab_size: int, seed: int = 0) -> dict:
  """A numpy batch of `batch_size` random examples with the shapes the input pipeline makes."""
  rng = np.random.default_rng(seed)
  batch = {}
  for name, field in fields.items():
    if name in batch:
      continue
    if field.draw is None:
      raise ValueError(f"batch field '{name}' has no synthetic draw and no other field draws it")
    value = field.draw(rng, batch_size, input_config, vocab_size, batch)
    batch.update(value if isinstance(value, dict) else {name: value})
  return batch


def abstract_batch(fields: dict, input_config, batch_size: int, sharding=None) -> dict:
  """jax.ShapeDtypeStructs of a global batch (for lowering a step without data)."""
  return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding)
          for k, (s, d) in shapes(fields, input_config, batch_size).items()}
