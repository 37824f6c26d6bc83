"""Model behaviour a user relies on: padding is invisible, position embeddings as configured."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax.models.text import TextTransformer
from vlmjax.models.vit import ViT, sincos2d

TOWER = dict(width=32, depth=2, mlp_dim=64, num_heads=2)


def test_text_tower_ignores_padding():
  """Extra padding after EOS changes neither the pooled embedding nor the real tokens' outputs."""
  for pool, causal in (("eos", True), ("mean", False)):
    model = TextTransformer(vocab_size=50, max_len=16, pool=pool, causal=causal, **TOWER)
    short = jnp.array([[2, 7, 9, 3, 0, 0, 0, 0]])
    long = jnp.array([[2, 7, 9, 3, 0, 0, 0, 0, 0, 0, 0, 0]])
    params = model.init(jax.random.PRNGKey(0), long)
    pooled_a, tokens_a, _ = model.apply(params, short)
    pooled_b, tokens_b, _ = model.apply(params, long)
    np.testing.assert_allclose(pooled_a, pooled_b, atol=1e-5)
    np.testing.assert_allclose(tokens_a[:, :4], tokens_b[:, :4], atol=1e-5)


def test_all_padding_caption_is_finite():
  model = TextTransformer(vocab_size=50, max_len=8, **TOWER)
  tokens = jnp.zeros((2, 8), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), tokens)
  pooled, _, mask = model.apply(params, tokens)
  assert np.isfinite(np.asarray(pooled)).all() and not np.asarray(mask).any()


def test_vit_position_embeddings():
  images = jnp.zeros((1, 32, 32, 3))
  learned = nn.meta.unbox(ViT(patch_size=8, pool="cls", **TOWER).init(jax.random.PRNGKey(0), images))
  assert learned["params"]["pos_embedding"].shape == (1, 16 + 1, 32)  # the class token's included
  fixed = nn.meta.unbox(ViT(patch_size=8, posemb="sincos2d", **TOWER).init(jax.random.PRNGKey(0), images))
  assert "pos_embedding" not in fixed["params"]
  table = np.asarray(sincos2d(4, 4, 32))[0]
  assert table.shape == (16, 32)
  # Distinct positions get distinct embeddings, and row/column halves encode y and x separately.
  assert len({tuple(np.round(r, 5)) for r in table}) == 16
  np.testing.assert_allclose(table[0, :16], table[4, :16])  # same column x=0, different row


@pytest.mark.parametrize("size,kernel,stride,padding", [
    (32, 3, 2, "SAME"), (15, 3, 2, "SAME"), (12, 5, 2, "SAME"), (32, 8, 8, "VALID"), (30, 8, 8, "VALID"),
    (9, 3, 1, "SAME")])
def test_patch_conv_equals_nn_conv(size, kernel, stride, padding):
  """The matmul-form convolution of the ViT stems: nn.Conv's output and gradients from the same params."""
  from vlmjax.models.vit import PatchConv
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 3))
  conv = nn.Conv(5, (kernel, kernel), strides=(stride, stride), padding=padding)
  ours = PatchConv(5, kernel, stride, padding=padding, bias_init=nn.initializers.normal(1.0))
  params = ours.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, conv.init(jax.random.PRNGKey(1), x))
  loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
  (value, grads), (ref_value, ref_grads) = [
      jax.value_and_grad(loss(m), argnums=(0, 1))(params, x) for m in (ours, conv)]
  assert ours.apply(params, x).shape == conv.apply(params, x).shape
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_vit_conv_stem():
  """ViTc stem: log2(p) stride-2 convs then a 1×1 projection; same token grid as the patch stem."""
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  model = ViT(patch_size=8, stem="conv", **TOWER)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), images))["params"]
  assert [params[f"stem_conv{i}"]["kernel"].shape for i in range(3)] == [
      (3, 3, 3, 8), (3, 3, 8, 16), (3, 3, 16, 32)]
  assert params["patch_embed"]["kernel"].shape == (1, 1, 32, 32)
  pooled, tokens = model.apply({"params": params}, images)
  assert pooled.shape == (2, 32) and tokens.shape == (2, 16, 32) and np.isfinite(tokens).all()
  with pytest.raises(ValueError, match="power-of-two patch_size"):
    ViT(patch_size=6, stem="conv", **TOWER).init(jax.random.PRNGKey(0), images)


