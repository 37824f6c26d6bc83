"""Weight layouts in and out (vlmjax.interop), without torch: every transpose / head split / q-k-v
packing checked against a numpy reference of what the PyTorch module computes, and vlmjax -> format
-> vlmjax round trips (through the files) giving the same outputs. Parity with the real open_clip and
transformers modules is in test_interop_torch.py (needs the `interop` extra)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax import interop
from vlmjax.interop import hf_llama, layout, open_clip
from vlmjax.models import layers
from vlmjax.models.decoder import LanguageModel
from vlmjax.models.dual_encoder import DualEncoder

RNG = np.random.default_rng(0)

CLIP_MODEL = dict(
    name="dual_encoder", embed_dim=16,
    image=dict(variant="mu/8", width=32, depth=2, mlp_dim=64, num_heads=2, pool="cls", pre_norm=True,
               activation="quick_gelu", norm_eps=1e-5),
    text=dict(variant="mu", width=32, depth=2, mlp_dim=64, num_heads=4, max_len=16, activation="quick_gelu",
              norm_eps=1e-5))
LM_MODEL = dict(name="lm", decoder=dict(variant="mu", width=32, depth=3, mlp_dim=48, num_heads=4,
                                        num_kv_heads=2, tie_embeddings=False, norm_eps=1e-5,
                                        rope_max_wavelength=500.0))
VOCAB = 40


def jiggle(params, seed=0):
  """Every leaf moved off its init (zero biases, unit norms would hide a wrong mapping)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def clip_model(config=CLIP_MODEL):
  kwargs = {k: v for k, v in config.items() if k != "name"}
  return DualEncoder(**kwargs, vocab_size=VOCAB)


def tokens(batch=3, length=16, vocab=VOCAB):
  """Rows [BOS, pieces..., EOS, 0...] of different lengths, as the vlmjax tokenizer makes them."""
  out = np.zeros((batch, length), np.int32)
  for i in range(batch):
    n = 3 + 4 * i
    out[i, :n] = [2] + list(RNG.integers(4, vocab, n - 2)) + [3]
  return out


def images(batch=3, size=16):
  return RNG.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def clip_params():
  model = clip_model()
  params = model.init(jax.random.PRNGKey(0), images=jnp.zeros((1, 16, 16, 3)), texts=jnp.zeros((1, 16), jnp.int32))
  return jiggle(nn.meta.unbox(params)["params"])


IMAGES, TOKENS = images(), tokens()


def clip_outputs(params, model=None):
  model = model or clip_model()
  out = model.apply({"params": params}, images=IMAGES, texts=TOKENS)
  return np.asarray(out["image_embeds"]), np.asarray(out["text_embeds"])


# --- the layout helpers against what the PyTorch modules compute ----------------------------------

def torch_mha(x, wq, bq, wk, bk, wv, bv, wo, bo, heads):
  """numpy reference of nn.MultiheadAttention (no mask) with torch-layout weights. x [T, D]."""
  q, k, v = x @ wq.T + bq, x @ wk.T + bk, x @ wv.T + bv
  split = lambda a: a.reshape(a.shape[0], heads, -1).transpose(1, 0, 2)
  q, k, v = split(q), split(k), split(v)
  logits = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = (weights @ v).transpose(1, 0, 2).reshape(x.shape[0], -1)
  return out @ wo.T + bo


def test_attention_weights_map_to_torch_layout():
  d, heads, t = 12, 3, 5
  w = {n: RNG.normal(size=(d, d)).astype(np.float32) for n in ("q", "k", "v", "o")}
  b = {n: RNG.normal(size=(d,)).astype(np.float32) for n in ("q", "k", "v", "o")}
  # open_clip packs q, k, v into one in_proj; the split must give them back in that order.
  packed = layout.merge_qkv(w["q"], w["k"], w["v"])
  assert packed.shape == (3 * d, d) and np.array_equal(packed[d:2 * d], w["k"])
  for got, want in zip(layout.split_qkv(packed), (w["q"], w["k"], w["v"])):
    assert np.array_equal(got, want)
  params = {name: {"kernel": layout.linear_to_heads_in(w[n], heads), "bias": layout.bias_to_heads(b[n], heads)}
            for name, n in (("query", "q"), ("key", "k"), ("value", "v"))}
  params["out"] = {"kernel": layout.linear_to_heads_out(w["o"], heads), "bias": b["o"]}
  x = RNG.normal(size=(1, t, d)).astype(np.float32)
  ours = layers.Attention(num_heads=heads).apply({"params": params}, jnp.asarray(x))
  want = torch_mha(x[0], w["q"], b["q"], w["k"], b["k"], w["v"], b["v"], w["o"], b["o"], heads)
  np.testing.assert_allclose(np.asarray(ours)[0], want, atol=1e-5)
  # ... and back to exactly the torch tensors.
  assert np.array_equal(layout.heads_in_to_linear(params["query"]["kernel"]), w["q"])
  assert np.array_equal(layout.heads_out_to_linear(params["out"]["kernel"]), w["o"])
  assert np.array_equal(layout.heads_to_bias(params["key"]["bias"]), b["k"])


