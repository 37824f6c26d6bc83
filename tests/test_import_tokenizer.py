"""`export --from hf_siglip` brings the folder's own spiece.model into the bundle under SigLIP's conventions; a
tokenizer whose size is not the token embedding's is refused in one line. No torch."""
import io
import random
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm

from test_interop_siglip import IMAGE_SIZE, SIGLIP_MODEL, model
from vlmjax import export as export_lib, interop
from vlmjax.data import tokenizer as tokenizer_lib
from vlmjax.run import Bundle

WORDS = "a photo of the Red circle dog cat's they're naïve Café Über straße x-ray 3.5 hello World!".split()
TEXTS = ["", "   ", "A photo of a DOG.", "they're   naïve,  café-über!", "x-ray 3.5 of Straße", "hello world " * 20]


def texts(count: int, seed: int) -> list[str]:
  rng = random.Random(seed)
  return [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(count)]


def spiece(vocab_size: int) -> bytes:
  """A SentencePiece model with SigLIP's (c4_en's) ids: pad 0, eos 1, unk 2, no BOS."""
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts(500, vocab_size)), model_writer=proto, vocab_size=vocab_size,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
      character_coverage=1.0, num_threads=1, minloglevel=2)
  return proto.getvalue()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  """An HF SigLIP folder whose token embedding has one row per id of its spiece.model."""
  proto = spiece(80)
  vocab_size = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
  params = model(vocab_size=vocab_size).init(jax.random.PRNGKey(0), images=jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)),
                                             texts=jnp.zeros((1, 12), jnp.int32))
  params = jax.tree.map(np.asarray, nn.meta.unbox(params)["params"])
  folder = tmp_path_factory.mktemp("hf") / "siglip"
  interop.write("hf_siglip", str(folder), SIGLIP_MODEL, params)
  (folder / "spiece.model").write_bytes(proto)
  return folder


def test_import_brings_the_siglip_tokenizer(hf_folder, tmp_path):
  bundle = export_lib.import_from("hf_siglip", str(hf_folder), str(tmp_path / "bundle"))
  tok = Bundle(bundle).tokenizer()
  expected = tokenizer_lib.SentencePieceTokenizer((hf_folder / "spiece.model").read_bytes(), **tokenizer_lib.SIGLIP)
  assert isinstance(tok, tokenizer_lib.SentencePieceTokenizer) and tok.options() == expected.options()
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (-1, 1, 1)
  for max_len in (4, 12):
    np.testing.assert_array_equal(tok.encode(TEXTS, max_len), expected.encode(TEXTS, max_len))
  transformers = pytest.importorskip("transformers")
  hf = transformers.SiglipTokenizer(str(hf_folder / "spiece.model"))
  ids = hf(TEXTS, padding="max_length", truncation=True, max_length=12)["input_ids"]
  np.testing.assert_array_equal(tok.encode(TEXTS, 12), np.asarray(ids, np.int32))


