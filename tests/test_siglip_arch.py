"""SigLIP's architecture: the MAP head against attention pooling written out by hand, big_vision's
param shapes for the released sizes, last-position text pooling, and the defaults left as they were."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from vlmjax import config as config_lib
from vlmjax.models import layers, sizes
from vlmjax.models.dual_encoder import DualEncoder
from vlmjax.models.text import TextTransformer
from vlmjax.models.vit import ViT

TOWER = dict(width=32, depth=2, mlp_dim=48, num_heads=4)


def _layer_norm(x, p, eps=1e-6):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def test_cross_attention_equals_flax_multi_head_attention():
  """Queries from one input, keys and values from another: `nn.MultiHeadDotProductAttention(q, kv)`
  run on the same params (the names and shapes are its own)."""
  q, kv = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 32)), jax.random.normal(jax.random.PRNGKey(2), (2, 7, 32))
  attention = layers.Attention(num_heads=4)
  out, params = jax.jit(attention.init_with_output)(jax.random.PRNGKey(0), q, inputs_kv=kv)
  params = nn.meta.unbox(params)
  reference = nn.MultiHeadDotProductAttention(num_heads=4)
  reference_shapes = jax.eval_shape(reference.init, jax.random.PRNGKey(0), q, kv)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, reference_shapes)
  np.testing.assert_allclose(out, jax.jit(reference.apply)(params, q, kv), atol=1e-5, rtol=1e-5)


def test_map_head_is_attention_pooling():
  """The pooled output of `pool='map'`: a learned probe's multi-head attention over the encoder's
  tokens, then probe + MLP(LayerNorm(probe)), computed here in float64 numpy from the same params."""
  vit = ViT(patch_size=8, pool="map", **TOWER)
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3), minval=-1, maxval=1)
  (pooled, tokens), params = jax.jit(vit.init_with_output)(jax.random.PRNGKey(0), images)
  params = nn.meta.unbox(params)
  assert pooled.shape == (2, 32) and tokens.shape == (2, 16, 32)  # no class token: all 16 patches

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"]["map_head"])
  x = np.asarray(tokens, np.float64)
  heads, head_dim = 4, 8
  q = np.einsum("d,dhk->hk", p["probe"][0, 0], p["attn"]["query"]["kernel"]) + p["attn"]["query"]["bias"]
  k = np.einsum("bnd,dhk->bnhk", x, p["attn"]["key"]["kernel"]) + p["attn"]["key"]["bias"]
  v = np.einsum("bnd,dhk->bnhk", x, p["attn"]["value"]["kernel"]) + p["attn"]["value"]["bias"]
  logits = np.einsum("hk,bnhk->bhn", q, k) / np.sqrt(head_dim)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = np.einsum("bhn,bnhk->bhk", weights, v).reshape(2, heads, head_dim)
  y = np.einsum("bhk,hkd->bd", attended, p["attn"]["out"]["kernel"]) + p["attn"]["out"]["bias"]
  h = _layer_norm(y, p["norm"]) @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))  # the tower's activation, exact GELU
  expected = y + h @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]
  np.testing.assert_allclose(pooled, expected, atol=2e-5, rtol=1e-5)


def test_map_head_params():
  """A tiny MAP-head ViT's pooling params: big_vision's MAPHead shapes under this repo's names."""
  vit = ViT(patch_size=8, pool="map", **TOWER)
  shapes = jax.eval_shape(vit.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  head = {jax.tree_util.keystr(path, simple=True, separator="/"): leaf.shape for path, leaf in
          jax.tree_util.tree_leaves_with_path(nn.meta.unbox(shapes)["params"]["map_head"])}
  assert head == {
      "probe": (1, 1, 32),
      "attn/query/kernel": (32, 4, 8), "attn/query/bias": (4, 8),
      "attn/key/kernel": (32, 4, 8), "attn/key/bias": (4, 8),
      "attn/value/kernel": (32, 4, 8), "attn/value/bias": (4, 8),
      "attn/out/kernel": (4, 8, 32), "attn/out/bias": (32,),
      "norm/scale": (32,), "norm/bias": (32,),
      "mlp/fc1/kernel": (32, 48), "mlp/fc1/bias": (48,), "mlp/fc2/kernel": (48, 32), "mlp/fc2/bias": (32,)}
  assert "cls" not in nn.meta.unbox(shapes)["params"]


# This repo's param names -> big_vision's two_towers names (prefix renames, then per-block ones).
TOWER_NAMES = (("image/", "img/"), ("text/", "txt/"), ("img/patch_embed/", "img/embedding/"),
               ("img/encoder/final_norm/", "img/Transformer/encoder_norm/"), ("img/map_head/", "img/MAPHead_0/"),
               ("txt/encoder/final_norm/", "txt/Encoder_0/encoder_norm/"), ("txt/token_embed/", "txt/Embed_0/"),
               ("text_proj/", "txt/head/"), ("logit_scale", "t"), ("logit_bias", "b"))
LAYER_NAMES = (("norm1/", "LayerNorm_0/"), ("norm2/", "LayerNorm_1/"), ("norm/", "LayerNorm_0/"),
               ("attn/", "MultiHeadDotProductAttention_0/"), ("mlp/fc1/", "MlpBlock_0/Dense_0/"),
               ("mlp/fc2/", "MlpBlock_0/Dense_1/"))


def big_vision_shapes(params: dict) -> dict:
  """{big_vision name: shape} for a SigLIP dual encoder's params: the scanned blocks unstacked into
  `encoderblock_<i>`, and t, b as big_vision's [1]."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    for ours, theirs in TOWER_NAMES:
      name = theirs + name[len(ours):] if name.startswith(ours) else name
    tower, _, rest = name.partition("/")
    for ours, theirs in LAYER_NAMES:  # whole path components only: 'norm/' is not 'encoder_norm/'
      rest = f"/{rest}".replace(f"/{ours}", f"/{theirs}")[1:]
    if "/encoder/blocks/" in f"/{rest}":
      stack = {"img": "Transformer", "txt": "Encoder_0"}[tower]
      for i in range(leaf.shape[0]):
        out[f"{tower}/{stack}/encoderblock_{i}/{rest[len('encoder/blocks/'):]}"] = leaf.shape[1:]
    else:
      out[f"{tower}/{rest}" if rest else tower] = leaf.shape or (1,)
  return out


def expected_big_vision_shapes(width, depth, mlp, heads, patch, patches, text_width, text_depth, text_mlp,
                               text_heads, max_len, vocab, embed):
  """The shapes of a released SigLIP checkpoint (big_vision two_towers, image `pool_type='map'`,
  `out_dim=(None, embed)`), written out from big_vision's modules."""
  def block(d, m, h):  # what an encoder block and the MAP head share: attention, one LayerNorm, the MLP
    attn = {f"{n}/kernel": (d, h, d // h) for n in ("query", "key", "value")}
    attn.update({f"{n}/bias": (h, d // h) for n in ("query", "key", "value")})
    attn.update({"out/kernel": (h, d // h, d), "out/bias": (d,)})
    return {**{f"MultiHeadDotProductAttention_0/{k}": s for k, s in attn.items()},
            "LayerNorm_0/scale": (d,), "LayerNorm_0/bias": (d,), "MlpBlock_0/Dense_0/kernel": (d, m),
            "MlpBlock_0/Dense_0/bias": (m,), "MlpBlock_0/Dense_1/kernel": (m, d), "MlpBlock_0/Dense_1/bias": (d,)}

  def encoder(prefix, d, depth, m, h):
    out = {f"{prefix}/encoder_norm/scale": (d,), f"{prefix}/encoder_norm/bias": (d,)}
    for i in range(depth):
      out.update({f"{prefix}/encoderblock_{i}/{k}": s for k, s in block(d, m, h).items()})
      out.update({f"{prefix}/encoderblock_{i}/LayerNorm_1/{k}": (d,) for k in ("scale", "bias")})
    return out

  return {
      "t": (1,), "b": (1,),
      "img/embedding/kernel": (patch, patch, 3, width), "img/embedding/bias": (width,),
      "img/pos_embedding": (1, patches, width), "img/MAPHead_0/probe": (1, 1, width),
      **{f"img/MAPHead_0/{k}": s for k, s in block(width, mlp, heads).items()},
      **encoder("img/Transformer", width, depth, mlp, heads),
      "txt/Embed_0/embedding": (vocab, text_width), "txt/pos_embedding": (1, max_len, text_width),
      "txt/head/kernel": (text_width, embed), "txt/head/bias": (embed,),
      **encoder("txt/Encoder_0", text_width, text_depth, text_mlp, text_heads),
  }


@pytest.mark.parametrize("variant,image_size,expected", [
    ("So400m/14", 224, (1152, 27, 4304, 16, 14, 256, 1152, 27, 4304, 16, 16, 32_000, 1152)),
    ("So400m/14", 384, (1152, 27, 4304, 16, 14, 729, 1152, 27, 4304, 16, 64, 32_000, 1152)),
    ("B/16", 224, (768, 12, 3072, 12, 16, 196, 768, 12, 3072, 12, 64, 32_000, 768)),
    ("L/16", 256, (1024, 24, 4096, 16, 16, 256, 1024, 24, 4096, 16, 64, 32_000, 1024)),
])
def test_released_siglip_shapes(variant, image_size, expected):
  """`sizes.siglip` builds every param of the released checkpoint, with its shape, and nothing
  else (shapes only: `jax.eval_shape`, no init)."""
  spec = sizes.siglip(variant, image_size)
  model_kwargs = {k: v for k, v in spec["model"].items() if k != "name"}
  model = DualEncoder(**model_kwargs, vocab_size=spec["vocab_size"])
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  texts = jax.ShapeDtypeStruct((1, spec["input"]["max_text_len"]), jnp.int32)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), images, texts))["params"]
  assert big_vision_shapes(shapes) == expected_big_vision_shapes(*expected)


def test_last_token_pooling():
  """`pool='last'` is the output at position max_len - 1 whatever the caption's length; without the
  causal and padding masks every position sees every token, padding included."""
  tower = TextTransformer(vocab_size=50, max_len=8, pool="last", causal=False, mask_padding=False, **TOWER)
  texts = jnp.array([[2, 7, 9, 3, 1, 1, 1, 1], [2, 5, 4, 11, 12, 3, 0, 0]])
  params = jax.jit(tower.init)(jax.random.PRNGKey(0), texts)
  apply = jax.jit(tower.apply)
  pooled, tokens, _ = apply(params, texts)
  np.testing.assert_array_equal(pooled, tokens[:, 7])
  # The first position sees a later token (no causal mask), and real tokens see padding (no padding mask).
  assert np.abs(np.asarray(apply(params, texts.at[:, 3].set(20))[1][:, 0] - tokens[:, 0])).min() > 1e-4
  assert np.abs(np.asarray(apply(params, texts.at[1, 7].set(1))[1][1, :6] - tokens[1, :6])).min() > 1e-4
  with pytest.raises(ValueError, match="position max_len - 1 = 7"):
    apply(params, texts[:, :6])


def test_defaults_unchanged():
  """The default towers and heads (gap image pooling, causal eos text pooling, bias-free projections)
  keep their params and outputs: the values below are what they gave before the SigLIP options existed."""
  model = DualEncoder(image=dict(variant="mu/8"), text=dict(variant="mu", max_len=8), embed_dim=16, vocab_size=50)
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3), minval=-1, maxval=1)
  texts = jnp.array([[2, 7, 9, 3, 0, 0, 0, 0], [2, 5, 4, 11, 12, 3, 0, 0]])
  out, params = jax.jit(model.init_with_output)(jax.random.PRNGKey(0), images, texts)
  params = nn.meta.unbox(params)["params"]
  block = {"attn/query/kernel": (1, 32, 2, 16), "attn/query/bias": (1, 2, 16), "attn/key/kernel": (1, 32, 2, 16),
           "attn/key/bias": (1, 2, 16), "attn/value/kernel": (1, 32, 2, 16), "attn/value/bias": (1, 2, 16),
           "attn/out/kernel": (1, 2, 16, 32), "attn/out/bias": (1, 32), "mlp/fc1/kernel": (1, 32, 128),
           "mlp/fc1/bias": (1, 128), "mlp/fc2/kernel": (1, 128, 32), "mlp/fc2/bias": (1, 32),
           "norm1/scale": (1, 32), "norm1/bias": (1, 32), "norm2/scale": (1, 32), "norm2/bias": (1, 32)}
  encoder = {**{f"encoder/blocks/{k}": s for k, s in block.items()},
             "encoder/final_norm/scale": (32,), "encoder/final_norm/bias": (32,)}
  expected = {**{f"image/{k}": s for k, s in encoder.items()}, **{f"text/{k}": s for k, s in encoder.items()},
              "image/patch_embed/kernel": (8, 8, 3, 32), "image/patch_embed/bias": (32,),
              "image/pos_embedding": (1, 4, 32), "text/pos_embedding": (1, 8, 32),
              "text/token_embed/embedding": (50, 32), "image_proj/kernel": (32, 16), "text_proj/kernel": (32, 16),
              "logit_scale": (), "logit_bias": ()}
  assert {jax.tree_util.keystr(path, simple=True, separator="/"): leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)} == expected
  np.testing.assert_allclose(params["image_proj"]["kernel"].sum(), 10.101034, rtol=1e-5)
  np.testing.assert_allclose(params["text"]["pos_embedding"].sum(), -0.1009798, rtol=1e-5)
  np.testing.assert_allclose(out["image_embeds"][:, :6], [
      [-0.1017931, 0.0689147, 0.41491285, -0.02366192, 0.14333843, -0.3182001],
      [0.44265202, -0.0074071, -0.22661144, -0.05581998, 0.084015, 0.41630828]], atol=2e-5)
  np.testing.assert_allclose(out["text_embeds"][:, :6], [
      [0.16831277, 0.45293367, -0.34597388, -0.0925494, -0.02357217, 0.03842062],
      [-0.0430992, 0.01292781, -0.05623518, -0.07933475, 0.2423989, 0.3154396]], atol=2e-5)
  np.testing.assert_allclose(np.abs(out["image_tokens"]).sum(), 115.31112, rtol=1e-5)
  np.testing.assert_allclose(np.abs(out["text_tokens"]).sum(), 207.9533, rtol=1e-5)


def test_heads_and_their_errors():
  """'none' passes the pooled features and tokens through (width must be embed_dim); 'proj_bias' adds a bias."""
  model = DualEncoder(image=dict(variant="mu/8", pool="map"), text=dict(variant="mu", max_len=8, pool="last"),
                      embed_dim=32, vocab_size=50, image_head="none", text_head="proj_bias")
  images, texts = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3)), jnp.ones((2, 8), jnp.int32)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), images, texts))["params"]
  assert "image_proj" not in shapes and jax.tree.map(jnp.shape, shapes["text_proj"]) == {
      "kernel": (32, 32), "bias": (32,)}
  out, _ = jax.jit(model.init_with_output)(jax.random.PRNGKey(0), images)  # the image side only: one tower to compile
  features = np.asarray(out["image_features"])
  np.testing.assert_allclose(out["image_embeds"], features / np.linalg.norm(features, axis=-1, keepdims=True),
                             rtol=1e-5, atol=1e-6)
  assert out["image_tokens"].shape == (2, 4, 32)
  with pytest.raises(ValueError, match="image_head 'none' needs the image tower's width 32 to equal embed_dim 16"):
    DualEncoder(image=dict(variant="mu/8"), text=dict(variant="mu"), embed_dim=16, vocab_size=50,
                image_head="none").init(jax.random.PRNGKey(0), images, texts)


