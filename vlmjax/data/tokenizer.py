"""SentencePiece tokenizer: trained from the training captions when the config names none, or loaded.

Ids: 0 = padding, 1 = unknown, 2 = BOS, 3 = EOS. `encode` gives fixed-length int32 rows
`[BOS] pieces [EOS] 0 0 ...`, truncated so EOS is always present (text towers pool at the last token);
an empty text gives a row of padding, which objectives treat as "no text".
"""
import io
import os

import numpy as np
import sentencepiece as spm

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class TokenizerError(ValueError):
  """A file that is not a usable SentencePiece model: the one-line message names it."""


class Tokenizer:

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    try:
      self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    except (RuntimeError, TypeError, ValueError) as e:
      raise TokenizerError(f"tokenizer: not a SentencePiece model ({str(e).splitlines()[0][:200]})") from None
    if (self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id()) != (PAD, BOS, EOS):
      # A user's own model: keep its ids but make sure padding is 0, which the towers rely on.
      raise TokenizerError("tokenizer: the model must use pad_id=0, bos_id=2, eos_id=3 "
                       f"(got pad={self.sp.pad_id()}, bos={self.sp.bos_id()}, eos={self.sp.eos_id()})")

  @classmethod
  def load(cls, path: str) -> "Tokenizer":
    if not os.path.exists(path):
      raise FileNotFoundError(f"tokenizer: no SentencePiece model at '{path}'")
    with open(path, "rb") as f:
      proto = f.read()
    try:
      return cls(proto)
    except TokenizerError as e:
      raise TokenizerError(f"{e} in '{path}'") from None

  @classmethod
  def train(cls, texts, vocab_size: int) -> "Tokenizer":
    """Trains a BPE SentencePiece model on `texts` (an iterable of strings)."""
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=proto, vocab_size=vocab_size,
        model_type="bpe", pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        hard_vocab_limit=False,  # a small, repetitive caption corpus may not support vocab_size
        character_coverage=1.0, num_threads=1, minloglevel=2, normalization_rule_name="nmt_nfkc_cf")
    return cls(proto.getvalue())

  def save(self, path: str):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(self.model_proto)
    os.replace(tmp, path)

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  def encode(self, texts, max_len: int) -> np.ndarray:
    """list of str -> int32 [N, max_len]; an empty (or blank) text is a row of padding only."""
    out = np.zeros((len(texts), max_len), np.int32)
    for i, (text, ids) in enumerate(zip(texts, self.sp.encode(list(texts)))):
      if not text.strip():
        continue
      ids = [BOS] + ids[:max_len - 2] + [EOS]
      out[i, :len(ids)] = ids
    return out

  def decode(self, ids) -> list[str]:
    """int [N, T] -> list of str, stopping at EOS and skipping padding/BOS."""
    texts = []
    for row in np.asarray(ids):
      row = [int(t) for t in row]
      if EOS in row:
        row = row[:row.index(EOS)]
      texts.append(self.sp.decode([t for t in row if t not in (PAD, BOS)]))
    return texts