def test_linear_and_conv_weights_map_to_torch_layout():
  w, bias = RNG.normal(size=(7, 5)).astype(np.float32), RNG.normal(size=(7,)).astype(np.float32)
  x = RNG.normal(size=(2, 5)).astype(np.float32)
  dense = nn.Dense(7).apply({"params": {"kernel": layout.linear_to_dense(w), "bias": bias}}, x)
  np.testing.assert_allclose(np.asarray(dense), x @ w.T + bias, atol=1e-5)
  assert np.array_equal(layout.dense_to_linear(layout.linear_to_dense(w)), w)
  # Conv2d [out, in, kh, kw] on NCHW patches == flax Conv [kh, kw, in, out] on NHWC.
  conv = RNG.normal(size=(6, 3, 4, 4)).astype(np.float32)
  image = RNG.normal(size=(1, 8, 8, 3)).astype(np.float32)
  ours = nn.Conv(6, (4, 4), strides=(4, 4), padding="VALID", use_bias=False).apply(
      {"params": {"kernel": layout.conv_to_flax(conv)}}, image)
  patches = image[0].reshape(2, 4, 2, 4, 3).transpose(0, 2, 4, 1, 3)  # [gy, gx, c, kh, kw]
  np.testing.assert_allclose(np.asarray(ours)[0], np.einsum("yxchw,ochw->yxo", patches, conv), atol=1e-4)
  assert np.array_equal(layout.flax_to_conv(layout.conv_to_flax(conv)), conv)


def test_pixel_statistics_fold_into_the_patch_embedding():
  kernel = RNG.normal(size=(4, 4, 3, 6)).astype(np.float32)
  mean, std = np.array([0.48, 0.46, 0.41]), np.array([0.27, 0.26, 0.28])
  x01 = RNG.uniform(0, 1, (1, 8, 8, 3)).astype(np.float32)
  conv = lambda k, b, x: nn.Conv(6, (4, 4), strides=(4, 4), padding="VALID").apply(
      {"params": {"kernel": k, "bias": b}}, x)
  want = conv(kernel, np.zeros(6, np.float32), ((x01 - mean) / std).astype(np.float32))
  folded_kernel, folded_bias = layout.fold_pixel_normalization(kernel, None, mean, std)
  np.testing.assert_allclose(np.asarray(conv(folded_kernel, folded_bias, 2 * x01 - 1)), np.asarray(want), atol=1e-4)


def test_layer_stacks_unstack_and_stack_back():
  stacked = {"blocks": {"w": np.arange(24.0).reshape(3, 2, 4)}}
  blocks = layout.unstack_layers(stacked, 3)
  assert np.array_equal(blocks[1]["w"], stacked["blocks"]["w"][1])
  assert np.array_equal(layout.stack_layers(blocks, scan=True)["blocks"]["w"], stacked["blocks"]["w"])
  assert np.array_equal(layout.stack_layers(blocks, scan=False)["block_2"]["w"], stacked["blocks"]["w"][2])


# --- round trips through the files -----------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["open_clip", "hf_clip"])
def test_clip_formats_round_trip_to_the_same_outputs(fmt, clip_params, tmp_path):
  interop.write(fmt, str(tmp_path), CLIP_MODEL, clip_params)
  model_config, params, sizes = interop.read(fmt, str(tmp_path))
  assert sizes == dict(image_size=16, max_text_len=16)
  assert model_config["image"]["activation"] == "quick_gelu" and model_config["text"]["num_heads"] == 4
  # vlmjax's patch bias went into the position embeddings; the function is the same.
  assert np.all(params["image"]["patch_embed"]["bias"] == 0)
  want = clip_outputs(clip_params)
  got = clip_outputs(params, clip_model(model_config))
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5)
  np.testing.assert_allclose(params["logit_scale"], clip_params["logit_scale"], atol=1e-7)


