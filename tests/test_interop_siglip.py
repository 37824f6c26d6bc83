"""The hf_siglip format (vlmjax.interop.hf_siglip): vlmjax -> HF SiglipModel files -> vlmjax round trips,
the config.json mapping and its refusals, without torch; parity with transformers' SiglipModel (its
random models imported, vlmjax's exported, max abs difference <= 1e-4 fp32) with torch, which only
`make test-interop` installs (skipped otherwise)."""
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax import export as export_lib, interop
from vlmjax.interop import clip, hf_siglip
from vlmjax.models import sizes
from vlmjax.models.dual_encoder import DualEncoder
from vlmjax.models.text import TextTransformer
from vlmjax.models.vit import ViT

VOCAB = 40
IMAGE_SIZE = 16
# Text width unlike the image's, so the text head really maps between two widths.
SIGLIP_MODEL = dict(
    name="dual_encoder", embed_dim=32, image_head="none", text_head="proj_bias",
    image=dict(variant="mu/8", width=32, depth=2, mlp_dim=64, num_heads=2, pool="map", activation="gelu_tanh",
               norm_eps=1e-6),
    text=dict(variant="mu", width=24, depth=2, mlp_dim=48, num_heads=4, max_len=12, pool="last", causal=False,
              mask_padding=False, activation="gelu_tanh", norm_eps=1e-6))
RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(-1, 1, (3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
TOKENS = np.concatenate([RNG.integers(1, VOCAB, (3, 9)), np.zeros((3, 3), np.int64)], 1).astype(np.int32)
TOL = 1e-4


def model(config=SIGLIP_MODEL, vocab_size=VOCAB):
  return DualEncoder(**{k: v for k, v in config.items() if k != "name"}, vocab_size=vocab_size)


@pytest.fixture(scope="module")
def siglip_params():
  params = model().init(jax.random.PRNGKey(0), images=jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)),
                        texts=jnp.zeros((1, 12), jnp.int32))
  leaves, treedef = jax.tree.flatten(nn.meta.unbox(params)["params"])
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  # Every leaf off its init: zero biases or unit norms would hide a wrong mapping.
  return jax.tree.map(np.asarray, jax.tree.unflatten(
      treedef, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))


def outputs(config, params, images=IMAGES, tokens=TOKENS):
  """(image_embeds, text_embeds, logits_per_image) as SiglipModel computes them."""
  out = model(config, params["text"]["token_embed"]["embedding"].shape[0]).apply(
      {"params": params}, images=images, texts=tokens)
  image, text = np.asarray(out["image_embeds"]), np.asarray(out["text_embeds"])
  return image, text, image @ text.T * np.exp(float(out["logit_scale"])) + float(out["logit_bias"])


