"""The big_vision format (vlmjax.interop.big_vision, import only): a random vlmjax SigLIP saved as big_vision's
SigLIP `.npz`, under big_vision's own module names (written out here from big_vision's vit.py, text_transformer.py
and two_towers.py, not from the importer's table), scanned and unscanned, imports with the source's embeddings and
logits (max abs difference <= 1e-5 fp32) and its params exactly; the SentencePiece model beside it comes along
and encodes as big_vision's `tokenize(eos="sticky", pad_value=1)` of the lower-cased text; a tensor vlmjax
cannot represent, a missing one and `--to big_vision` are refused in one line naming the key. No torch."""
import io
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm

from conftest import REPO
from test_interop_siglip import IMAGE_SIZE, SIGLIP_MODEL, model, outputs
from vlmjax import export as export_lib, interop
from vlmjax.data import tokenizer as tokenizer_lib
from vlmjax.run import Bundle

CAPTIONS = ["A Photo of a DOG", "the red Circle", "Zürich in autumn", "a cat's toy, x-ray", "ÜBER straße",
            "two dogs and a CAT on the beach"] * 20
TEXTS = ["", "A photo of a DOG.", "ÜBER Straße, x-ray!", "the red circle " * 10]
TOL = 1e-5


def c4_like_spiece() -> bytes:
  """A SentencePiece model with the ids of big_vision's c4_en: pad 0, eos 1, unk 2, no BOS."""
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CAPTIONS), model_writer=proto, vocab_size=60, model_type="unigram", pad_id=0,
      eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, character_coverage=1.0, num_threads=1, minloglevel=2)
  return proto.getvalue()


@pytest.fixture(scope="module")
def spiece():
  return c4_like_spiece()


@pytest.fixture(scope="module")
def source(spiece):
  """A random vlmjax SigLIP (scanned towers) with one token-embedding row per id of `spiece`: every leaf random
  (unit norms or zero biases would hide a swapped name), the logit scale and bias of the released checkpoints."""
  vocab = spm.SentencePieceProcessor(model_proto=spiece).get_piece_size()
  shapes = jax.eval_shape(model(vocab_size=vocab).init, jax.random.PRNGKey(0),
                          images=jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)), texts=jnp.zeros((1, 12), jnp.int32))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32), nn.meta.unbox(shapes)["params"])
  params["logit_scale"], params["logit_bias"] = np.float32(np.log(10.0)), np.float32(-10.0)
  return params


# --- big_vision's names, written from its modules ------------------------------------------------------

def encoder_block(tree: dict) -> dict:
  """One `vit.Encoder1DBlock`: flax names its unnamed submodules LayerNorm_0, MultiHeadDotProductAttention_0,
  LayerNorm_1, MlpBlock_0 (whose Dense layers are Dense_0, Dense_1) in the order they are called."""
  out = {"LayerNorm_0/scale": tree["norm1"]["scale"], "LayerNorm_0/bias": tree["norm1"]["bias"],
         "LayerNorm_1/scale": tree["norm2"]["scale"], "LayerNorm_1/bias": tree["norm2"]["bias"],
         "MlpBlock_0/Dense_0/kernel": tree["mlp"]["fc1"]["kernel"],
         "MlpBlock_0/Dense_0/bias": tree["mlp"]["fc1"]["bias"],
         "MlpBlock_0/Dense_1/kernel": tree["mlp"]["fc2"]["kernel"],
         "MlpBlock_0/Dense_1/bias": tree["mlp"]["fc2"]["bias"]}
  for proj in ("query", "key", "value", "out"):  # flax's DenseGeneral layouts on both sides: [D, H, Dh], [H, Dh, D]
    out[f"MultiHeadDotProductAttention_0/{proj}/kernel"] = tree["attn"][proj]["kernel"]
    out[f"MultiHeadDotProductAttention_0/{proj}/bias"] = tree["attn"][proj]["bias"]
  return out