def test_unscanned_towers_export_like_scanned_ones(clip_params):
  state, _ = open_clip.export(CLIP_MODEL, jax.tree.map(np.asarray, clip_params), eos_id=3)
  model_config, unscanned = open_clip.load(state, {"model_cfg": {"quick_gelu": True, "text_cfg": {"heads": 4},
                                                                  "vision_cfg": {"head_width": 16}},
                                                   "preprocess_cfg": {"mean": [.5] * 3, "std": [.5] * 3}},
                                           scan=False)
  assert "block_1" in unscanned["image"]["encoder"]
  state2, _ = open_clip.export(model_config, unscanned, eos_id=3)
  assert state.keys() == state2.keys()
  for key in state:
    np.testing.assert_allclose(state2[key], state[key], atol=1e-6, err_msg=key)


def test_clip_formats_refuse_what_clip_cannot_express(clip_params):
  gap = {**CLIP_MODEL, "image": {**CLIP_MODEL["image"], "pool": "gap"}}
  with pytest.raises(ValueError, match="open_clip: this model's ViT pools by 'gap'"):
    open_clip.export(gap, clip_params, eos_id=3)
  relu = {**CLIP_MODEL, "text": {**CLIP_MODEL["text"], "activation": "relu"}}
  with pytest.raises(ValueError, match="hf_clip: this model's text activation is 'relu'"):
    interop.hf_clip.export(relu, clip_params, 3, 2, 0)
  with pytest.raises(ValueError, match="unknown format 'onnx'"):
    interop.write("onnx", "/tmp/nowhere", CLIP_MODEL, clip_params)


def lm_setup(config=LM_MODEL, seed=0):
  model = LanguageModel(decoder=config["decoder"], vocab_size=VOCAB)
  params = model.init(jax.random.PRNGKey(seed), jnp.ones((1, 8), jnp.int32))
  return model, jiggle(nn.meta.unbox(params)["params"], seed)


def test_decoder_round_trips_through_the_llama_layout(tmp_path):
  model, params = lm_setup()
  interop.write("hf_llama", str(tmp_path), LM_MODEL, params)
  model_config, loaded, _ = interop.read("hf_llama", str(tmp_path))
  decoder = model_config["decoder"]
  assert (decoder["num_kv_heads"], decoder["rope_max_wavelength"], decoder["tie_embeddings"]) == (2, 500.0, False)
  x = jnp.asarray(RNG.integers(1, VOCAB, (2, 8)), jnp.int32)
  want = model.apply({"params": params}, x)["logits"]
  got = LanguageModel(decoder=decoder, vocab_size=VOCAB).apply({"params": loaded}, x)["logits"]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_pyramid_drop_stages_export_their_layers_in_order():
  staged = {"name": "lm", "decoder": {**LM_MODEL["decoder"], "depth": 4, "pdrop_layers": (2,),
                                      "pdrop_ratios": (0.5,)}}
  assert hf_llama.decoder_layer_slots(4, (2,)) == [("layers", 0), ("layers", 1), ("layers_1_first", None),
                                                   ("layers_1", 0)]
  _, params = lm_setup(staged)
  state, config = hf_llama.export(staged["decoder"], params["decoder"], 2, 3, 0)
  assert config["num_hidden_layers"] == 4
  np.testing.assert_array_equal(
      state["model.layers.2.mlp.down_proj.weight"],
      np.asarray(params["decoder"]["layers_1_first"]["mlp"]["fc2"]["kernel"]).T)
  np.testing.assert_array_equal(
      state["model.layers.3.self_attn.o_proj.weight"],
      layout.heads_out_to_linear(params["decoder"]["layers_1"]["blocks"]["attn"]["out"]["kernel"][0]))


def test_llama_import_refuses_what_the_decoder_cannot_express():
  with pytest.raises(ValueError, match="hf_llama: rope type 'llama3'"):
    hf_llama.load({}, {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}})
  with pytest.raises(ValueError, match="hf_llama: 'attention_bias' is set"):
    hf_llama.load({}, {"attention_bias": True})
  with pytest.raises(ValueError, match="hf_llama: the state dict has no 'model.embed_tokens.weight'"):
    hf_llama.load({}, {"num_attention_heads": 2})
