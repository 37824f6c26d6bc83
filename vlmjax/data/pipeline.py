"""grain input pipeline: decode, resize, light augmentation, tokenize, batch, per-process shards.

Training data is an index-based `grain.MapDataset`: shuffled with a seed (a new order each epoch),
repeated forever, preprocessed and batched to the per-process batch, and sliced so that process p
of P reads the p-th slice of each global batch. Its iterator's state (a position) is checkpointed with the train
state, so a resumed run sees exactly the batches an uninterrupted run would.

Bad records (corrupt or empty images, empty or over-long captions, text that is not UTF-8) never
stop a run: `Preprocess` returns a `BadRecord` instead of an example, and `SkipBadRecords` fills the
slot with the same slot of a later epoch, counting what it passed over in the example's
`bad_records` field; the train step sums those counts into the train state (so they are global,
checkpointed and logged), and `check_bad_records` turns a flood of them into one clear error.
"""
import dataclasses
import functools
import io
import os
import re

import grain
import numpy as np
from PIL import Image

from vlmjax import registry
from vlmjax.batch_spec import BAD_REASONS, PAD as PAD_ID, caption_sequence
from vlmjax.data.tokenizer import Tokenizer
MIN_RECORDS_FOR_BAD_FRACTION = 200  # the fraction of bad records is judged once this many were read
MAX_BAD_IN_A_ROW = 100  # a slot whose next 100 candidates are all bad: the data is unreadable


class BadDataError(ValueError):
  """Too many bad records: the one-line message names the counts and the config key."""


@dataclasses.dataclass(frozen=True)
class BadRecord:
  """What `Preprocess` returns for a record it cannot use. `reason` is one of BAD_REASONS."""
  reason: str
  detail: str = ""


def _is_utf8(text) -> bool:
  """Sources decode with 'surrogateescape', so bytes that were not UTF-8 are lone surrogates here."""
  try:
    (text if isinstance(text, bytes) else str(text).encode("utf-8")).decode("utf-8")
    return True
  except UnicodeError:
    return False


def record_problem(record, max_caption_chars: int = 0) -> BadRecord | None:
  """The text problem of a source record (checked before the image is decoded), or None. A record
  without a caption (an image of a classification set) has none."""
  if "caption" not in record:
    return None
  texts = [record["caption"], record.get("long_caption", ""), *record.get("negative_captions", ())]
  if not all(_is_utf8(t) for t in texts):
    return BadRecord("not_utf8", "a caption is not valid UTF-8")
  if not isinstance(record["caption"], str) or not record["caption"].strip():
    return BadRecord("empty_caption", "the caption is empty")
  if max_caption_chars and len(record["caption"]) > max_caption_chars:
    return BadRecord("long_caption", f"caption of {len(record['caption'])} characters")
  return None


REASONING = "reasoning"  # `input.caption_field` of a text derived from the caption and the questions


def reasoning_text(record) -> str:
  """A scene's caption followed by each of its questions and answers, a text that reasons about the
  described scene: 'a red circle and a blue square. is there a green star? no. where is the ...'."""
  return " ".join([record["caption"], *(f"{q['question']} {q['answer']}." for q in record["questions"])])


def caption_text(record, field: str):
  """record[field], the text that stands for its caption; a KeyError naming `input.caption_field`.
  `field = 'reasoning'` (`REASONING`) is `reasoning_text` of a record with a caption and questions."""
  if field == REASONING and field not in record and {"caption", "questions"} <= set(record):
    return reasoning_text(record)
  if field not in record:
    raise KeyError(f"input.caption_field: the records have no '{field}' (they have: "
                   f"{', '.join(sorted(k for k in record if k != 'image'))})")
  return record[field]


class LanguageError(ValueError):
  """A language the records have no captions in: one line naming the config key and the languages they have."""


def caption_in(record, language: str, caption_language: str = "en") -> str:
  """The record's caption in `language`: its `caption` when that is `caption_language` (the language
  its captions are in), else its `translations[language]`."""
  if language == caption_language:
    return record["caption"]
  translations = record.get("translations") or {}
  if language not in translations:
    have = ", ".join([caption_language, *sorted(translations)])
    raise LanguageError(f"input.languages: a record has no caption in '{language}' (it has: {have})")
  return translations[language]


