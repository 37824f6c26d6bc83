"""Tokenizers: a registry of kinds (`KINDS`), each writing texts as the fixed-length int32 rows text towers read.

  sentencepiece  `SentencePieceTokenizer`: a SentencePiece model under a source model's conventions: special ids
                 read from the model (pad may be overridden), BOS and/or EOS added, optional lower-casing and
                 punctuation removal. `SIGLIP` holds the options of Hugging Face's SiglipTokenizer, `GEMMA` Gemma's.
  bpe            `BPETokenizer`: byte-level BPE from a Hugging Face tokenizer.json (the `tokenizers` library), such
                 as OpenAI CLIP's or Llama 3's; which specials it adds is read from the file's post-processor.

`Tokenizer` is vlmjax's own (a sentencepiece kind, trained from the captions when the config names none):
ids 0 = padding, 1 = unknown, 2 = BOS, 3 = EOS. `encode` gives fixed-length int32 rows `[BOS] pieces [EOS] 0 0 ...`,
truncated so EOS is always present (text towers pool at the last token); an empty text gives a row of padding, which
objectives treat as "no text". Every kind truncates the same way, keeping its end token as Hugging Face's tokenizers
do with truncation=True (and big_vision's `tokenize(eos="sticky")`); other kinds write an empty text as their specials
and padding, as their sources do.

Every kind has: encode(texts, max_len) -> int32 [N, max_len]; decode(ids) -> list of str (stops at EOS);
pieces(texts) -> list of id lists without specials; vocab_size; pad_id, bos_id, eos_id (-1: none); save(path).
`load(path)` (also `Tokenizer.load`) reads any kind; `check_vocab` checks one against an embedding table.

File format (what `save` writes and `load` reads; runs and bundles name it tokenizer.model):
  - vlmjax's own conventions: the plain SentencePiece model proto, as always.
  - anything else: UTF-8 JSON {"format": "vlmjax.tokenizer", "version": 1, "kind": KIND, "options": {...},
    "model": MODEL}, MODEL being the base64 SentencePiece proto (sentencepiece) or the tokenizer.json object (bpe),
    options the kind's keyword arguments, every one written out.
  - `load` also takes a Hugging Face tokenizer.json as it is (kind bpe, options from its post-processor).
A special token spelled inside a caption: sentencepiece kinds read it as text ("</s>" is pieces, where Hugging Face's
SiglipTokenizer would split out the token); bpe kinds split it out, as the `tokenizers` library and Hugging Face do.
"""
import base64
import io
import json
import os
import re
import string

import numpy as np
import sentencepiece as spm
import tokenizers

PAD, UNK, BOS, EOS = 0, 1, 2, 3
FORMAT = "vlmjax.tokenizer"
MODEL_TYPES = ("bpe", "char")  # what `Tokenizer.train` learns: sub-word pieces, or characters

# Hugging Face's SiglipTokenizer (models/siglip/tokenization_siglip.py): `canonicalize_text` lower-cases (str.lower),
# removes string.punctuation, collapses whitespace and strips; `</s>` is both EOS and padding; no BOS; truncation
# keeps the EOS; an empty text is [EOS] and padding. It took the punctuation removal from big_vision's zero-shot
# class-name canonicalisation (evaluators/proj/image_text/prompt_engineering.py); big_vision's own training
# tokenization (pp/ops_text.py `tokenize(eos="sticky", pad_value=1)`, lower=True) removes no punctuation and
# lower-cases with tf.strings.lower, ASCII only: BIG_VISION_SIGLIP.
SIGLIP = dict(add_bos=False, add_eos=True, pad_id="eos", lower="unicode", strip_punctuation=True,
              empty_as_padding=False)
BIG_VISION_SIGLIP = dict(SIGLIP, lower="ascii", strip_punctuation=False)
# Gemma's SentencePiece model (PaliGemma's tokenizer.model: pad 0, eos 1, bos 2, unk 3) as a decoder's captions need
# it: BOS and EOS added, padding the model's; text as written (its normalizer is the identity, "\n" a piece of its
# own), an empty text [BOS, EOS] as Hugging Face's tokenizer writes it with both specials on.
GEMMA = dict(add_bos=True, add_eos=True, pad_id=None, lower="none", strip_punctuation=False, empty_as_padding=False)
_VLMJAX_OPTIONS = dict(add_bos=True, add_eos=True, pad_id=None, lower="none", strip_punctuation=False,
                       empty_as_padding=True)
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_BATCH_ENCODE_MIN = 64  # texts per call from which one batched (multi-threaded) sentencepiece call pays


