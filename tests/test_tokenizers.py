"""Tokenizer kinds against the libraries whose models they load: vlmjax's ids equal Hugging Face transformers' for a
CLIP-style byte-level BPE (CLIPTokenizer), a Llama-3-style one (BOS only) and a SigLIP-style SentencePiece model
(SiglipTokenizer), all trained here, on a few thousand mixed texts padded and truncated to fixed lengths; save/load
round trips; bad files in one line. Offline; needs the `test` extra (transformers, without torch)."""
import io
import json
import random

import numpy as np
import pytest
import sentencepiece as spm
import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

from vlmjax.data import tokenizer as tokenizer_lib
from vlmjax.data.tokenizer import BPETokenizer, SentencePieceTokenizer, Tokenizer, TokenizerError

transformers = pytest.importorskip("transformers")

WORDS = ("a photo of the red circle dog cat's they're we'll naïve café Über straße 東京 タワー москва "
         "x-ray 3.5 42 mr. u.s.a. e-mail hello world 🙂 ﬁne ＡＢＣ résumé").split()
PUNCT = list(".,!?;:'\"()[]{}<>/\\|@#$%^&*-_+=~`")
SPACES = [" ", "  ", "\t", "\n", " \u00a0 ", "   \t  "]
LENGTHS = (8, 16, 77)
# SentencePiece's control pieces spelled in a caption are text to vlmjax but special tokens to Hugging Face's slow
# tokenizers (module docstring), so the texts below never spell them.
SP_SPECIALS = ("</s>", "<unk>", "<pad>")


def mixed_texts(count: int, seed: int = 0) -> list[str]:
  """Punctuation, casing, unicode, whitespace runs, long texts (cut at max_len) and empty texts."""
  rng = random.Random(seed)
  texts = ["", " ", "   \t\n ", "!!!", "...", "a", "A.", "___", "-", "é"]

  def word():
    w = rng.choice(WORDS)
    w = rng.choice([w, w.upper(), w.capitalize(), w.lower()])
    if rng.random() < 0.3:
      w = rng.choice(PUNCT) + w if rng.random() < 0.5 else w + "".join(rng.choices(PUNCT, k=rng.randint(1, 3)))
    return w

  while len(texts) < count:
    n = rng.choice([1, 2, 5, 10, 20, 60])
    text = "".join(word() + rng.choice(SPACES if rng.random() < 0.3 else [" "]) for _ in range(n))
    if rng.random() < 0.2:
      text = rng.choice(SPACES) + text
    if rng.random() < 0.5:
      text = text.strip()
    texts.append(text)
  return texts


TEXTS = mixed_texts(3000)


@pytest.fixture(scope="module")
def clip_hf():
  return clip_tokenizer()


def clip_tokenizer():
  """Hugging Face's CLIPTokenizer over a byte-level BPE trained here with CLIP's normalizer and pre-tokenizer."""
  tok = tokenizers.Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>",
                                        unk_token="<|endoftext|>"))
  tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                         normalizers.Lowercase()])
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
                                 r"[^\s\p{L}\p{N}]+"), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                end_of_word_suffix="</w>", initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(mixed_texts(2000, seed=1), trainer)
  model = json.loads(tok.to_str())["model"]
  # The specials last and "!" at id 0, as in OpenAI CLIP's vocabulary (the trainer puts specials first).
  order = sorted(model["vocab"], key=lambda t: (t.startswith("<|"), model["vocab"][t]))
  vocab = {token: i for i, token in enumerate(order)}
  return transformers.CLIPTokenizer(vocab=vocab, merges=[tuple(m) for m in model["merges"]])


@pytest.fixture(scope="module")
def siglip_model(tmp_path_factory):
  """A SentencePiece model with SigLIP's (c4_en's) ids: pad 0, eos 1, unk 2, no BOS."""
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(mixed_texts(2000, seed=2)), model_writer=proto, vocab_size=400, model_type="unigram",
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, character_coverage=1.0, num_threads=1,
      minloglevel=2)
  path = tmp_path_factory.mktemp("siglip") / "spiece.model"
  path.write_bytes(proto.getvalue())
  return str(path)


def hf_ids(hf, texts, max_len):
  return np.asarray(hf(texts, padding="max_length", truncation=True, max_length=max_len)["input_ids"], np.int32)


def assert_parity(ours, hf, texts):
  for max_len in LENGTHS:
    want, got = hf_ids(hf, texts, max_len), ours.encode(texts, max_len)
    bad = [texts[i] for i in np.flatnonzero((want != got).any(axis=1))]
    assert not bad, f"max_len {max_len}: {len(bad)} of {len(texts)} differ, e.g. {bad[:3]}"


def test_clip_bpe_parity(clip_hf, tmp_path):
  clip_hf.save_pretrained(str(tmp_path))
  ours = tokenizer_lib.load(str(tmp_path / "tokenizer.json"))  # Hugging Face's file as it is
  assert isinstance(ours, BPETokenizer)
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (clip_hf.bos_token_id, clip_hf.eos_token_id,
                                                     clip_hf.pad_token_id)
  assert ours.vocab_size == len(clip_hf)
  assert_parity(ours, clip_hf, TEXTS)
  row = ours.encode(["a photo of a dog"], 16)[0]
  assert ours.decode(row[None])[0] == clip_hf.decode(row, skip_special_tokens=True) == "a photo of a dog"
  assert ours.pieces(["a photo"]) == [clip_hf("a photo", add_special_tokens=False)["input_ids"]]