def language_mix(input_config) -> tuple:
  """`input.languages` as ((language, probability), ...) over the languages of positive weight; () = off."""
  weights = {k: float(v) for k, v in dict((input_config or {}).get("languages") or {}).items() if v > 0}
  total = sum(weights.values())
  return tuple((k, v / total) for k, v in weights.items())


def source_languages(source) -> tuple:
  """The languages a source's records have captions in: their caption's (`caption_language`, default
  'en'), then their `translations`'."""
  return (getattr(source, "caption_language", "en"), *getattr(source, "translation_languages", ()))


def check_languages(languages, source, key: str = "input.languages"):
  """LanguageError (one line naming `key`) for a language of `languages` the source has no captions in."""
  have = source_languages(source)
  for language in languages:
    if language not in have:
      raise LanguageError(f"{key}: the data has no captions in '{language}' (it has: {', '.join(have)})")


def tokenizer_text(record, field: str) -> str:
  """The text a tokenizer learns from a training record: its caption text (`field`), or, for a
  question record (no caption), its questions and answers."""
  if "caption" not in record and field not in record and "questions" in record:
    return " ".join(f"{q['question']} {q['answer']}" for q in record["questions"])
  return caption_text(record, field)


def caption_field(input_config) -> str:
  """`input_config.caption_field` ('caption' for configs saved before it existed)."""
  return input_config.get("caption_field", "caption") if input_config is not None else "caption"


def decode_image(image) -> Image.Image:
  """uint8 array [H, W, 3|1] or encoded bytes -> RGB PIL image."""
  if isinstance(image, (bytes, bytearray)):
    image = Image.open(io.BytesIO(image))
    image.load()
  else:
    image = Image.fromarray(np.asarray(image).squeeze(-1) if np.ndim(image) == 3 and
                            np.shape(image)[-1] == 1 else np.asarray(image))
  return image.convert("RGB")