@pytest.mark.parametrize("implementation", ["einsum", "xla"])
@pytest.mark.parametrize("num_kv_heads,use_bias", [(None, True), (2, False)])
def test_attention_equals_plain_multi_head_attention(num_kv_heads, use_bias, implementation):
  """One fused q/k/v matmul and batched-over-heads scores give textbook attention; the params are
  nn.DenseGeneral's (names, shapes and initial values), so checkpoints and exports are unchanged."""
  from vlmjax.models import layers
  heads, head_dim, width = 4, 8, 32
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, width))
  mask = jnp.tril(jnp.ones((5, 5), bool))[None, None].repeat(2, 0)
  attention = layers.Attention(num_heads=heads, num_kv_heads=num_kv_heads, use_bias=use_bias,
                               implementation=implementation)
  params = nn.meta.unbox(attention.init(jax.random.PRNGKey(0), x, mask))["params"]
  kv = num_kv_heads or heads
  # Same initial values as DenseGeneral modules of the same names would get.
  class Reference(nn.Module):
    @nn.compact
    def __call__(self, x):
      return [nn.DenseGeneral((n, head_dim), use_bias=use_bias, name=name,
                              kernel_init=nn.initializers.xavier_uniform())(x)
              for name, n in (("query", heads), ("key", kv), ("value", kv))]
  reference = nn.meta.unbox(Reference().init(jax.random.PRNGKey(0), x))["params"]
  for name in reference:
    assert jax.tree.map(jnp.shape, params[name]) == jax.tree.map(jnp.shape, reference[name])
    np.testing.assert_array_equal(params[name]["kernel"], reference[name]["kernel"])

  p = jax.tree.map(np.asarray, params)
  xs = np.asarray(x, np.float64)
  def proj(name):
    y = np.einsum("btd,dnk->btnk", xs, p[name]["kernel"])
    return y + p[name]["bias"] if use_bias else y
  q, k, v = proj("query"), proj("key"), proj("value")
  k, v = np.repeat(k, heads // kv, axis=2), np.repeat(v, heads // kv, axis=2)  # query head h uses kv head h // G
  logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(head_dim)
  logits = np.where(np.asarray(mask), logits, -1e9)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bhts,bshd->bthd", weights, v)
  expected = np.einsum("bthd,hde->bte", out, p["out"]["kernel"]) + (p["out"]["bias"] if use_bias else 0)
  got = attention.apply({"params": params}, x, mask)
  np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)


def test_attention_implementations_agree_on_gradients_and_masked_rows():
  """The XLA core (`jax.nn.dot_product_attention`) gives the einsum core's outputs and gradients,
  grouped-query heads, a padding mask and a fully masked query row (uniform weights) included."""
  from vlmjax.models import layers
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 32))
  keep = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  mask = (keep[:, None, :, None] & keep[:, None, None, :]) | jnp.eye(6, dtype=bool)
  mask = mask.at[1, 0, 2].set(False)  # a query that attends to nothing
  outputs = {}
  for implementation in ("einsum", "xla"):
    attention = layers.Attention(num_heads=4, num_kv_heads=2, implementation=implementation)
    params = attention.init(jax.random.PRNGKey(0), x, mask)["params"]
    loss = lambda p, x: (attention.apply({"params": p}, x, mask) ** 2).sum()
    outputs[implementation] = (attention.apply({"params": params}, x, mask), jax.grad(loss, (0, 1))(params, x))
  np.testing.assert_allclose(outputs["xla"][0], outputs["einsum"][0], atol=1e-5, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(outputs["xla"][1]), jax.tree.leaves(outputs["einsum"][1])):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_attention_implementation_errors():
  from vlmjax import config as config_lib
  from vlmjax.models import layers
  x = jnp.ones((1, 3, 16))
  with pytest.raises(ValueError, match="'cudnn' needs bfloat16 or float16 compute, not float32"):
    layers.Attention(num_heads=2, implementation="cudnn").init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="unknown implementation 'flash'"):
    layers.Attention(num_heads=2, implementation="flash").init(jax.random.PRNGKey(0), x)
  c = config_lib.base_config()
  c.model.image.attention = "flash"
  with pytest.raises(config_lib.ConfigError, match=r"'model.image.attention' 'flash' is not an attention"):
    config_lib.validate(c, 1, 1)


@pytest.mark.parametrize("with_mask", [False, True])
def test_padded_attention_equals_unpadded(with_mask):
  """The padding the cuDNN core needs (lengths up to a multiple of 8, padded keys masked by sequence
  lengths or in the mask) changes nothing: checked through XLA's implementation, values and grads."""
  from vlmjax.models import layers
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(keys[0], (2, 13, 4, 8))
  k, v = (jax.random.normal(key, (2, 11, 2, 8)) for key in keys[1:])
  mask = jax.random.bernoulli(keys[0], 0.7, (2, 1, 13, 11)) if with_mask else None
  plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
  padded = lambda q, k, v: layers.padded_attention(q, k, v, mask, "xla")
  np.testing.assert_allclose(padded(q, k, v), plain(q, k, v), atol=1e-5)
  loss = lambda f: lambda *a: (f(*a) * jnp.arange(13.0)[:, None, None]).sum()
  for got, want in zip(jax.grad(loss(padded), (0, 1, 2))(q, k, v), jax.grad(loss(plain), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, atol=1e-5)
