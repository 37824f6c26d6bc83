"""Caption noise: a training source in which a fraction of the images carry another record's text.

`data.caption_noise = p` reproduces the noisy-pair setting of web alt-text (ALIGN): each training
record, independently with probability p, keeps its image and takes every text of another record
(`caption`, `long_caption`, `negative_captions`, `captions`), drawn uniformly among the others.
Which records are swapped and with whom is a function of (`seed`, index) alone, so every epoch,
process count and resumed run sees the same noisy dataset. Each record says whether its text is its
own (`caption_noisy`: 0 or 1), which a noise-robust objective never reads but its metrics may.
Evaluation splits are never made noisy.
"""
import numpy as np

from vlmjax.data.pipeline import BadRecord
from vlmjax.data.sources import SourceView

TEXT_KEYS = ("caption", "long_caption", "negative_captions", "captions")
NOISE_STREAM = 7  # the last word of each record's RNG seed: independent of any other stream


class NoisyCaptions(SourceView):
  """`source` with a fraction `fraction` of its records' texts replaced by another record's."""

  def __init__(self, source, fraction: float, seed: int):
    if not 0.0 <= fraction <= 1.0:
      raise ValueError(f"config: data.caption_noise must be in [0, 1], got {fraction}")
    if len(source) < 2 and fraction:
      raise ValueError("config: data.caption_noise needs a training split of at least 2 records")
    super().__init__(source)
    self.fraction, self.seed = float(fraction), int(seed)

  def partner(self, index: int) -> int | None:
    """The record whose texts record `index` carries, or None when it keeps its own."""
    rng = np.random.default_rng([self.seed, int(index), NOISE_STREAM])
    if rng.random() >= self.fraction:
      return None
    return (int(index) + 1 + int(rng.integers(len(self.source) - 1))) % len(self.source)

  def __getitem__(self, index):
    record = self.source[index]
    if isinstance(record, BadRecord):
      return record
    other_index = self.partner(index)
    other = None if other_index is None else self.source[other_index]
    if other is None or isinstance(other, BadRecord):  # a partner without text: the record stays clean
      return {**record, "caption_noisy": 0}
    texts = {key: other[key] for key in TEXT_KEYS if key in record and key in other}
    return {**record, **texts, "caption_noisy": 1}


def with_caption_noise(source, data_config, seed: int):
  """The training `source` made noisy by `data_config.caption_noise` (0 or unset: `source` itself)."""
  fraction = float(data_config.get("caption_noise", 0.0) or 0.0)
  return NoisyCaptions(source, fraction, seed) if fraction else source