def filmstrip_frames(strip: np.ndarray) -> np.ndarray:
  """A clip stored as its frames side by side, [S, T·S, C] -> [T, S, S, C] (square frames, the
  strip's height). ValueError when the width is not a whole number of frames."""
  height, width = strip.shape[:2]
  if height == 0 or width % height:
    raise ValueError(f"a filmstrip of {width}x{height} pixels is not a row of {height}x{height} frames")
  return np.stack(np.split(strip, width // height, axis=1))


def split_sentences(text: str) -> list[str]:
  """DreamLIP's split: on newlines, '</s>' and full stops; stripped, empty pieces dropped."""
  return [s.strip() for s in re.split(r"\n|</s>|[.]", text) if s.strip()]


def sample_sentences(text: str, count: int, rng: np.random.Generator) -> list[str]:
  """`count` sentences of `text`: without replacement when it has enough, else with (every sentence
  can be drawn: DreamLIP's reference code never draws the last one). No sentence -> empty strings."""
  sentences = split_sentences(text)
  if not sentences:
    return [""] * count
  picks = rng.choice(len(sentences), size=count, replace=len(sentences) < count)
  return [sentences[i] + "." for i in picks]


RESIZE_MODES = ("squash", "crop")


def resize(image: Image.Image, size: int, mode: str = "squash") -> Image.Image:
  """-> a size×size image: 'squash' resizes both sides (bilinear); 'crop' resizes the shorter side
  to `size` (bicubic, as CLIP's evaluation does) and takes the centre."""
  if mode == "squash":
    return image.resize((size, size), Image.BILINEAR)
  if mode != "crop":
    raise ValueError(f"resize: mode {mode!r} is not one of {', '.join(RESIZE_MODES)}")
  w, h = image.size
  scale = size / min(w, h)
  w, h = max(size, round(w * scale)), max(size, round(h * scale))
  image = image.resize((w, h), Image.BICUBIC)
  left, top = (w - size) // 2, (h - size) // 2
  return image.crop((left, top, left + size, top + size))


@dataclasses.dataclass
class Example:
  """What a batch field's `make` (`batch_spec.Field`) reads: the source record, its decoded image
  (before augmentation), the example made so far and this example's RNG."""
  record: dict
  image: Image.Image
  made: dict
  rng: np.random.Generator
  preprocess: "Preprocess"
  crop: tuple = ()  # (x0, y0, side) of the square the augmentation cut from `image`, in its pixels; () if none

  def tokenize(self, texts) -> np.ndarray:
    """texts -> int32 [len(texts), max_len] rows, as the caption is tokenized."""
    return self.preprocess.tokenizer.encode(list(texts), self.preprocess.max_len)

  def augment(self) -> np.ndarray:
    """Another draw of the image's augmentation: float32 [S, S, 3]."""
    return self.preprocess.augment(self.image, self.rng)


@dataclasses.dataclass
class Preprocess(grain.transforms.RandomMap):
  """record -> {'image': float32 [S, S, 3] in [-1, 1], 'text': int32 [T], ...}: then each of
  `fields` (`batch_spec.Field`s with a `make`, in order, at the shape `input_config` gives them)
  and the record's `passthrough` keys.

  Training augmentation is deliberately light and label-preserving: a random square crop of
  `crop_min`..1 of the image side (so position words in captions stay true) and a brightness jitter
  (no hue changes: colours are labels). The image then becomes S×S by `resize`: 'squash' (resize
  both sides to S) or 'crop' (the shorter side to S, then the centre S×S: CLIP's evaluation
  transform, which keeps the aspect ratio). A record without a caption has no 'text'.
  """
  tokenizer: Tokenizer
  image_size: int
  max_len: int
  train: bool = False
  crop_min: float = 1.0
  brightness: float = 0.0
  passthrough: tuple = ()
  fields: tuple = ()
  input_config: object = None  # what `fields` read their shapes from
  max_caption_chars: int = 0  # longer captions are bad records (0: no limit)
  resize: str = "squash"
  caption_field: str = "caption"  # the record's text that becomes 'text' (`input.caption_field`)
  languages: tuple = ()  # ((language, probability), ...): the caption's language drawn per record (`language_mix`)
  caption_language: str = "en"  # the language of the records' own `caption` (`data.caption_language`)
  tag_language: bool = False  # add 'language': the caption's language (a decoder's prompt names it)

  def augment(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    return self.augment_with_crop(image, rng)[0]

  def augment_with_crop(self, image: Image.Image, rng: np.random.Generator) -> tuple:
    """-> (pixels float32 [S, S, 3], crop): `crop` = (x0, y0, side), the square cut from `image` in
    its pixels, or () when the whole image was kept (what maps boxes into the augmented image)."""
    crop = ()
    if self.train and self.crop_min < 1.0:
      w, h = image.size
      side = rng.uniform(self.crop_min, 1.0) * min(w, h)
      x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
      image = image.crop((x0, y0, x0 + side, y0 + side))
      crop = (x0, y0, side)
    image = resize(image, self.image_size, self.resize)
    pixels = np.asarray(image, np.float32) / 127.5 - 1.0
    if self.train and self.brightness:
      pixels = np.clip(pixels + rng.uniform(-self.brightness, self.brightness), -1.0, 1.0)
    return pixels, crop

  def question_answer(self, questions, rng: np.random.Generator):
    """One of a record's `questions` ({type, question, answer}), drawn with `rng` -> (text int32
    [max_len]: BOS question answer EOS padding, the question's length in pieces), or a BadRecord:
    no question, an empty answer (counted as an empty caption) or more pieces than
    `input.max_text_len` (a long caption)."""
    if not len(questions):
      return BadRecord("empty_caption", "the record has no questions")
    chosen = questions[int(rng.integers(len(questions)))]
    if not (_is_utf8(chosen["question"]) and _is_utf8(chosen["answer"])):
      return BadRecord("not_utf8", "a question or answer is not valid UTF-8")
    if not str(chosen["answer"]).strip():
      return BadRecord("empty_caption", f"the question '{chosen['question']}' has no answer")
    question, answer = self.tokenizer.pieces([chosen["question"], chosen["answer"]])
    row = [self.tokenizer.bos_id, *question, *answer, self.tokenizer.eos_id]
    if len(row) > self.max_len:
      return BadRecord("long_caption", f"question and answer of {len(row)} tokens, over input.max_text_len "
                                       f"= {self.max_len}")
    text = np.full(self.max_len, self.tokenizer.pad_id, np.int32)
    text[:len(row)] = row
    return text, len(question)

  def random_map(self, record, rng: np.random.Generator):
    """-> the example, or a BadRecord saying why this record cannot be one. A record with
    `questions` and no caption (visual question answering) gets one question and its answer as
    'text' and the question's length as 'question_len' (`question_answer`)."""
    is_question = not isinstance(record, BadRecord) and "caption" not in record and "questions" in record
    if self.caption_field != "caption" and not isinstance(record, BadRecord) and not is_question:
      record = {**record, "caption": caption_text(record, self.caption_field)}
    language = self.caption_language
    if self.languages and not isinstance(record, BadRecord) and not is_question:
      names, probabilities = zip(*self.languages)
      language = names[rng.choice(len(names), p=probabilities)]
      record = {**record, "caption": caption_in(record, language, self.caption_language)}
    qa = None
    if is_question:
      qa = self.question_answer(record["questions"], rng)
      if isinstance(qa, BadRecord):
        return qa
    problem = record if isinstance(record, BadRecord) else record_problem(record, self.max_caption_chars)
    if problem:
      return problem
    image = record["image"]
    if image is None or (len(image) if isinstance(image, (bytes, bytearray)) else np.size(image)) == 0:
      return BadRecord("empty_image", "the image has no bytes or no pixels")
    try:
      image = decode_image(image)
    except Exception as e:  # pylint: disable=broad-except  # PIL raises many types for bad bytes
      return BadRecord("corrupt_image", f"{type(e).__name__}: {e}")
    if min(image.size) == 0:
      return BadRecord("empty_image", f"the image is {image.size[0]}x{image.size[1]}")
    out = {}
    out["image"], crop = self.augment_with_crop(image, rng)
    if "caption" in record:
      out["text"] = self.tokenizer.encode([record["caption"]], self.max_len)[0]
    elif qa is not None:
      out["text"], out["question_len"] = qa
    example = Example(record, image, out, rng, self, crop)
    for field in self.fields:
      out[field.name] = np.asarray(field.make(example, field.shape(self.input_config)), field.dtype)
    for key in self.passthrough:
      out[key] = np.asarray(record[key])
    if self.tag_language:
      out["language"] = language
    return out

  def map(self, record):  # evaluation: no randomness
    return self.random_map(record, np.random.default_rng(0))


class SkipBadRecords(grain.MapDataset):
  """Element i is the parent's element i if that is an example; if it is a BadRecord, the first
  example among elements i + stride, i + 2·stride, ... (with `stride` the source's length: the same
  slot in the following epochs). Each example gets 'bad_records': int32 [len(BAD_REASONS)], the bad
  records passed over to fill its slot. Slots stay where they are, so batches stay full and the
  stream is the same for any number of processes (each reads only its own slots)."""

  def __init__(self, parent: grain.MapDataset, stride: int):
    super().__init__(parent)
    self._stride = stride

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return f"SkipBadRecords(stride={self._stride})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    counts = np.zeros(len(BAD_REASONS), np.int32)
    for attempt in range(MAX_BAD_IN_A_ROW):
      element = self._parent[index + attempt * self._stride]
      if not isinstance(element, BadRecord):
        return {**element, "bad_records": counts}
      counts[BAD_REASONS.index(element.reason)] += 1
    raise BadDataError(f"data: {MAX_BAD_IN_A_ROW} records in a row are bad ({describe_bad_records(counts)}; "
                       f"the last: {element.detail}); is this the right dataset?")


def describe_bad_records(counts) -> str:
  """[len(BAD_REASONS)] counts -> '3 corrupt image, 1 empty caption'."""
  return ", ".join(f"{int(n)} {reason.replace('_', ' ')}" for reason, n in zip(BAD_REASONS, counts) if n)


def check_bad_records(counts, good_records: int, max_fraction: float):
  """Raises BadDataError when more than `max_fraction` of the records read so far were bad, judged
  once MIN_RECORDS_FOR_BAD_FRACTION were read (a few bad records early on are not a flood).
  `counts`: bad records by reason, [len(BAD_REASONS)]; `good_records`: examples trained on."""
  bad = int(np.sum(counts))
  read = bad + good_records
  if read >= MIN_RECORDS_FOR_BAD_FRACTION and bad > max_fraction * read:
    raise BadDataError(f"data: {bad} of the {read} records read so far are bad ({describe_bad_records(counts)}), "
                       f"over data.max_bad_fraction = {max_fraction:g}; fix the data or raise the threshold")


def train_examples(source, preprocess: Preprocess, seed: int, first_index: int = 0) -> grain.MapDataset:
  """The endless stream of preprocessed training examples, element i a function of i alone.

  A source: each record tagged with its position (`record_index`, from `first_index`), shuffled with
  `seed` (a new order each epoch), augmented with the RNG of `seed + 1` and the position, its bad
  records replaced by `SkipBadRecords`. A mixture (`vlmjax.data.mixture.Mixture`: `parts`,
  `weights`, `seeds`): each part such a stream with its own seed and its records' positions
  following the previous parts', its examples tagged with the part's index as 'source' (int32),
  interleaved by `grain.MapDataset.mix` in the proportions of the weights. The skipping is per
  part, so a bad record's replacement comes from its own part (the same slot of a later epoch of
  that part) and the mixture's proportions hold.
  """
  parts = getattr(source, "parts", None)
  if parts is None:
    ds = grain.MapDataset.source(source).map_with_index(functools.partial(_tag_index, first=first_index))
    ds = ds.shuffle(seed=seed).repeat(None)
    ds = ds.random_map(preprocess, seed=seed + 1)
    return SkipBadRecords(ds, stride=len(source))
  firsts = np.cumsum([first_index] + [len(part) for part in parts])
  streams = [train_examples(part, preprocess, part_seed, int(first)).map(functools.partial(_tag_source, index=index))
             for index, (part, part_seed, first) in enumerate(zip(parts, source.seeds, firsts))]
  return grain.MapDataset.mix(streams, list(source.weights))


def _tag_index(index: int, record, first: int):
  return record if isinstance(record, BadRecord) else {**record, "record_index": np.int32(first + index)}


def _tag_source(example: dict, index: int) -> dict:
  return {**example, "source": np.int32(index)}


def train_dataset(source, preprocess: Preprocess, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, num_threads: int = 2,
                  workers: int = 0, worker_nice: int = 0) -> "TrainBatches":
  """An endless, shuffled, per-process batched iterator of `train_examples(source, ...)` (`source`
  one source or a mixture). `batch_size` is per process.

  Process p's k-th batch is the p-th slice of the k-th global batch of `process_count × batch_size`
  examples, augmented with the RNG of each example's global position (the map is lazy: a process
  decodes only its own slice). So the global batch, and the iterator's state (its next batch index
  = the step), are the same for any number of processes: a run can resume on another process count.
  `num_threads`, `workers` and `worker_nice`: see `TrainBatches`.
  """
  ds = train_examples(source, preprocess, seed)
  ds = ds.batch(batch_size, drop_remainder=True)
  return TrainBatches(ds[process_index::process_count], batch_size, num_threads, workers, worker_nice)


def _lower_priority(nice: int, worker_index: int, worker_count: int):
  del worker_index, worker_count
  os.nice(nice)


class TrainBatches:
  """An iterator over `batches[k]`, k = 0, 1, ...; its state is {'next_index': k}, whatever reads them.

  Batches are made ahead of use by `num_threads` threads of this process, or, with `workers` > 0, by
  that many grain worker processes (each makes whole batches, in turn, with `num_threads` threads),
  their scheduling priority lowered by `worker_nice` (`os.nice`). On a CPU-only machine the step and
  the data share the cores: a lowered priority lets decoding take the cycles the step leaves idle
  instead of pre-empting one of XLA's threads, which stalls the others at the next barrier. The
  state does not depend on these settings, so a run may resume with others.
  """

  def __init__(self, batches: grain.MapDataset, batch_size: int, num_threads: int = 2, workers: int = 0,
               worker_nice: int = 0):
    self.batches, self.batch_size = batches, batch_size
    self.num_threads, self.workers, self.worker_nice = num_threads, workers, worker_nice
    self.next_index, self._iterator = 0, None

  def _start(self):
    ds = self.batches[self.next_index:].to_iter_dataset(
        grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=4 * self.batch_size))
    if self.workers:
      from absl import flags  # pylint: disable=import-outside-toplevel
      if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (their defaults will do)
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=2),
                          worker_init_fn=functools.partial(_lower_priority, self.worker_nice))
    self._iterator = iter(ds)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._iterator is None:
      self._start()
    batch = next(self._iterator)
    self.next_index += 1
    return batch

  def get_state(self) -> dict:
    return {"next_index": self.next_index}

  def set_state(self, state: dict):
    self.close()
    self.next_index = int(state["next_index"])

  def close(self):
    """Stops the threads or worker processes (a later `next` starts them again)."""
    if self._iterator is not None:
      self._iterator.close()
    self._iterator = None