def encoder(name: str, tree: dict, depth: int, scan: bool) -> dict:
  """`vit.Encoder` called `name`: scanned, one `encoderblock` stacking the layers on axis 0; else `encoderblock_i`."""
  out = {f"{name}/encoder_norm/scale": tree["final_norm"]["scale"],
         f"{name}/encoder_norm/bias": tree["final_norm"]["bias"]}
  stacked = encoder_block(tree["blocks"])
  if scan:
    out.update({f"{name}/encoderblock/{k}": v for k, v in stacked.items()})
  else:
    for i in range(depth):
      out.update({f"{name}/encoderblock_{i}/{k}": v[i] for k, v in stacked.items()})
  return out


def big_vision_checkpoint(params: dict, scan: bool) -> dict:
  """vlmjax SigLIP params -> big_vision's flat two_towers SigLIP params: `img` (vit.py, pool_type='map': the
  encoder is named Transformer), `txt` (text_transformer.py: its encoder is unnamed, so flax's Encoder_0; the
  head is `head`), `t` and `b` of shape [1]."""
  image, text, head = params["image"], params["text"], params["image"]["map_head"]
  flat = {
      "img/embedding/kernel": image["patch_embed"]["kernel"], "img/embedding/bias": image["patch_embed"]["bias"],
      "img/pos_embedding": image["pos_embedding"],
      **encoder("img/Transformer", image["encoder"], 2, scan),
      "img/MAPHead_0/probe": head["probe"],
      "img/MAPHead_0/LayerNorm_0/scale": head["norm"]["scale"],
      "img/MAPHead_0/LayerNorm_0/bias": head["norm"]["bias"],
      "img/MAPHead_0/MlpBlock_0/Dense_0/kernel": head["mlp"]["fc1"]["kernel"],
      "img/MAPHead_0/MlpBlock_0/Dense_0/bias": head["mlp"]["fc1"]["bias"],
      "img/MAPHead_0/MlpBlock_0/Dense_1/kernel": head["mlp"]["fc2"]["kernel"],
      "img/MAPHead_0/MlpBlock_0/Dense_1/bias": head["mlp"]["fc2"]["bias"],
      "txt/Embed_0/embedding": text["token_embed"]["embedding"],
      "txt/pos_embedding": text["pos_embedding"],
      **encoder("txt/Encoder_0", text["encoder"], 2, scan),
      "txt/head/kernel": params["text_proj"]["kernel"], "txt/head/bias": params["text_proj"]["bias"],
      "t": np.reshape(params["logit_scale"], (1,)), "b": np.reshape(params["logit_bias"], (1,)),
  }
  for proj in ("query", "key", "value", "out"):
    for leaf in ("kernel", "bias"):
      flat[f"img/MAPHead_0/MultiHeadDotProductAttention_0/{proj}/{leaf}"] = head["attn"][proj][leaf]
  return flat


def save(path, flat: dict, prefix: str = "params/", dtype=np.float32):
  """As big_vision's `utils.save_checkpoint`: np.savez of the flat '/'-joined names."""
  np.savez(path, **{prefix + k: np.asarray(v).astype(dtype) for k, v in flat.items()})
  return str(path)


def folder_with(tmp_path, flat: dict, spiece: bytes | None = None, name: str = "webli_en_tiny", **kw):
  folder = tmp_path / name
  folder.mkdir()
  save(folder / "webli_en_tiny_123.npz", flat, **kw)
  if spiece is not None:
    (folder / "c4_en.model").write_bytes(spiece)
  return folder


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.shape(x) == np.shape(y) and np.array_equal(x, y)


def max_diffs(a, b):
  return [float(np.max(np.abs(x - y))) for x, y in zip(a, b)]


def unscanned(params: dict) -> dict:
  """The same params with each tower's stacked `blocks` split into `block_i` (as `scan=False` models hold them)."""
  out = {**params, "image": dict(params["image"]), "text": dict(params["text"])}
  for tower in ("image", "text"):
    blocks = params[tower]["encoder"]["blocks"]
    out[tower]["encoder"] = {"final_norm": params[tower]["encoder"]["final_norm"],
                             **{f"block_{i}": jax.tree.map(lambda x, i=i: x[i], blocks) for i in range(2)}}
  return out