def test_llama3_style_bpe_parity(clip_hf):
  """BOS only (Llama 3's TemplateProcessing `<|begin_of_text|> $A`): truncation keeps the first pieces."""
  backend = tokenizers.Tokenizer.from_str(clip_hf.backend_tokenizer.to_str())
  bos = clip_hf.bos_token_id
  backend.post_processor = processors.Sequence([  # as Llama 3's tokenizer.json nests it
      processors.ByteLevel(trim_offsets=False),
      processors.TemplateProcessing(single="<|startoftext|> $A", special_tokens=[("<|startoftext|>", bos)])])
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|startoftext|>",
                                            pad_token="<|endoftext|>")
  ours = BPETokenizer.from_tokenizer_json(backend.to_str(), pad="<|endoftext|>")
  assert (ours.add_bos, ours.add_eos, ours.bos_id) == (True, False, bos)
  assert_parity(ours, hf, TEXTS[:1000])


def test_siglip_sentencepiece_parity(siglip_model):
  hf = transformers.SiglipTokenizer(siglip_model)
  with open(siglip_model, "rb") as f:
    ours = SentencePieceTokenizer(f.read(), **tokenizer_lib.SIGLIP)
  assert (ours.eos_id, ours.pad_id, ours.bos_id) == (hf.eos_token_id, hf.pad_token_id, -1) == (1, 1, -1)
  texts = [t for t in TEXTS if not any(s in t for s in SP_SPECIALS)]
  assert len(texts) > 2900
  assert_parity(ours, hf, texts)
  # big_vision's training tokenization lower-cases A-Z only (tf.strings.lower) and keeps punctuation.
  big_vision = SentencePieceTokenizer(ours.model_proto, **tokenizer_lib.BIG_VISION_SIGLIP)
  assert big_vision.clean("ÜBER A.B!") == "Über a.b!" and ours.clean("ÜBER  A.B!") == "über ab"


def test_round_trips(clip_hf, siglip_model, tiny_tokenizer, tmp_path):
  with open(siglip_model, "rb") as f:
    siglip = SentencePieceTokenizer(f.read(), **tokenizer_lib.SIGLIP)
  clip = BPETokenizer.from_tokenizer_json(clip_hf.backend_tokenizer.to_str())
  for name, tok in (("siglip", siglip), ("clip", clip), ("own", tiny_tokenizer)):
    path = str(tmp_path / f"{name}.model")
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert type(loaded) is type(tok) and loaded.options() == tok.options()
    np.testing.assert_array_equal(loaded.encode(TEXTS[:300], 16), tok.encode(TEXTS[:300], 16))
  with open(tmp_path / "own.model", "rb") as f:
    assert f.read() == tiny_tokenizer.model_proto  # vlmjax's own stays a plain SentencePiece model
  assert json.loads((tmp_path / "siglip.model").read_text())["kind"] == "sentencepiece"
  # vlmjax's own conventions: padding rows for empty texts, EOS kept, pieces as SentencePiece gives them.
  assert not tiny_tokenizer.encode(["", "  "], 8).any()
  assert tiny_tokenizer.pieces(["a red circle."]) == [tiny_tokenizer.sp.encode("a red circle.")]


def test_bad_files(clip_hf, tiny_tokenizer, tmp_path):
  wordpiece = json.loads(clip_hf.backend_tokenizer.to_str())
  wordpiece["model"]["type"] = "WordPiece"
  cases = {"garbage.model": (b"\x00\x01not a model at all", "not a SentencePiece model"),
           "other.json": (b'{"hello": 1}', "neither a vlmjax tokenizer"),
           "tokenizer.json": (json.dumps(wordpiece).encode(), "model.type 'WordPiece' is not supported")}
  for name, (data, message) in cases.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(TokenizerError, match=f"{message}.*{name}"):
      tokenizer_lib.load(str(tmp_path / name))
  with pytest.raises(ValueError, match=f"init: the tokenizer has {tiny_tokenizer.vocab_size} ids but the token "
                                       "embedding table has 7 rows"):
    tokenizer_lib.check_vocab(tiny_tokenizer, 7, "init")
  tokenizer_lib.check_vocab(tiny_tokenizer, tiny_tokenizer.vocab_size, "init")


def test_text_tower_must_end_texts_at_the_end_token_of_tokenizers_that_pad_with_it(clip_hf, siglip_model,
                                                                                    tiny_tokenizer):
  """A text tower that finds the text by its padding ('eos', 'mean' pooling) misreads CLIP's rows (padding = the end
  token, "!" = id 0) unless model.text.eos_id is set: one line naming the key and the value to set."""
  clip = BPETokenizer.from_tokenizer_json(clip_hf.backend_tokenizer.to_str())
  siglip = SentencePieceTokenizer(open(siglip_model, "rb").read(), **tokenizer_lib.SIGLIP)
  eot = clip.eos_id
  assert tokenizer_lib.text_eos_id(tiny_tokenizer) == -1 and tokenizer_lib.text_eos_id(clip) == eot
  tokenizer_lib.check_text_tower(tiny_tokenizer, {"pool": "eos"}, "config")
  tokenizer_lib.check_text_tower(clip, {"pool": "eos", "eos_id": eot}, "config")
  tokenizer_lib.check_text_tower(siglip, {"pool": "last"}, "config")  # reads position max_len - 1 only
  for tok, pool in ((clip, "eos"), (clip, "mean"), (siglip, "eos")):
    with pytest.raises(TokenizerError) as e:
      tokenizer_lib.check_text_tower(tok, {"pool": pool}, "config")
    assert "\n" not in str(e.value) and f"set model.text.eos_id={tok.eos_id}" in str(e.value)