def with_passthrough(preprocess, keys: tuple):
  """`preprocess` (a `Preprocess`, or a maker wrapping one as its `base`) also passing the record's
  `keys` through."""
  if hasattr(preprocess, "base"):
    return dataclasses.replace(preprocess, base=with_passthrough(preprocess.base, keys))
  return dataclasses.replace(preprocess, passthrough=tuple(dict.fromkeys(preprocess.passthrough + tuple(keys))))


def eval_batches(source, preprocess: Preprocess, batch_size: int, indices=None, num_threads: int = 2):
  """Yields batches of the records at `indices` (default: all) in order; the last may be short.
  Each example's 'index' is its record's index in `source`; a bad record is left out."""
  indices = np.arange(len(source)) if indices is None else np.asarray(indices)

  def read(i):
    record = source[int(indices[i])]
    return record if isinstance(record, BadRecord) else {**record, "index": int(indices[i])}

  ds = grain.MapDataset.range(len(indices)).map(read)
  ds = ds.map(with_passthrough(preprocess, ("index",)).map).filter(lambda example: not isinstance(example, BadRecord))  # left out
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size))
  yield from ds.batch(batch_size, drop_remainder=False)


# --- Decoder (VLM / LM) examples: `batch_spec.caption_sequence` ---------------------------------


