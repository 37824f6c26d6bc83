"""grain input pipeline: decode, resize, light augmentation, tokenize, batch, per-process shards.

Training data is an index-based `grain.MapDataset`: shuffled with a seed (a new order each epoch),
repeated forever, sliced so that process p of P reads every P-th example, then preprocessed and
batched to the per-process batch. Its iterator's state (a position) is checkpointed with the train
state, so a resumed run sees exactly the batches an uninterrupted run would.
"""
import dataclasses
import io
import re

import grain
import numpy as np
from PIL import Image

from vlmjax.data.tokenizer import Tokenizer


def decode_image(image) -> Image.Image:
  """uint8 array [H, W, 3|1] or encoded bytes -> RGB PIL image."""
  if isinstance(image, (bytes, bytearray)):
    image = Image.open(io.BytesIO(image))
    image.load()
  else:
    image = Image.fromarray(np.asarray(image).squeeze(-1) if np.ndim(image) == 3 and
                            np.shape(image)[-1] == 1 else np.asarray(image))
  return image.convert("RGB")


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


@dataclasses.dataclass
class Preprocess(grain.transforms.RandomMap):
  """record -> {'image': float32 [S, S, 3] in [-1, 1], 'text': int32 [T], ...passthrough}, and with
  `negatives`, 'negative_text': int32 [K, T] from the record's `negative_captions`; and with
  `subcaptions` = K − 1 > 0, 'multi_text': int32 [K, T], the caption then K − 1 sentences sampled
  from the record's `long_caption` (DreamLIP; without replacement when there are enough); and with
  `second_view`, 'image_view2' (another augmentation draw) and 'text_view2' (TCL).

  Training augmentation is deliberately light and label-preserving: a random square crop of
  `crop_min`..1 of the image side (so position words in captions stay true) and a brightness jitter
  (no hue changes: colours are labels).
  """
  tokenizer: Tokenizer
  image_size: int
  max_len: int
  train: bool = False
  crop_min: float = 1.0
  brightness: float = 0.0
  passthrough: tuple = ()
  negatives: bool = False
  subcaptions: int = 0
  second_view: bool = False

  def augment(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    if self.train and self.crop_min < 1.0:
      w, h = image.size
      side = rng.uniform(self.crop_min, 1.0) * min(w, h)
      x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
      image = image.crop((x0, y0, x0 + side, y0 + side))
    image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
    pixels = np.asarray(image, np.float32) / 127.5 - 1.0
    if self.train and self.brightness:
      pixels = np.clip(pixels + rng.uniform(-self.brightness, self.brightness), -1.0, 1.0)
    return pixels

  def random_map(self, record, rng: np.random.Generator):
    image = decode_image(record["image"])
    out = {"image": self.augment(image, rng),
           "text": self.tokenizer.encode([record["caption"]], self.max_len)[0]}
    if self.second_view:  # TCL: another draw of the same augmentation, and the text again
      out["image_view2"], out["text_view2"] = self.augment(image, rng), out["text"]
    if self.negatives:
      out["negative_text"] = self.tokenizer.encode(record["negative_captions"], self.max_len)
    if self.subcaptions:
      out["multi_text"] = self.tokenizer.encode(
          [record["caption"]] + sample_sentences(record["long_caption"], self.subcaptions, rng), self.max_len)
    for key in self.passthrough:
      out[key] = np.asarray(record[key])
    return out

  def map(self, record):  # evaluation: no randomness
    return self.random_map(record, np.random.default_rng(0))


def train_dataset(source, preprocess: Preprocess, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, num_threads: int = 2):
  """An endless, shuffled, per-process batched grain IterDataset. `batch_size` is per process."""
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  ds = ds[process_index::process_count]
  ds = ds.random_map(preprocess, seed=seed + 1)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * batch_size))


def eval_batches(source, preprocess: Preprocess, batch_size: int, indices=None, num_threads: int = 2):
  """Yields batches of the records at `indices` (default: all) in order; the last may be short."""
  ds = grain.MapDataset.source(source)
  if indices is not None:
    indices = np.asarray(indices)
    ds = grain.MapDataset.range(len(indices)).map(lambda i: source[int(indices[i])])
  ds = ds.map(preprocess.map).batch(batch_size, drop_remainder=False)
  yield from ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size))
