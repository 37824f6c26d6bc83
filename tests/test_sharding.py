"""Sharding: a (data=2, fsdp=2, tensor=2) mesh on 8 fake CPU devices trains exactly like 1 device."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import single_device_mesh
from test_contrastive import _random_batch, _setup
from vlmjax import sharding, trainer

STEPS = 3


def test_eight_fake_devices():
  assert jax.device_count() == 8
  assert jax.devices()[0].platform == "cpu"


def _run(config, mesh, batches):
  _, _, state, step = _setup(config, mesh)
  losses = []
  for batch in batches:
    with jax.set_mesh(mesh):
      state, metrics = step(state, sharding.global_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  return state, losses


@pytest.fixture(scope="module")
def runs(tiny_data_dir):
  from conftest import tiny_config
  # Widths, mlp_dim and heads are all divisible by 2, so every rule applies. The lr is the default
  # 1e-3: Adam divides by sqrt(v) + eps, so an entry whose gradient is ~0 amplifies summation-order
  # noise up to ~lr per step (at lr 1e-2 one entry of 6144 differed by 1.5e-5 after 3 steps).
  config = tiny_config(tiny_data_dir, **{"optimizer.learning_rate": 1e-3, "optimizer.warmup_steps": 0,
                                         "total_steps": 50, "batch_size": 16})
  rng = np.random.default_rng(0)
  batches = [_random_batch(rng, config.batch_size) for _ in range(STEPS)]
  one = _run(config, single_device_mesh(), batches)
  eight_mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  eight = _run(config, eight_mesh, batches)
  return one, eight, eight_mesh


def test_losses_match_single_device(runs):
  (_, losses1), (_, losses8), _ = runs
  assert len(losses1) == STEPS
  assert losses1[0] != losses1[-1]  # the params did train
  np.testing.assert_allclose(losses8, losses1, rtol=0, atol=1e-5)


def test_params_match_single_device(runs):
  (state1, _), (state8, _), _ = runs
  p1 = jax.device_get(state1["params"])
  p8 = jax.device_get(state8["params"])
  assert jax.tree.structure(p1) == jax.tree.structure(p8)
  worst = 0.0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5, err_msg=trainer.path_str(path))
    worst = max(worst, float(np.max(np.abs(np.asarray(a) - np.asarray(b)))))
  print(f"max |params(1 device) - params(2x2x2)| = {worst:.3g}")
  assert int(state1["step"]) == int(state8["step"]) == STEPS


def _axes(spec):
  out = set()
  for entry in spec:
    if isinstance(entry, tuple):
      out.update(entry)
    elif entry is not None:
      out.add(entry)
  return out


def test_params_really_sharded(runs):
  _, (state8, _), mesh = runs
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  specs = {trainer.path_str(path): leaf.sharding.spec
           for path, leaf in jax.tree_util.tree_leaves_with_path(state8["params"])}
  fsdp = [k for k, s in specs.items() if "fsdp" in _axes(s)]
  tensor = [k for k, s in specs.items() if "tensor" in _axes(s)]
  assert fsdp, specs
  assert tensor, specs
  # Specific expectations from the default rules: embed -> fsdp, mlp -> tensor.
  fc1 = next(k for k in specs if k.startswith("image/") and k.endswith("mlp/fc1/kernel"))
  assert _axes(specs[fc1]) == {"fsdp", "tensor"}, (fc1, specs[fc1])
  # A sharded parameter really is split: each device holds a fraction of it.
  leaf = state8["params"]
  for part in fc1.split("/"):
    leaf = leaf[part]
  shard_shape = leaf.addressable_shards[0].data.shape
  assert np.prod(shard_shape) * 4 == np.prod(leaf.shape)
  # The optimizer state follows the params' sharding (FSDP shards the Adam moments too).
  opt_specs = [x.sharding.spec for x in jax.tree.leaves(state8["opt_state"]) if np.ndim(x) >= 2]
  assert any("fsdp" in _axes(s) for s in opt_specs)
  # Scalars stay replicated.
  assert _axes(state8["params"]["logit_scale"].sharding.spec) == set()


def test_batch_sharded_over_data_and_fsdp():
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  assert sharding.batch_axes_size(mesh) == 4
  batch = sharding.global_batch({"x": np.arange(16 * 3).reshape(16, 3)}, mesh)
  assert batch["x"].shape == (16, 3)
  assert batch["x"].sharding.spec == P(("data", "fsdp"))
  assert {s.data.shape for s in batch["x"].addressable_shards} == {(4, 3)}
  np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(16 * 3).reshape(16, 3))


@pytest.mark.parametrize("mesh,expected", [
    (dict(data=2, fsdp=2, tensor=2), (2, 2, 2)),
    (dict(data=1, fsdp=-1, tensor=1), (1, 8, 1)),
    (dict(data=-1, fsdp=2, tensor=1), (4, 2, 1)),
])
def test_mesh_shape(mesh, expected):
  assert sharding.mesh_shape(mesh, 8) == expected


@pytest.mark.parametrize("mesh", [
    dict(data=3, fsdp=1, tensor=1),     # does not divide 8
    dict(data=-1, fsdp=3, tensor=1),    # -1 cannot absorb a remainder
    dict(data=2, fsdp=2, tensor=1),     # divides but uses only 4 of 8 devices
    dict(data=4, fsdp=2, tensor=2),     # more than 8
])
def test_mesh_shape_rejects_meshes_that_do_not_fit(mesh):
  with pytest.raises(ValueError, match=r"mesh: data×fsdp×tensor.*8 devices"):
    sharding.mesh_shape(mesh, 8)


def test_mesh_shape_rejects_two_wildcards():
  with pytest.raises(ValueError, match="at most one"):
    sharding.mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)


def test_make_mesh_error_is_value_error():
  with pytest.raises(ValueError, match="does not divide"):
    sharding.make_mesh(dict(data=3, fsdp=1, tensor=1))