class TokenizerError(ValueError):
  """A file that is not a usable tokenizer: the one-line message names it."""


def check_vocab(tokenizer, vocab_size: int, where: str):
  """ValueError unless `tokenizer` has exactly `vocab_size` ids, the rows of the embedding table it feeds."""
  if tokenizer.vocab_size != vocab_size:
    raise ValueError(f"{where}: the tokenizer has {tokenizer.vocab_size} ids but the token embedding table has "
                     f"{vocab_size} rows")


def text_eos_id(tokenizer) -> int:
  """The `eos_id` a text tower (`models.text.TextTransformer`) needs to read `tokenizer`'s rows: -1 when padding is
  id 0 and never a piece of text (vlmjax's own, Gemma's), so `tokens != 0` marks the text; else the end token's id,
  where the text ends (CLIP's BPE pads with its end token and spells "!" as id 0; SigLIP pads with its EOS)."""
  if tokenizer.pad_id == 0 and tokenizer.pad_is_apart():
    return -1
  if not tokenizer.add_eos or tokenizer.eos_id < 0:
    raise TokenizerError(f"tokenizer: pads with id {tokenizer.pad_id}, which is not a token apart at id 0, and adds no "
                     "end token: a text tower cannot tell the text from its padding")
  return tokenizer.eos_id


def check_text_tower(tokenizer, text_config, where: str):
  """TokenizerError (one line naming `model.text.eos_id`) when a text tower that finds the end of the text by its
  padding ('eos' or 'mean' pooling) would misread `tokenizer`'s rows."""
  if not text_config or text_config.get("pool", "eos") == "last":
    return
  want, have = text_eos_id(tokenizer), int(text_config.get("eos_id", -1))
  if want >= 0 and have != want:
    raise TokenizerError(f"{where}: model.text.eos_id is {have} but the tokenizer pads with id {tokenizer.pad_id}: the "
                     f"text tower must end the text at its end token (set model.text.eos_id={want})")


class BaseTokenizer:
  """What every kind shares: specials and fixed-length rows around the kind's `pieces`."""
  kind = ""
  add_bos, add_eos, empty_as_padding = True, True, False
  pad_id, bos_id, eos_id = PAD, -1, -1

  def pieces(self, texts) -> list[list[int]]:
    raise NotImplementedError

  def _decode_pieces(self, ids: list[int]) -> str:
    raise NotImplementedError

  def options(self) -> dict:
    raise NotImplementedError

  def pad_is_apart(self) -> bool:
    """Whether the padding id is never written for text (neither a piece nor BOS/EOS)."""
    raise NotImplementedError

  def model_json(self):
    raise NotImplementedError

  @property
  def vocab_size(self) -> int:
    raise NotImplementedError

  def encode(self, texts, max_len: int) -> np.ndarray:
    """list of str -> int32 [N, max_len]: [BOS] pieces [EOS] then padding, as the kind adds them; pieces cut so the
    end token stays. With `empty_as_padding` an empty (or blank) text is a row of padding only."""
    texts = list(texts)
    head = [self.bos_id] if self.add_bos else []
    tail = [self.eos_id] if self.add_eos else []
    room = max(0, max_len - len(head) - len(tail))
    out = np.full((len(texts), max_len), self.pad_id, np.int32)
    for i, (text, ids) in enumerate(zip(texts, self.pieces(texts))):
      if self.empty_as_padding and not text.strip():
        continue
      row = (head + ids[:room] + tail)[:max_len]
      out[i, :len(row)] = row
    return out

  def decode(self, ids) -> list[str]:
    """int [N, T] -> list of str, stopping at EOS and skipping padding/BOS."""
    texts = []
    for row in np.asarray(ids):
      row = [int(t) for t in row]
      if self.eos_id >= 0 and self.eos_id in row:
        row = row[:row.index(self.eos_id)]
      texts.append(self._decode_pieces([t for t in row if t not in (self.pad_id, self.bos_id)]))
    return texts

  def serialize(self) -> bytes:
    """The file's bytes (module docstring)."""
    spec = dict(format=FORMAT, version=1, kind=self.kind, options=self.options(), model=self.model_json())
    return json.dumps(spec, ensure_ascii=False).encode("utf-8")

  def save(self, path: str):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(self.serialize())
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "BaseTokenizer":
    return load(path)


