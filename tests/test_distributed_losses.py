"""The shard_map forms of the contrastive losses equal their global forms, loss and gradients."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vlmjax import sharding
from vlmjax.objectives.contrastive import (clip_loss, clip_loss_local, filip_loss, filip_loss_local,
                                            filip_select_tokens, siglip_loss, siglip_loss_ring)

MESHES = [dict(data=2, fsdp=2, tensor=2), dict(data=1, fsdp=8, tensor=1), dict(data=4, fsdp=1, tensor=2)]


def _inputs(batch=16, dim=8):
  rng = np.random.default_rng(0)
  u, v = rng.normal(size=(2, batch, dim)).astype(np.float32)
  return u / np.linalg.norm(u, axis=1, keepdims=True), v / np.linalg.norm(v, axis=1, keepdims=True)


def _value_and_grads(loss, mesh, u, v, *scalars):
  argnums = tuple(range(2 + len(scalars)))
  fn = jax.jit(jax.value_and_grad(loss, argnums=argnums))
  batch = NamedSharding(mesh, P(("data", "fsdp")))
  with jax.set_mesh(mesh):
    value, grads = fn(jax.device_put(u, batch), jax.device_put(v, batch), *map(np.float32, scalars))
  return float(value), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("mesh_config", MESHES, ids=str)
@pytest.mark.parametrize("global_loss,distributed_loss,scalars", [
    (clip_loss, clip_loss_local, (np.log(1 / 0.07),)),
    (clip_loss, clip_loss_local, (np.log(1 / 0.07), 0.1)),
    (siglip_loss, siglip_loss_ring, (np.log(10.0), -10.0)),
    (siglip_loss, siglip_loss_ring, (1.0, 0.3)),
], ids=["clip_local", "clip_local_smoothed", "siglip_ring_init", "siglip_ring_trained"])
def test_distributed_equals_global(mesh_config, global_loss, distributed_loss, scalars):
  mesh = sharding.make_mesh(mesh_config)
  u, v = _inputs()
  want_value, want_grads = _value_and_grads(global_loss, mesh, u, v, *scalars)
  got_value, got_grads = _value_and_grads(distributed_loss, mesh, u, v, *scalars)
  np.testing.assert_allclose(got_value, want_value, rtol=1e-6, atol=1e-6)
  for got, want in zip(got_grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _filip_inputs(batch=16, image_tokens=6, text_tokens=5, dim=8):
  rng = np.random.default_rng(1)
  l2 = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  x = l2(rng.normal(size=(batch, image_tokens, dim))).astype(np.float32)
  y = l2(rng.normal(size=(batch, text_tokens, dim))).astype(np.float32)
  lengths = rng.integers(0, text_tokens + 1, size=batch)
  lengths[:2] = (0, text_tokens)  # an all-padding caption and a full one
  mask = np.arange(text_tokens)[None] < lengths[:, None]
  return x, y, mask


def _filip_value_and_grads(loss, mesh, x, y, mask, theta=np.log(1 / 0.07)):
  fn = jax.jit(jax.value_and_grad(lambda a, b, t: loss(a, b, mask_sharded, t), argnums=(0, 1, 2)))
  batch = NamedSharding(mesh, P(("data", "fsdp")))
  mask_sharded = jax.device_put(mask, batch)
  with jax.set_mesh(mesh):
    value, grads = fn(jax.device_put(x, batch), jax.device_put(y, batch), np.float32(theta))
  return float(value), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("mesh_config", MESHES, ids=str)
@pytest.mark.parametrize("chunk_size", [0, 2])
def test_filip_local_equals_global(mesh_config, chunk_size):
  mesh = sharding.make_mesh(mesh_config)
  x, y, mask = _filip_inputs()
  want_value, want_grads = _filip_value_and_grads(filip_loss, mesh, x, y, mask)
  local = lambda a, b, m, t: filip_loss_local(a, b, m, t, chunk_size=chunk_size)
  got_value, got_grads = _filip_value_and_grads(local, mesh, x, y, mask)
  assert np.isfinite(got_value)
  np.testing.assert_allclose(got_value, want_value, rtol=1e-6, atol=1e-6)
  for got, want in zip(got_grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _select_reference(x, y, mask, fraction):
  """numpy: per sample, the ⌈fraction·n⌉ tokens with the best max similarity within the group."""
  sims = np.einsum("ikd,jrd->ikjr", x, y)
  image_score = np.where(mask[None, None], sims, -np.inf).max(axis=(2, 3))
  text_score = np.where(mask, sims.max(axis=(0, 1)), -np.inf)
  k_image, k_text = int(np.ceil(fraction * x.shape[1])), int(np.ceil(fraction * y.shape[1]))
  image_idx = np.argsort(-image_score, axis=1, kind="stable")[:, :k_image]
  text_idx = np.argsort(-text_score, axis=1, kind="stable")[:, :k_text]
  rows = np.arange(x.shape[0])[:, None]
  return x[rows, image_idx], y[rows, text_idx], mask[rows, text_idx]


def test_filip_top_tokens_are_selected_per_device_group():
  """With top-k selection, the local form equals the global loss on the tokens each device's group keeps."""
  mesh = sharding.make_mesh(dict(data=1, fsdp=4, tensor=2))
  x, y, mask = _filip_inputs(batch=16, image_tokens=8, text_tokens=6)
  groups = [slice(4 * g, 4 * g + 4) for g in range(4)]
  kept = [_select_reference(x[g], y[g], mask[g], 0.5) for g in groups]
  kx, ky, km = (np.concatenate(parts) for parts in zip(*kept))
  assert kx.shape == (16, 4, 8) and ky.shape == (16, 3, 8)
  want = float(filip_loss(kx, ky, km, np.float32(np.log(1 / 0.07))))
  local = lambda a, b, m, t: filip_loss_local(a, b, m, t, top_token_fraction=0.5)
  got, grads = _filip_value_and_grads(local, mesh, x, y, mask)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Dropped tokens get no gradient; kept ones do.
  assert (np.abs(grads[0]).sum(-1) > 0).sum() == 16 * 4


def test_filip_top_token_fraction_is_checked():
  x, y, mask = _filip_inputs()
  with pytest.raises(ValueError, match="top_token_fraction"):
    filip_select_tokens(x, y, mask, 0.0)