@dataclasses.dataclass
class CaptionPreprocess(grain.transforms.RandomMap):
  """A record -> a decoder example: `base` (a `Preprocess`) decodes, augments and tokenizes it, then
  its 'text' becomes `caption_sequence(text, num_image_tokens, prompt, prefix_attention)` (a
  question record's: supervised on the answer only, `question_len`). Without
  `with_image` (a text-only LM) the image is dropped. What `base` rejects (a BadRecord) is passed on
  unchanged."""
  base: Preprocess
  num_image_tokens: int
  prompt: tuple = ()
  with_image: bool = True
  prefix_attention: str = "causal"
  keep_text: bool = False  # also keep 'text' (a model that embeds the caption with a text tower)
  language_prompts: tuple = ()  # ((language, prompt), ...): the prompt says the caption's language

  def random_map(self, record, rng: np.random.Generator):
    example = self.base.random_map(record, rng)
    if not isinstance(example, dict):
      return example
    text = example["text"] if self.keep_text else example.pop("text")
    prompt = dict(self.language_prompts)[example.pop("language")] if self.language_prompts else self.prompt
    example.update(caption_sequence(text, self.num_image_tokens, prompt, self.prefix_attention,
                                    example.pop("question_len", 0)))
    if not self.with_image:
      example.pop("image")
    return example

  def map(self, record):  # evaluation: no randomness
    return self.random_map(record, np.random.default_rng(0))


