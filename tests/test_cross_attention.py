"""Cross-attention in the shared block: queries from the sequence, keys and values from a context."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax import sharding
from vlmjax.models import layers

BLOCK = dict(num_heads=4, mlp_dim=64, cross_attention=True)


def _inputs(batch=4):
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  x = jax.random.normal(keys[0], (batch, 5, 32))
  context = jax.random.normal(keys[1], (batch, 7, 24))
  context_mask = jnp.arange(7)[None, :] < jnp.array([7, 4, 1, 6] * (batch // 4))[:, None]
  return x, context, context_mask


def test_cross_attention_block_is_self_attention_then_cross_attention_then_mlp():
  """The block equals its parts applied in order with its own params, and context padding is ignored."""
  x, context, context_mask = _inputs()
  block = layers.Block(**BLOCK)
  params = nn.meta.unbox(block.init(jax.random.PRNGKey(1), x, context=context, context_mask=context_mask))["params"]
  got = block.apply({"params": params}, x, context=context, context_mask=context_mask)

  norm = lambda name, y: layers.Norm("layer").apply({"params": params[name]}, y)
  h = x + layers.Attention(4).apply({"params": params["attn"]}, norm("norm1", x))
  h = h + layers.Attention(4).apply({"params": params["cross_attn"]}, norm("norm_cross", h),
                                    context_mask[:, None, None, :], inputs_kv=context)
  want = h + layers.Mlp(64).apply({"params": params["mlp"]}, norm("norm2", h))
  np.testing.assert_allclose(got, want, atol=1e-5)

  # What the mask hides changes nothing.
  noisy = jnp.where(context_mask[..., None], context, 100.0)
  np.testing.assert_allclose(block.apply({"params": params}, x, context=noisy, context_mask=context_mask), got,
                             atol=1e-5)
  with pytest.raises(ValueError, match="needs a context"):
    block.apply({"params": params}, x)


@pytest.mark.parametrize("scan,remat", [(True, "dots"), (False, "none")])
def test_cross_attention_stack_sharded_on_8_devices_equals_one_device(scan, remat):
  """A stack of cross-attention blocks, params placed by their logical names on a data × fsdp ×
  tensor mesh of 8 fake devices, gives the single-device outputs and gradients."""
  x, context, context_mask = _inputs(batch=8)
  stack = layers.Transformer(2, BLOCK, scan=scan, remat=remat)
  boxed = stack.init(jax.random.PRNGKey(1), x, context=context, context_mask=context_mask)
  params = nn.meta.unbox(boxed)

  def loss(p, x, context):
    return (stack.apply(p, x, context=context, context_mask=context_mask) ** 2).sum()

  want_value, want_grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(params, x, context)
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  param_shardings = sharding.logical_shardings(boxed, mesh, sharding.DEFAULT_RULES)
  placed = jax.device_put(params, param_shardings)
  batch = sharding.batch_sharding(mesh)
  with sharding.use(mesh):
    got_value, got_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(
        placed, jax.device_put(x, batch), jax.device_put(context, batch))
  assert any(len(s.device_set) > 1 and not s.is_fully_replicated for s in jax.tree.leaves(param_shardings))
  np.testing.assert_allclose(got_value, want_value, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
