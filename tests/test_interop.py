"""Weight layouts in and out (vlmjax.interop), without torch: every transpose / head split / q-k-v
packing checked against a numpy reference of what the PyTorch module computes, and vlmjax -> format
-> vlmjax round trips (through the files) giving the same outputs. Parity with the real open_clip and
transformers modules is in test_interop_torch.py (needs the `interop` extra)."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax import interop
from vlmjax.interop import hf_llama, layout, open_clip
from vlmjax.models import layers
from vlmjax.models.decoder import IMAGE_TOKEN, Decoder, LanguageModel
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
  params = jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.ones((1, 8), jnp.int32))  # op by op is slower
  return model, jax.jit(jiggle, static_argnums=1)(nn.meta.unbox(params)["params"], seed)


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


# --- Gemma: the Llama layout with scaled token embeddings and (1 + w) norms -------------------------

GEMMA_CONFIG = dict(
    architectures=["GemmaForCausalLM"], model_type="gemma", vocab_size=VOCAB, hidden_size=32,
    intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
    hidden_act="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=100.0, tie_word_embeddings=True)
# The same shape as a vlmjax decoder config (multi-query, head_dim ≠ width / heads, tied, GeGLU).
GEMMA_LM = dict(name="lm", decoder=dict(variant="mu", width=32, depth=2, mlp_dim=48, num_heads=4, num_kv_heads=1,
                                        head_dim=16, activation="gelu_tanh", scale_token_embeddings=True,
                                        norm_eps=1e-6, rope_max_wavelength=100.0))


def gemma_state(config=GEMMA_CONFIG, seed=0):
  """A random GemmaForCausalLM state dict (torch names and layouts), norm weights far from 0."""
  rng = np.random.default_rng(seed)
  d, m, h, k, dh = (config[key] for key in ("hidden_size", "intermediate_size", "num_attention_heads",
                                            "num_key_value_heads", "head_dim"))
  normal = lambda *shape, s=1.0: (s * rng.normal(size=shape)).astype(np.float32)
  state = {"model.embed_tokens.weight": normal(config["vocab_size"], d, s=0.3), "model.norm.weight": normal(d, s=0.4)}
  for i in range(config["num_hidden_layers"]):
    state.update({f"model.layers.{i}.{name}": a for name, a in {
        "input_layernorm.weight": normal(d, s=0.4), "post_attention_layernorm.weight": normal(d, s=0.4),
        "self_attn.q_proj.weight": normal(h * dh, d, s=d ** -0.5),
        "self_attn.k_proj.weight": normal(k * dh, d, s=d ** -0.5),
        "self_attn.v_proj.weight": normal(k * dh, d, s=d ** -0.5),
        "self_attn.o_proj.weight": normal(d, h * dh, s=(h * dh) ** -0.5),
        "mlp.gate_proj.weight": normal(m, d, s=d ** -0.5), "mlp.up_proj.weight": normal(m, d, s=d ** -0.5),
        "mlp.down_proj.weight": normal(d, m, s=m ** -0.5)}.items()})
  return state


def gemma_reference(state, config, tokens):
  """numpy float64 forward of HF's GemmaForCausalLM (modeling_gemma.py), causal, no padding.
  tokens [B, T] -> logits [B, T, V]."""
  w = {key: np.asarray(a, np.float64) for key, a in state.items()}
  d, h, k, dh = (config[key] for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim"))
  eps, length = config["rms_norm_eps"], tokens.shape[1]

  def rms_norm(x, weight):  # GemmaRMSNorm: x·rsqrt(mean(x²) + eps)·(1 + w)
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * (1.0 + weight)

  def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))

  inv_freq = 1.0 / config["rope_theta"] ** (np.arange(0, dh, 2) / dh)
  angles = np.concatenate([np.arange(length)[:, None] * inv_freq] * 2, -1)  # [T, Dh]
  cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]

  def rotary(x):  # [B, T, heads, Dh], HF's rotate_half
    rotated = np.concatenate([-x[..., dh // 2:], x[..., :dh // 2]], -1)
    return x * cos + rotated * sin

  x = w["model.embed_tokens.weight"][tokens] * np.sqrt(d)
  causal = np.tril(np.ones((length, length), bool))
  for i in range(config["num_hidden_layers"]):
    p = lambda name: w[f"model.layers.{i}.{name}"]
    y = rms_norm(x, p("input_layernorm.weight"))
    q = rotary((y @ p("self_attn.q_proj.weight").T).reshape(*y.shape[:2], h, dh))
    key = rotary((y @ p("self_attn.k_proj.weight").T).reshape(*y.shape[:2], k, dh))
    value = (y @ p("self_attn.v_proj.weight").T).reshape(*y.shape[:2], k, dh)
    key, value = np.repeat(key, h // k, axis=2), np.repeat(value, h // k, axis=2)  # HF's repeat_kv
    scores = np.einsum("bthd,bshd->bhts", q, key) * dh ** -0.5
    scores = np.where(causal, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = np.einsum("bhts,bshd->bthd", probs, value).reshape(*y.shape[:2], h * dh)
    x = x + attn @ p("self_attn.o_proj.weight").T
    y = rms_norm(x, p("post_attention_layernorm.weight"))
    mlp = gelu_tanh(y @ p("mlp.gate_proj.weight").T) * (y @ p("mlp.up_proj.weight").T)
    x = x + mlp @ p("mlp.down_proj.weight").T
  x = rms_norm(x, w["model.norm.weight"])
  return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T


def write_hf_folder(folder, state, config):
  from safetensors.numpy import save_file
  save_file(dict(state), str(folder / "model.safetensors"), metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(config))
  return str(folder)


def lm_logits(decoder, params, tokens):
  """params: an LM's (under 'decoder/')."""
  apply = jax.jit(LanguageModel(decoder=decoder, vocab_size=VOCAB).apply)  # op by op is slower
  return np.asarray(apply({"params": params}, jnp.asarray(tokens, jnp.int32))["logits"])


