"""The shard_map forms of the contrastive losses equal their global forms, loss and gradients."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vlmjax import sharding
from vlmjax.objectives.contrastive import clip_loss, clip_loss_local, siglip_loss, siglip_loss_ring

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
    (siglip_loss, siglip_loss_ring, (np.log(10.0), -10.0)),
    (siglip_loss, siglip_loss_ring, (1.0, 0.3)),
], ids=["clip_local", "siglip_ring_init", "siglip_ring_trained"])
def test_distributed_equals_global(mesh_config, global_loss, distributed_loss, scalars):
  mesh = sharding.make_mesh(mesh_config)
  u, v = _inputs()
  want_value, want_grads = _value_and_grads(global_loss, mesh, u, v, *scalars)
  got_value, got_grads = _value_and_grads(distributed_loss, mesh, u, v, *scalars)
  np.testing.assert_allclose(got_value, want_value, rtol=1e-6, atol=1e-6)
  for got, want in zip(got_grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