def hf_names(vision_depth: int, text_depth: int) -> set:
  """Every tensor of a SiglipModel's state dict, from transformers' modeling_siglip.py modules."""
  layer = [f"self_attn.{p}_proj.{w}" for p in "qkv" + "o" for w in ("weight", "bias")]
  layer = [n.replace("o_proj", "out_proj") for n in layer]
  layer += [f"{m}.{w}" for m in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2") for w in ("weight", "bias")]
  wb = lambda m: {f"{m}.weight", f"{m}.bias"}
  names = {"logit_scale", "logit_bias", "vision_model.embeddings.position_embedding.weight",
           "vision_model.head.probe", "vision_model.head.attention.in_proj_weight",
           "vision_model.head.attention.in_proj_bias", "text_model.embeddings.token_embedding.weight",
           "text_model.embeddings.position_embedding.weight"}
  for m in ("vision_model.embeddings.patch_embedding", "vision_model.post_layernorm",
            "vision_model.head.attention.out_proj", "vision_model.head.layernorm", "vision_model.head.mlp.fc1",
            "vision_model.head.mlp.fc2", "text_model.final_layer_norm", "text_model.head"):
    names |= wb(m)
  for tower, depth in (("vision_model", vision_depth), ("text_model", text_depth)):
    names |= {f"{tower}.encoder.layers.{i}.{n}" for i in range(depth) for n in layer}
  return names


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.shape == y.shape and np.array_equal(x, y)


# --- without torch -----------------------------------------------------------------------------------

def test_round_trip_through_the_files_gives_identical_params(siglip_params, tmp_path):
  interop.write("hf_siglip", str(tmp_path), SIGLIP_MODEL, siglip_params)
  assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
  state = interop.read_state_dict(str(tmp_path))
  assert set(state) == hf_names(2, 2)
  assert state["logit_scale"].shape == state["logit_bias"].shape == (1,)  # nn.Parameter(torch.randn(1))
  config, params, input_sizes = interop.read("hf_siglip", str(tmp_path))
  assert_trees_equal(params, siglip_params)
  assert input_sizes == dict(image_size=IMAGE_SIZE, max_text_len=12)
  for a, b in zip(outputs(config, params), outputs(SIGLIP_MODEL, siglip_params)):
    np.testing.assert_array_equal(a, b)
  # Unscanned towers: the same tensors under block_{i}.
  _, unscanned, _ = interop.read("hf_siglip", str(tmp_path), scan=False)
  assert "block_1" in unscanned["text"]["encoder"]
  assert np.array_equal(unscanned["image"]["encoder"]["block_1"]["mlp"]["fc1"]["kernel"],
                        siglip_params["image"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"][1])


def test_map_head_attention_is_torch_multihead_attention_layout(siglip_params):
  """in_proj_weight stacks q, k, v as [3·D, D] rows: q's rows are the query kernel's heads, flattened."""
  state = hf_siglip.to_state(SIGLIP_MODEL, siglip_params)
  attn = siglip_params["image"]["map_head"]["attn"]
  probe = siglip_params["image"]["map_head"]["probe"][0, 0]
  torch_q = state["vision_model.head.attention.in_proj_weight"][:32] @ probe + state[
      "vision_model.head.attention.in_proj_bias"][:32]
  ours = np.einsum("d,dhk->hk", probe, attn["query"]["kernel"]) + attn["query"]["bias"]
  np.testing.assert_allclose(torch_q, ours.reshape(-1), rtol=1e-5, atol=1e-5)


def normalized(model_config):
  """config.model with every tower field filled in (variants decoded) and `scan` left out."""
  out = dict(model_config)
  out["image"] = {k: v for k, v in clip.tower_kwargs(ViT, out["image"], "S/16").items() if k != "scan"}
  out["text"] = {k: v for k, v in clip.tower_kwargs(TextTransformer, out["text"], "S").items() if k != "scan"}
  return out


@pytest.mark.parametrize("variant,image_size", [("B/16", 224), ("So400m/14", 384), ("L/16", 256)])
def test_config_round_trip(variant, image_size):
  spec = sizes.siglip(variant, image_size)
  hf = hf_siglip.to_hf_config(spec["model"], image_size, spec["vocab_size"], 3, 2, 0)
  json.dumps(hf)  # plain JSON
  model_config, input_sizes = hf_siglip.from_hf_config(hf)
  assert normalized(model_config) == normalized(spec["model"])
  assert input_sizes == dict(image_size=image_size, max_text_len=spec["input"]["max_text_len"],
                             vocab_size=spec["vocab_size"])
  assert hf_siglip.to_hf_config(model_config, image_size, spec["vocab_size"], 3, 2, 0) == hf


def test_config_defaults_are_transformers_defaults():
  """A config.json leaving every size out is SiglipConfig()'s model: google/siglip-base-patch16-224."""
  model_config, input_sizes = hf_siglip.from_hf_config({"model_type": "siglip"})
  spec = sizes.siglip("B/16", 224)
  assert normalized(model_config) == normalized(spec["model"])
  assert input_sizes == dict(image_size=224, max_text_len=64, vocab_size=32_000)
  assert model_config["logit_scale_init"] == math.log(10.0)


@pytest.mark.parametrize("section,key,value,expected", [
    (None, "model_type", "siglip2", "model_type='siglip2'"),
    (None, "model_type", None, "model_type=None"),
    ("vision_config", "hidden_act", "relu", "vision_config.hidden_act='relu'"),
    ("text_config", "hidden_act", "silu", "text_config.hidden_act='silu'"),
    ("vision_config", "vision_use_head", False, "vision_config.vision_use_head=False"),
    ("vision_config", "num_channels", 1, "vision_config.num_channels=1"),
    ("vision_config", "image_size", [224, 256], "vision_config.image_size=[224, 256]"),
    ("text_config", "attention_dropout", 0.1, "text_config.attention_dropout=0.1"),
    ("text_config", "projection_size", 512, "text_config.projection_size=512"),
    ("text_config", "num_attention_heads", 5, "text_config.num_attention_heads=5"),
])
def test_config_keys_vlmjax_cannot_represent_are_refused(section, key, value, expected):
  config = {"model_type": "siglip", "text_config": {}, "vision_config": {}}
  (config[section] if section else config)[key] = value
  with pytest.raises(ValueError) as e:
    hf_siglip.from_hf_config(config)
  assert expected in str(e.value) and "\n" not in str(e.value)


def test_square_size_lists_are_accepted():
  config = {"model_type": "siglip", "vision_config": {"image_size": [256, 256], "patch_size": [16, 16]}}
  _, input_sizes = hf_siglip.from_hf_config(config)
  assert input_sizes["image_size"] == 256


@pytest.mark.parametrize("change,expected", [
    (dict(image=dict(pool="cls", pre_norm=True)), "pool='map'"),
    (dict(image=dict(pool="map", pre_norm=True)), "pre_norm"),
    (dict(text=dict(causal=True)), "causal"),
    (dict(text=dict(pool="eos")), "'last'"),
    (dict(text=dict(mask_padding=True)), "mask_padding"),
    (dict(text=dict(activation="relu")), "text activation is 'relu'"),
    (dict(image_head="proj"), "image_head"),
    (dict(text_head="proj"), "text_head"),
    (dict(name="lm"), "not a dual_encoder"),
])
def test_export_refuses_what_siglip_cannot_express(change, expected):
  config = {**SIGLIP_MODEL, **{k: v for k, v in change.items() if k not in ("image", "text")}}
  for tower in ("image", "text"):
    config[tower] = {**SIGLIP_MODEL[tower], **change.get(tower, {})}
  with pytest.raises(ValueError) as e:
    hf_siglip.to_hf_config(config, IMAGE_SIZE, VOCAB, 3, 2, 0)
  assert expected in str(e.value) and str(e.value).startswith("hf_siglip:") and "\n" not in str(e.value)


def test_missing_tensor_and_wrong_shape_are_named(siglip_params, tmp_path):
  interop.write("hf_siglip", str(tmp_path), SIGLIP_MODEL, siglip_params)
  state = interop.read_state_dict(str(tmp_path))
  with open(tmp_path / "config.json", encoding="utf-8") as f:
    config = json.load(f)
  del state["vision_model.head.probe"]
  with pytest.raises(ValueError, match="vision_model.head.probe"):
    hf_siglip.load(state, config)
  state = interop.read_state_dict(str(tmp_path))
  config["text_config"]["intermediate_size"] = 40
  with pytest.raises(ValueError, match=r"text/encoder/blocks/mlp/fc1/bias is \(2, 48\).*\(2, 40\)"):
    hf_siglip.load(state, config)


def test_other_pixel_statistics_are_folded_into_the_patch_embedding(siglip_params, tmp_path):
  """A checkpoint whose processor normalises with ImageNet's statistics: vlmjax's [-1, 1] pixels give
  what its patch embedding gives on (x01 - mean) / std."""
  interop.write("hf_siglip", str(tmp_path), SIGLIP_MODEL, siglip_params)
  mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
  with open(tmp_path / "preprocessor_config.json", encoding="utf-8") as f:
    preprocessor = {**json.load(f), "image_mean": mean, "image_std": std}
  with open(tmp_path / "preprocessor_config.json", "w", encoding="utf-8") as f:
    json.dump(preprocessor, f)
  _, params, _ = interop.read("hf_siglip", str(tmp_path))
  patch, ours = siglip_params["image"]["patch_embed"], params["image"]["patch_embed"]
  x = IMAGES[0, :8, :8]  # one patch, vlmjax's pixels
  theirs = np.einsum("hwc,hwco->o", ((x + 1) / 2 - mean) / std, patch["kernel"]) + patch["bias"]
  np.testing.assert_allclose(np.einsum("hwc,hwco->o", x, ours["kernel"]) + ours["bias"], theirs, atol=1e-5)


def test_export_cli_from_and_to(siglip_params, tmp_path):
  """`export --from hf_siglip` makes a bundle; `export --to hf_siglip` from it writes the same tensors."""
  interop.write("hf_siglip", str(tmp_path / "hf"), SIGLIP_MODEL, siglip_params)
  bundle = export_lib.import_from("hf_siglip", str(tmp_path / "hf"), str(tmp_path / "bundle"))
  out = export_lib.export_to("hf_siglip", str(tmp_path / "again"), bundle=bundle)
  first, second = interop.read_state_dict(str(tmp_path / "hf")), interop.read_state_dict(out)
  assert set(first) == set(second) and all(np.array_equal(first[k], second[k]) for k in first)
  assert export_lib._is_export(out, "hf_siglip")
  # --force replaces a previous export of the same format, not an HF folder of another model type.
  export_lib.export_to("hf_siglip", out, bundle=bundle, force=True)
  clip_like = tmp_path / "clip_like"
  clip_like.mkdir()
  (clip_like / "model.safetensors").write_bytes(b"")
  (clip_like / "config.json").write_text(json.dumps({"model_type": "clip"}))
  with pytest.raises(ValueError, match="does not hold an export to hf_siglip"):
    export_lib.check_out(str(clip_like), "hf_siglip", force=True)


# --- against transformers' SiglipModel (torch) ----------------------------------------------------

def hf_config(transformers):
  return transformers.SiglipConfig(
      text_config=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                       vocab_size=VOCAB, max_position_embeddings=12, projection_size=32, pad_token_id=0,
                       bos_token_id=2, eos_token_id=3),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         image_size=IMAGE_SIZE, patch_size=8))


def hf_outputs(torch, hf_model, images=IMAGES, tokens=TOKENS):
  with torch.no_grad():
    out = hf_model(input_ids=torch.from_numpy(tokens.astype(np.int64)),
                   pixel_values=torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))
  return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