class SentencePieceTokenizer(BaseTokenizer):
  """A SentencePiece model under a source's conventions. `pad_id`: an id, "eos" (SigLIP pads with its EOS) or None
  (the model's pad id, else 0). `lower`: "none", "unicode" (str.lower) or "ascii" (A-Z only, as TF's
  tf.strings.lower). `strip_punctuation`: remove string.punctuation, collapse whitespace runs to one space, strip."""
  kind = "sentencepiece"

  def __init__(self, model_proto: bytes, *, add_bos: bool = True, add_eos: bool = True, pad_id=None,
               lower: str = "none", strip_punctuation: bool = False, empty_as_padding: bool = True):
    self.model_proto = model_proto
    try:
      self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    except (RuntimeError, TypeError, ValueError) as e:
      raise TokenizerError(f"tokenizer: not a SentencePiece model ({str(e).splitlines()[0][:200]})") from None
    if lower not in ("none", "unicode", "ascii"):
      raise TokenizerError(f"tokenizer: lower must be 'none', 'unicode' or 'ascii' (got {lower!r})")
    self.add_bos, self.add_eos, self.empty_as_padding = bool(add_bos), bool(add_eos), bool(empty_as_padding)
    self.lower, self.strip_punctuation, self._pad_option = lower, bool(strip_punctuation), pad_id
    self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
    for name, wanted, got in (("bos", add_bos, self.bos_id), ("eos", add_eos, self.eos_id)):
      if wanted and got < 0:
        raise TokenizerError(f"tokenizer: add_{name} is set but the SentencePiece model has no {name} id")
    if pad_id == "eos":
      self.pad_id = self.eos_id
    elif pad_id is None:
      self.pad_id = max(self.sp.pad_id(), 0)
    else:
      self.pad_id = int(pad_id)
    if not 0 <= self.pad_id < self.vocab_size:
      raise TokenizerError(f"tokenizer: pad id {pad_id!r} is not an id of the model ({self.vocab_size} ids)")

  def options(self) -> dict:
    return dict(add_bos=self.add_bos, add_eos=self.add_eos, pad_id=self._pad_option, lower=self.lower,
                strip_punctuation=self.strip_punctuation, empty_as_padding=self.empty_as_padding)

  def model_json(self):
    return base64.b64encode(self.model_proto).decode("ascii")

  def serialize(self) -> bytes:
    if self.options() == _VLMJAX_OPTIONS and (self.pad_id, self.bos_id, self.eos_id) == (PAD, BOS, EOS):
      return self.model_proto  # vlmjax's own conventions: the plain model, as runs have always held it
    return super().serialize()

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  def pad_is_apart(self) -> bool:
    # Control pieces (pad, bos, eos) are never produced by encoding text.
    return self.sp.is_control(self.pad_id) and self.pad_id not in (self.bos_id, self.eos_id)

  def clean(self, text: str) -> str:
    if self.lower == "unicode":
      text = text.lower()
    elif self.lower == "ascii":
      text = text.translate(_ASCII_LOWER)
    if self.strip_punctuation:
      text = re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()
    return text

  def pieces(self, texts) -> list[list[int]]:
    texts = [self.clean(t) for t in texts]
    if len(texts) < _BATCH_ENCODE_MIN:  # a list call starts sentencepiece's thread pool: ~30x slower for one text
      return [self.sp.encode(t) for t in texts]
    return self.sp.encode(texts)

  def _decode_pieces(self, ids: list[int]) -> str:
    return self.sp.decode(ids)