def test_gemma_import_matches_a_numpy_reference_of_the_hf_forward(tmp_path):
  state = gemma_state()
  model_config, params, sizes = interop.read("hf_llama", write_hf_folder(tmp_path, state, GEMMA_CONFIG))
  decoder = model_config["decoder"]
  assert decoder["scale_token_embeddings"] and decoder["activation"] == "gelu_tanh" and decoder["tie_embeddings"]
  assert (decoder["num_kv_heads"], decoder["head_dim"]) == (1, 16)  # multi-query, head_dim ≠ width / heads
  # The (1 + w) of Gemma's RMSNorm is folded into vlmjax's scale.
  np.testing.assert_allclose(params["decoder"]["final_norm"]["scale"], 1 + state["model.norm.weight"], atol=1e-7)
  x = RNG.integers(1, VOCAB, (2, 9))
  want = gemma_reference(state, GEMMA_CONFIG, x)
  got = lm_logits(decoder, params, x)
  assert np.max(np.abs(got - want)) <= 1e-4, np.max(np.abs(got - want))
  # Without the embedding scale (or the norm offset) the logits would be far off: the test can see both.
  unscaled = lm_logits({**decoder, "scale_token_embeddings": False}, params, x)
  assert np.max(np.abs(unscaled - want)) > 1e-2


def test_a_gemma_config_json_leaving_out_keys_means_gemmaconfig_s_defaults(tmp_path):
  """GemmaConfig's defaults, not Llama's: hidden_act tanh-GELU and head_dim 256 (not width / heads)."""
  config = {**GEMMA_CONFIG, "head_dim": 256}
  state = gemma_state(config)
  for key in ("hidden_act", "head_dim"):
    del config[key]
  model_config, _, _ = interop.read("hf_llama", write_hf_folder(tmp_path, state, config))
  assert (model_config["decoder"]["activation"], model_config["decoder"]["head_dim"]) == ("gelu_tanh", 256)


def test_gemma_round_trips_through_its_own_layout(tmp_path):
  untied = {**GEMMA_CONFIG, "tie_word_embeddings": False, "hidden_act": "gelu"}  # legacy 'gelu' = tanh
  state = gemma_state(untied, seed=1)
  state["lm_head.weight"] = (0.3 * RNG.normal(size=state["model.embed_tokens.weight"].shape)).astype(np.float32)
  model_config, params, _ = interop.read("hf_llama", write_hf_folder(tmp_path, state, untied))
  assert model_config["decoder"]["activation"] == "gelu_tanh" and not model_config["decoder"]["tie_embeddings"]
  out = tmp_path / "exported"
  interop.write("hf_llama", str(out), model_config, params)
  config = json.loads((out / "config.json").read_text())
  assert (config["model_type"], config["architectures"], config["hidden_act"]) == (
      "gemma", ["GemmaForCausalLM"], "gelu_pytorch_tanh")
  exported = interop.read_state_dict(str(out))
  assert exported.keys() == state.keys()
  for key in state:  # the norm weights come back as w, not 1 + w
    np.testing.assert_allclose(exported[key], state[key], atol=1e-7, err_msg=key)
  model_config2, params2, _ = interop.read("hf_llama", str(out))
  assert model_config2 == model_config
  x = RNG.integers(1, VOCAB, (2, 9))
  np.testing.assert_allclose(lm_logits(model_config2["decoder"], params2, x),
                             lm_logits(model_config["decoder"], params, x), rtol=0, atol=1e-6)
  np.testing.assert_allclose(lm_logits(model_config["decoder"], params, x), gemma_reference(state, untied, x),
                             rtol=0, atol=1e-4)