LANGUAGE_SLOT = "{language}"  # in `input.prompt`: replaced by the caption's language ('caption {language}')


def prompt_languages(input_config) -> tuple:
  """The languages a prompt with `LANGUAGE_SLOT` is written for: every key of `input.languages`,
  those of weight 0 too (a run may be asked for a language it never trained on)."""
  return tuple(dict((input_config or {}).get("languages") or {})) or ("en",)


def prompt_ids(tokenizer: Tokenizer, input_config, language: str | None = None) -> tuple:
  """The pieces of `input_config.prompt` (text put between BOS and a decoder's caption), or ().

  A prompt with `LANGUAGE_SLOT` says which language to caption in: its pieces for `language`
  (default 'en' where it is one of `prompt_languages`, else the first), left-padded with PAD to the
  longest of `prompt_languages`, so that every language's sequence has one layout (padding attends
  to nothing and nothing attends to it). LanguageError for a language outside them."""
  prompt = input_config.get("prompt", "")
  if not prompt:
    return ()
  if LANGUAGE_SLOT not in prompt:
    return tuple(tokenizer.pieces([prompt])[0])
  languages = prompt_languages(input_config)
  language = language or ("en" if "en" in languages else languages[0])
  if language not in languages:
    raise LanguageError(f"input.prompt: no prompt in '{language}': the run's languages (input.languages) are "
                        f"{', '.join(languages)}")
  pieces = {k: tokenizer.pieces([prompt.replace(LANGUAGE_SLOT, k)])[0] for k in languages}
  length = max(len(p) for p in pieces.values())
  return (PAD_ID,) * (length - len(pieces[language])) + tuple(pieces[language])