class Tokenizer(SentencePieceTokenizer):
  """vlmjax's own: a SentencePiece model with pad 0, unk 1, bos 2, eos 3 and the default options."""

  def __init__(self, model_proto: bytes):
    super().__init__(model_proto)
    if (self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id()) != (PAD, BOS, EOS):
      # A user's own model: keep its ids but make sure padding is 0, which the towers rely on.
      raise TokenizerError("tokenizer: the model must use pad_id=0, bos_id=2, eos_id=3 "
                           f"(got pad={self.sp.pad_id()}, bos={self.sp.bos_id()}, eos={self.sp.eos_id()})")

  @classmethod
  def train(cls, texts, vocab_size: int, model_type: str = "bpe") -> "Tokenizer":
    """Trains a SentencePiece model on `texts` (an iterable of strings): `model_type` 'bpe' (pieces
    up to `vocab_size`) or 'char' (one piece per character of the texts, `vocab_size` at most)."""
    if model_type not in MODEL_TYPES:
      raise TokenizerError(f"tokenizer.model_type '{model_type}' is not one of {', '.join(MODEL_TYPES)}")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=proto, vocab_size=vocab_size,
        model_type=model_type, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        hard_vocab_limit=False,  # a small, repetitive caption corpus may not support vocab_size
        character_coverage=1.0, num_threads=1, minloglevel=2, normalization_rule_name="nmt_nfkc_cf")
    return cls(proto.getvalue())


def _check_bpe(tokenizer_json):
  model_type = (tokenizer_json.get("model") or {}).get("type") if isinstance(tokenizer_json, dict) else None
  if model_type != "BPE":
    raise TokenizerError(f"tokenizer.json: model.type '{model_type}' is not supported (only 'BPE')")


def _template_specials(processor: dict | None) -> tuple[list, list]:
  """A tokenizer.json post-processor -> (token names before the text, after it) for a single text."""
  if not processor:
    return [], []
  kind = processor.get("type")
  if kind == "Sequence":
    found = [_template_specials(p) for p in processor.get("processors", [])]
    found = [f for f in found if f != ([], [])]
    if len(found) > 1:
      raise TokenizerError("tokenizer.json: post_processor.processors: more than one adds special tokens")
    return found[0] if found else ([], [])
  if kind in ("RobertaProcessing", "BertProcessing"):
    return [processor["cls"][0]], [processor["sep"][0]]
  if kind == "TemplateProcessing":
    before, after, seen = [], [], False
    for item in processor.get("single", []):
      if "Sequence" in item:
        seen = True
      else:
        (after if seen else before).append(item["SpecialToken"]["id"])
    return before, after
  if kind == "ByteLevel":
    return [], []
  raise TokenizerError(f"tokenizer.json: post_processor.type '{kind}' is not supported (RobertaProcessing, "
                       "BertProcessing, TemplateProcessing, ByteLevel, Sequence)")