def max_diffs(a, b):
  return [float(np.max(np.abs(x - y))) for x, y in zip(a, b)]


def test_transformers_model_imports_and_exports_with_the_same_outputs(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf_model = transformers.SiglipModel(hf_config(transformers))
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for p in hf_model.parameters():
      p.add_(0.2 * torch.randn(p.shape, generator=generator))
    hf_model.logit_scale.fill_(math.log(10.0))  # the released checkpoints' scale: logits of a real size
    hf_model.logit_bias.fill_(-10.0)
  hf_model.eval().save_pretrained(str(tmp_path / "hf"))
  assert set(hf_model.state_dict()) == hf_names(2, 2)
  want = hf_outputs(torch, hf_model)

  config, params, input_sizes = interop.read("hf_siglip", str(tmp_path / "hf"))
  assert input_sizes == dict(image_size=IMAGE_SIZE, max_text_len=12)
  imported = max_diffs(outputs(config, params), want)
  assert max(imported) <= TOL, imported

  interop.write("hf_siglip", str(tmp_path / "back"), config, params)
  reloaded = transformers.SiglipModel.from_pretrained(str(tmp_path / "back")).eval()
  exported = max_diffs(hf_outputs(torch, reloaded), want)
  assert max(exported) <= TOL, exported


def test_transformers_loads_a_vlmjax_export_with_the_same_outputs(siglip_params, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  interop.write("hf_siglip", str(tmp_path), SIGLIP_MODEL, siglip_params)
  hf_model = transformers.SiglipModel.from_pretrained(str(tmp_path)).eval()
  assert set(hf_model.state_dict()) == hf_names(2, 2)
  diffs = max_diffs(hf_outputs(torch, hf_model), outputs(SIGLIP_MODEL, siglip_params))
  assert max(diffs) <= TOL, diffs