def test_a_tokenizer_of_another_size_is_refused_naming_both(hf_folder, tmp_path):
  rows = spm.SentencePieceProcessor(model_file=str(hf_folder / "spiece.model")).get_piece_size()
  small = tokenizer_lib.SentencePieceTokenizer(spiece(40), **tokenizer_lib.SIGLIP)
  assert small.vocab_size != rows
  # Given as --tokenizer (any file tokenizer.load reads) ...
  small.save(str(tmp_path / "small.json"))
  with pytest.raises(ValueError) as e:
    export_lib.import_from("hf_siglip", str(hf_folder), str(tmp_path / "a"), tokenizer=str(tmp_path / "small.json"))
  message = str(e.value)
  assert "\n" not in message and f"{small.vocab_size} ids" in message and f"{rows} rows" in message
  # ... or as the folder's own spiece.model.
  other = tmp_path / "other"
  shutil.copytree(hf_folder, other)
  (other / "spiece.model").write_bytes(small.model_proto)
  with pytest.raises(ValueError, match=f"spiece.model'.* {small.vocab_size} ids .* {rows} rows"):
    export_lib.import_from("hf_siglip", str(other), str(tmp_path / "b"))
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_raw_strings_and_image_files_give_transformers_embeddings(hf_folder, tmp_path):
  """From files to embeddings: the imported bundle through `predict` (its tokenizer, its image reading)
  against transformers' SiglipTokenizer and SiglipModel on the same strings and PNG files."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from PIL import Image
  from vlmjax import predict
  bundle = export_lib.import_from("hf_siglip", str(hf_folder), str(tmp_path / "bundle"))
  rng = np.random.default_rng(0)
  paths, pixels = [], []
  for i in range(3):  # at the model's size: neither side resizes
    array = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(array).save(paths[-1])
    pixels.append((array.astype(np.float32) / 255 - 0.5) / 0.5)  # SiglipImageProcessor's rescale + normalize
  strings = [t for t in TEXTS if t.strip()] + texts(20, 7)
  predictor = predict.Predictor(bundle, devices=1, batch_size=4)
  _, images = predictor.embed_images(paths)
  text_embeds = predictor.embed_texts(strings)

  hf_model = transformers.SiglipModel.from_pretrained(str(hf_folder)).eval()
  ids = transformers.SiglipTokenizer(str(hf_folder / "spiece.model"))(
      strings, padding="max_length", truncation=True, max_length=12, return_tensors="pt")["input_ids"]
  with torch.no_grad():
    want_images = hf_model.get_image_features(pixel_values=torch.from_numpy(np.stack(pixels).transpose(0, 3, 1, 2)))
    want_texts = hf_model.get_text_features(input_ids=ids)
  unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True))
  for got, want in ((images, want_images), (text_embeds, want_texts)):
    want = unit(getattr(want, "pooler_output", want).numpy())
    assert np.max(np.abs(got - want)) <= 1e-4, np.max(np.abs(got - want))


def test_clip_bpe_texts_give_transformers_text_embeddings(tmp_path):
  """CLIP's BPE pads with its end token and spells "!" as id 0: the imported text tower must end each text at its
  first end token, as CLIPTextModel pools. Raw strings through the bundle's tokenizer against transformers'
  CLIPTokenizer and CLIPModel, texts cut at max_len included."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from test_tokenizers import clip_tokenizer, mixed_texts
  from vlmjax import predict
  hf_tok = clip_tokenizer()
  eot = hf_tok.convert_tokens_to_ids("<|endoftext|>")
  assert hf_tok.pad_token_id == eot and hf_tok.convert_ids_to_tokens(0) == "!"
  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=16, eos_token_id=eot,
                       bos_token_id=hf_tok.bos_token_id, pad_token_id=eot),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         image_size=16, patch_size=8), projection_dim=24)
  torch.manual_seed(0)
  hf_model = transformers.CLIPModel(config).eval()
  folder = tmp_path / "clip"
  hf_model.save_pretrained(str(folder))
  hf_tok.save_pretrained(str(folder))
  bundle = export_lib.import_from("hf_clip", str(folder), str(tmp_path / "bundle"))
  tok = Bundle(bundle).tokenizer()
  assert (tok.pad_id, tok.eos_id) == (eot, eot)
  strings = [t for t in mixed_texts(300, seed=5) if t.strip()] + ["hello world! !! a photo of a dog!"]
  got = predict.Predictor(bundle, devices=1, batch_size=32).embed_texts(strings)
  ids = hf_tok(strings, padding="max_length", truncation=True, max_length=16, return_tensors="pt")["input_ids"]
  assert (ids == 0).any()  # "!" inside texts: not padding
  with torch.no_grad():
    want = hf_model.get_text_features(input_ids=ids)
  want = getattr(want, "pooler_output", want).numpy()
  want = want / np.linalg.norm(want, axis=-1, keepdims=True)
  assert np.max(np.abs(got - want)) <= 1e-4, np.max(np.abs(got - want))