def test_config_accepts_siglip_options(make_tiny_config):
  """config.validate checks model keys against the constructors: the new options pass, a typo fails."""
  config = make_tiny_config()
  config.model.image.pool = "map"
  config.model.text.update(pool="last", causal=False, mask_padding=False)
  config.model.image_head, config.model.text_head = "none", "proj_bias"
  config.model.logit_scale_init = math.log(10.0)
  config.objectives = dict(siglip=dict(weight=1.0))
  config_lib.validate(config, num_devices=1, batch_ways=1)
  spec = sizes.siglip("So400m/14", 224)
  config.model, config.tokenizer.vocab_size = spec["model"], spec["vocab_size"]
  config.input.update(spec["input"])
  config_lib.validate(config, num_devices=1, batch_ways=1)
  config.model.text.mask_paddding = False
  with pytest.raises(config_lib.ConfigError, match="unknown key 'model.text.mask_paddding'"):
    config_lib.validate(config, num_devices=1, batch_ways=1)


def test_so400m_at_384_px_validates_and_drops_the_last_pixels():
  """384 px is not a whole number of 14-px patches: the last 6 pixels are dropped (27x27 grid), as
  big_vision's VALID patch convolution does, and the config validates."""
  from vlmjax import config as config_lib
  from vlmjax.models.sizes import siglip
  config = config_lib.base_config()
  spec = siglip("So400m/14", 384)
  config.model = spec["model"]
  config.input.image_size = spec["input"]["image_size"]
  config.input.max_text_len = spec["input"]["max_text_len"]
  config_lib.check_keys_and_ranges(config)
  config.input.image_size = 8
  with pytest.raises(config_lib.ConfigError, match="'input.image_size' 8 is smaller than the image tower's "
                                                   "patch_size 14"):
    config_lib.check_keys_and_ranges(config)