def test_a_gemma_option_decoder_exports_what_the_reference_computes():
  model, params = lm_setup(GEMMA_LM)
  state, config = hf_llama.export(GEMMA_LM["decoder"], jax.tree.map(np.asarray, params["decoder"]), 2, 3, 0)
  assert (config["model_type"], config["head_dim"], config["num_key_value_heads"]) == ("gemma", 16, 1)
  assert "lm_head.weight" not in state and config["tie_word_embeddings"]
  x = RNG.integers(1, VOCAB, (2, 9))
  want = gemma_reference(state, config, x)
  assert np.max(np.abs(lm_logits(GEMMA_LM["decoder"], params, x) - want)) <= 1e-4


def test_a_vlm_decoder_scales_only_the_token_embeddings():
  """scale_token_embeddings with table E computes what an unscaled decoder with table sqrt(D)·E
  does (untied head) only if the image embeddings at IMAGE_TOKEN slots go in unscaled."""
  decoder = dict(width=32, depth=1, mlp_dim=48, num_heads=4, tie_embeddings=False)
  model = Decoder(**decoder, vocab_size=VOCAB)
  x = jnp.asarray([[IMAGE_TOKEN] * 3 + [2, 7, 9], [IMAGE_TOKEN] * 3 + [2, 5, 0]], jnp.int32)
  kinds = jnp.asarray([[1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 0]], jnp.int32)
  image = jnp.asarray(RNG.normal(size=(2, 3, 32)), jnp.float32)
  params = jax.tree.map(lambda a: a + 0.2 * RNG.normal(size=a.shape).astype(np.float32),  # jiggle, in numpy
                        nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), x, kinds, image))["params"])
  scaled = jax.jit(Decoder(**decoder, vocab_size=VOCAB, scale_token_embeddings=True).apply)(
      {"params": params}, x, kinds, image)
  moved = {**params, "embedding": params["embedding"] * 32 ** 0.5}
  want = jax.jit(model.apply)({"params": moved}, x, kinds, image)
  np.testing.assert_allclose(np.asarray(scaled["logits"]), np.asarray(want["logits"]), rtol=0, atol=1e-5)
  assert np.array_equal(np.asarray(scaled["embedding"]), np.asarray(params["embedding"]))  # the table itself


def test_gemma_export_refuses_exact_gelu():
  with pytest.raises(ValueError, match="hf_llama: decoder activation 'gelu' with scale_token_embeddings"):
    hf_llama.export({**LM_MODEL["decoder"], "activation": "gelu", "scale_token_embeddings": True}, {}, 2, 3, 0)


@pytest.mark.parametrize("change,message", [
    (dict(model_type="gemma2"), "model_type 'gemma2'"),
    (dict(model_type="gemma3_text"), "model_type 'gemma3_text'"),
    (dict(attn_logit_softcapping=50.0), "'attn_logit_softcapping' is 50.0"),
    (dict(final_logit_softcapping=30.0), "'final_logit_softcapping' is 30.0"),
    (dict(sliding_window=4096), "'sliding_window' is 4096"),
    (dict(layer_types=["sliding_attention", "full_attention"]), r"'layer_types' has \['sliding_attention'\]"),
    (dict(query_pre_attn_scalar=144), "'query_pre_attn_scalar' 144 is not head_dim 16"),
    (dict(use_bidirectional_attention=True), "'use_bidirectional_attention' is True"),
    (dict(hidden_act="gelu", hidden_activation="silu"), "'hidden_activation' 'silu' disagrees"),
], ids=lambda v: v if isinstance(v, str) else next(iter(v)))
def test_gemma_import_refuses_what_the_decoder_cannot_express(change, message):
  with pytest.raises(ValueError, match="hf_llama: " + message):
    hf_llama.load(gemma_state(), {**GEMMA_CONFIG, **change})


def test_import_refuses_tensors_the_decoder_has_no_place_for():
  state = {**gemma_state(), "model.layers.1.pre_feedforward_layernorm.weight": np.zeros(32, np.float32)}
  with pytest.raises(ValueError, match="hf_llama: tensor 'model.layers.1.pre_feedforward_layernorm.weight' has no "
                                       "place"):
    hf_llama.load(state, GEMMA_CONFIG)
  # Older checkpoints' stored RoPE frequencies are recomputed, not refused.
  state = {**gemma_state(), "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}
  assert hf_llama.load(state, GEMMA_CONFIG)[0]["depth"] == 2