class BPETokenizer(BaseTokenizer):
  """Byte-level BPE from a Hugging Face tokenizer.json (its normalizer, pre-tokenizer and merges run in the
  `tokenizers` library; the file's own truncation and padding settings are ignored). Specials are ids;
  `from_tokenizer_json` reads them from the file's post-processor."""
  kind = "bpe"

  def __init__(self, tokenizer_json: dict, *, bos_id: int = -1, eos_id: int = -1, pad_id: int = 0,
               add_bos: bool = False, add_eos: bool = False, empty_as_padding: bool = False):
    _check_bpe(tokenizer_json)
    self.tokenizer_json = tokenizer_json
    try:
      self.tok = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json))
    except Exception as e:  # pylint: disable=broad-except  # the library raises plain Exception on bad files
      raise TokenizerError(f"tokenizer.json: not a usable tokenizer ({str(e).splitlines()[0][:200]})") from None
    self.tok.no_truncation()
    self.tok.no_padding()
    self.bos_id, self.eos_id, self.pad_id = int(bos_id), int(eos_id), int(pad_id)
    self.add_bos, self.add_eos, self.empty_as_padding = bool(add_bos), bool(add_eos), bool(empty_as_padding)
    for name, wanted, got in (("bos", add_bos, self.bos_id), ("eos", add_eos, self.eos_id), ("pad", True, pad_id)):
      if wanted and not 0 <= got < self.vocab_size:
        raise TokenizerError(f"tokenizer.json: {name} id {got} is not an id of the tokenizer ({self.vocab_size} ids)")
    self.end_of_word_suffix = tokenizer_json["model"].get("end_of_word_suffix") or ""

  @classmethod
  def from_tokenizer_json(cls, tokenizer_json: dict | str, pad: str | int | None = None,
                          **options) -> "BPETokenizer":
    """The specials as the file's post-processor adds them (CLIP: RobertaProcessing <|startoftext|> ...
    <|endoftext|>; Llama 3: TemplateProcessing <|begin_of_text|> ...). `pad` (a token or id; default: the file's
    padding token, else its end token as CLIP's tokenizer pads, else 0). `options` override the result."""
    if isinstance(tokenizer_json, str):
      tokenizer_json = json.loads(tokenizer_json)
    _check_bpe(tokenizer_json)
    before, after = _template_specials(tokenizer_json.get("post_processor"))
    if len(before) > 1 or len(after) > 1:
      raise TokenizerError(f"tokenizer.json: post_processor adds {before} before and {after} after the text "
                           "(at most one token each is supported)")
    vocab = dict(tokenizer_json["model"].get("vocab") or {})
    vocab.update({t["content"]: t["id"] for t in tokenizer_json.get("added_tokens") or []})
    token_id = lambda t: vocab[t] if isinstance(t, str) and t in vocab else (t if isinstance(t, int) else -1)
    found = dict(add_bos=bool(before), add_eos=bool(after), bos_id=token_id(before[0]) if before else -1,
                 eos_id=token_id(after[0]) if after else -1)
    if pad is None:
      padding = tokenizer_json.get("padding") or {}
      pad = padding.get("pad_id", found["eos_id"] if after else 0)
    found["pad_id"] = token_id(pad)
    return cls(tokenizer_json, **{**found, **options})

  def options(self) -> dict:
    return dict(bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id, add_bos=self.add_bos,
                add_eos=self.add_eos, empty_as_padding=self.empty_as_padding)

  def model_json(self):
    return self.tokenizer_json

  @property
  def vocab_size(self) -> int:
    return self.tok.get_vocab_size(with_added_tokens=True)

  def pad_is_apart(self) -> bool:
    # An added special token comes out of a caption only where the caption spells it out.
    specials = {t["id"] for t in self.tokenizer_json.get("added_tokens") or [] if t.get("special")}
    return self.pad_id in specials and self.pad_id not in (self.bos_id, self.eos_id)

  def pieces(self, texts) -> list[list[int]]:
    return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

  def _decode_pieces(self, ids: list[int]) -> str:
    text = self.tok.decode(ids, skip_special_tokens=True)
    if self.end_of_word_suffix:  # CLIP's "</w>" ends a word; Hugging Face's CLIPTokenizer decodes it as a space
      text = text.replace(self.end_of_word_suffix, " ").strip()
    return text


KINDS = {"sentencepiece": SentencePieceTokenizer, "bpe": BPETokenizer}


def from_spec(spec: dict) -> BaseTokenizer:
  """A vlmjax tokenizer JSON (module docstring) -> the tokenizer."""
  kind = spec.get("kind")
  if kind not in KINDS:
    raise TokenizerError(f"tokenizer: kind '{kind}' is not one of {', '.join(KINDS)}")
  options = spec.get("options") or {}
  if kind == "sentencepiece":
    try:
      proto = base64.b64decode(spec.get("model") or "", validate=True)
    except ValueError:
      raise TokenizerError("tokenizer: model is not base64 (a SentencePiece model proto)") from None
    return SentencePieceTokenizer(proto, **options)
  return BPETokenizer(spec.get("model"), **options)


def load(path: str) -> BaseTokenizer:
  """Any kind from `path` (module docstring): a plain SentencePiece model is vlmjax's own `Tokenizer`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"tokenizer: no tokenizer at '{path}'")
  with open(path, "rb") as f:
    data = f.read()
  try:
    if data.lstrip()[:1] != b"{":
      return Tokenizer(data)
    try:
      spec = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
      raise TokenizerError("tokenizer: not a SentencePiece model, and not valid JSON either") from None
    if not isinstance(spec, dict):
      raise TokenizerError("tokenizer: a JSON file but neither a vlmjax tokenizer nor a tokenizer.json")
    if spec.get("format") == FORMAT:
      return from_spec(spec)
    if isinstance(spec.get("model"), dict):
      return BPETokenizer.from_tokenizer_json(spec)
    raise TokenizerError(f"tokenizer: a JSON file but neither a vlmjax tokenizer (\"format\": \"{FORMAT}\") nor a "
                         "Hugging Face tokenizer.json (a \"model\" object)")
  except TypeError as e:  # a wrong option name in a hand-written file
    raise TokenizerError(f"tokenizer: bad options ({e}) in '{path}'") from None
  except TokenizerError as e:
    raise TokenizerError(f"{e} in '{path}'") from None