# --- import -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unscanned"])
def test_read_gives_the_params_and_the_architecture(source, scan, tmp_path):
  folder = folder_with(tmp_path, big_vision_checkpoint(source, scan), prefix="params/" if scan else "")
  config, params, sizes = interop.read("big_vision", str(folder))
  assert_trees_equal(params, source)
  assert sizes == dict(image_size=IMAGE_SIZE, max_text_len=12)
  image, text = config["image"], config["text"]
  assert (image["width"], image["depth"], image["mlp_dim"], image["num_heads"], image["patch_size"]) == \
      (32, 2, 64, 2, 8)
  assert (text["width"], text["depth"], text["mlp_dim"], text["num_heads"], text["max_len"]) == (24, 2, 48, 4, 12)
  assert (config["embed_dim"], config["image_head"], config["text_head"]) == (32, "none", "proj_bias")
  for key in ("pool", "activation", "norm_eps"):
    assert (image[key], text[key]) == (SIGLIP_MODEL["image"][key], SIGLIP_MODEL["text"][key])
  # Into an unscanned model: the same tensors under block_i.
  _, params, _ = interop.read("big_vision", str(folder), scan=False)
  assert_trees_equal(params, unscanned(source))


def test_export_from_big_vision_gives_the_source_outputs(source, spiece, tmp_path):
  """`python -m vlmjax.export --from big_vision --src FILE.npz`: a bundle whose model gives the source's image
  and text embeddings and logits, with the folder's SentencePiece model as its tokenizer."""
  folder = folder_with(tmp_path, big_vision_checkpoint(source, scan=False), spiece)
  bundle = str(tmp_path / "bundle")
  result = subprocess.run([sys.executable, "-m", "vlmjax.export", "--from", "big_vision", "--src",
                           str(folder / "webli_en_tiny_123.npz"), "--out", bundle, "--format", "safetensors"],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  config = Bundle(bundle).read_config()
  assert (config.input.image_size, config.input.max_text_len) == (IMAGE_SIZE, 12)
  params = jax.tree.map(np.asarray, Bundle(bundle).read_params())
  diffs = max_diffs(outputs(config.model.to_dict(), params), outputs(SIGLIP_MODEL, source))
  assert max(diffs) <= TOL, diffs
  assert isinstance(Bundle(bundle).tokenizer(), tokenizer_lib.SentencePieceTokenizer)


def test_bfloat16_arrays_are_read(source, tmp_path):
  """numpy stores bfloat16 as 2-byte voids; they are read back as the bfloat16 values."""
  folder = folder_with(tmp_path, big_vision_checkpoint(source, scan=True), dtype=jnp.bfloat16)
  _, params, _ = interop.read("big_vision", str(folder))
  assert_trees_equal(params, jax.tree.map(lambda x: np.asarray(x.astype(jnp.bfloat16), np.float32), source))


def big_vision_tokenize(sp, text: str, max_len: int) -> list[int]:
  """big_vision's pp `tokenize(max_len, eos="sticky", pad_value=1)` (lower=True: tf.strings.lower, A-Z only)."""
  ids = sp.encode(text.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"))) + [1]
  return ids[:max_len - 1] + ids[-1:] if len(ids) >= max_len else ids + [1] * (max_len - len(ids))


def test_the_sentencepiece_model_comes_along_under_big_vision_conventions(source, spiece, tmp_path):
  folder = folder_with(tmp_path, big_vision_checkpoint(source, scan=True), spiece)
  bundle = export_lib.import_from("big_vision", str(folder), str(tmp_path / "bundle"), bundle_format="safetensors")
  tok = Bundle(bundle).tokenizer()
  assert tok.options() == tokenizer_lib.SentencePieceTokenizer(spiece, **tokenizer_lib.BIG_VISION_SIGLIP).options()
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (-1, 1, 1)
  sp = spm.SentencePieceProcessor(model_proto=spiece)
  for max_len in (4, 12):
    want = [big_vision_tokenize(sp, t, max_len) for t in TEXTS + CAPTIONS[:6]]
    np.testing.assert_array_equal(tok.encode(TEXTS + CAPTIONS[:6], max_len), np.asarray(want, np.int32))
  # Without a *.model beside the .npz the bundle holds no tokenizer.
  os.remove(folder / "c4_en.model")
  bundle = export_lib.import_from("big_vision", str(folder), str(tmp_path / "plain"), bundle_format="safetensors")
  assert Bundle(bundle).tokenizer() is None


# --- refusals -----------------------------------------------------------------------------------------

def one_line_error(folder, error=ValueError) -> str:
  with pytest.raises(error) as e:
    interop.read("big_vision", str(folder))
  message = str(e.value)
  assert "\n" not in message and message.startswith("big_vision: "), message
  return message


@pytest.mark.parametrize("key,shape,why", [
    ("img/cls", (1, 1, 32), "class token"),
    ("img/head/kernel", (32, 10), "image head"),
    ("img/pre_logits/kernel", (32, 32), "pre-logits"),
    ("txt/MAPHead_0/probe", (1, 1, 24), "MAP head on the text"),
    ("opt_state_leftover", (3,), "no param of vlmjax"),
])
def test_a_tensor_vlmjax_cannot_represent_is_named(source, key, shape, why, tmp_path):
  folder = folder_with(tmp_path, {**big_vision_checkpoint(source, scan=True), key: np.zeros(shape)})
  message = one_line_error(folder)
  assert f"'params/{key}'" in message and why in message and "webli_en_tiny_123.npz" in message, message


@pytest.mark.parametrize("scan,key", [
    (True, "img/MAPHead_0/probe"),  # not MAP-pooled
    (True, "b"),  # a softmax-loss two_towers model has no bias
    (True, "txt/head/bias"),
    (True, "img/Transformer/encoderblock/MlpBlock_0/Dense_1/kernel"),
    (False, "txt/Encoder_0/encoderblock_1/MultiHeadDotProductAttention_0/value/bias"),
    (False, "img/pos_embedding"),
])
def test_a_missing_tensor_is_named_with_the_file(source, scan, key, tmp_path):
  flat = big_vision_checkpoint(source, scan)
  del flat[key]
  message = one_line_error(folder_with(tmp_path, flat))
  assert f"no tensor 'params/{key}'" in message and "webli_en_tiny_123.npz" in message, message


def test_shapes_the_other_tensors_contradict_are_named(source, tmp_path):
  flat = big_vision_checkpoint(source, scan=False)
  flat["txt/Encoder_0/encoderblock_1/MlpBlock_0/Dense_0/kernel"] = np.zeros((24, 40))
  message = one_line_error(folder_with(tmp_path, flat))
  assert "'params/txt/Encoder_0/encoderblock_1/MlpBlock_0/Dense_0/kernel'" in message and "(24, 48)" in message
  flat = big_vision_checkpoint(source, scan=False)
  flat["txt/Encoder_0/encoderblock_3/LayerNorm_0/scale"] = np.zeros(24)  # a layer after a gap
  message = one_line_error(folder_with(tmp_path, flat, name="gap"))
  assert "'params/txt/Encoder_0/encoderblock_3/LayerNorm_0/scale'" in message


def test_the_checkpoint_file_is_found_or_refused(source, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  assert "no *.npz checkpoint" in one_line_error(empty, FileNotFoundError)
  folder = folder_with(tmp_path, big_vision_checkpoint(source, scan=True))
  save(folder / "other.npz", {"t": np.zeros(1)})
  assert "holds 2 .npz checkpoints" in one_line_error(folder)


def test_export_to_big_vision_is_refused_as_import_only(tmp_path):
  for write in (lambda: export_lib.export_to("big_vision", str(tmp_path / "out"), bundle=str(tmp_path)),
                lambda: interop.write("big_vision", str(tmp_path / "out"), SIGLIP_MODEL, {})):
    with pytest.raises(ValueError, match="import only") as e:
      write()
    assert "\n" not in str(e.value)
  assert not (tmp_path / "out").exists()