def prefix_attention(input_config) -> str:
  """`input_config.prefix_attention` ('causal' for configs saved before it existed)."""
  return input_config.get("prefix_attention", "causal")


@registry.register("preprocess", "vlm")
@registry.register("preprocess", "lm")
def caption_preprocess(base: Preprocess, config, tokenizer: Tokenizer, model):
  """The decoder example maker for `model` (an LM or VLM) on `config.input` (`prompt`: text put
  between BOS and the caption, never supervised)."""
  num_image_tokens = model.num_image_tokens(config.input.image_size)
  language_prompts = ()
  if LANGUAGE_SLOT in config.input.get("prompt", ""):  # each example prompted in its caption's language
    language_prompts = tuple((k, prompt_ids(tokenizer, config.input, k)) for k in prompt_languages(config.input))
    base = dataclasses.replace(base, tag_language=True)
  return CaptionPreprocess(base, num_image_tokens, prompt_ids(tokenizer, config.input),
                           with_image=num_image_tokens > 0, prefix_attention=prefix_attention(config.input),
                           language_prompts=language_prompts)


@registry.register("preprocess", "close")
def embedding_caption_preprocess(base: Preprocess, config, tokenizer: Tokenizer, model):
  """A decoder example that keeps the caption's 'text' for the model's text tower (CLOSE)."""
  return dataclasses.replace(caption_preprocess(base, config, tokenizer, model), keep_text=True)


@dataclasses.dataclass
class WithoutKeys(grain.transforms.RandomMap):
  """`base`'s examples without `keys` (what `base` rejects, a BadRecord, passed on unchanged)."""
  base: Preprocess
  keys: tuple = ()

  def random_map(self, record, rng: np.random.Generator):
    example = self.base.random_map(record, rng)
    if isinstance(example, dict):
      for key in self.keys:
        example.pop(key, None)
    return example

  def map(self, record):  # evaluation: no randomness
    return self.random_map(record, np.random.default_rng(0))


@registry.register("preprocess", "video_clip")
def video_preprocess(base: Preprocess, config, tokenizer: Tokenizer, model):
  """A clip's example: `Preprocess`'s with its `video` field (the model's), without the filmstrip
  squashed into one 'image', which no video model reads."""
  del config, tokenizer, model
  return WithoutKeys(base, ("image",))


@registry.register("preprocess", "dual_encoder")
@registry.register("preprocess", "fusion")
def dual_encoder_preprocess(base: Preprocess, config, tokenizer: Tokenizer, model):
  """A dual encoder (or a fusion encoder) trains on `Preprocess`'s examples as they are."""
  del config, tokenizer, model
  return base
