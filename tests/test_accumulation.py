"""Gradient accumulation (`microbatches`): the same step as one large batch, for losses that couple
the whole batch (contrastive), distributed or not, with outputs of every kind (bool masks, scalars)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlmjax import config as config_lib, experiment, sharding, trainer

VOCAB = 64
CASES = {
    "clip": {"objectives": {"clip": {"weight": 1.0}}},
    "clip_local": {"objectives": {"clip": {"weight": 1.0, "distributed": "local"}}},
    "siglip_ring": {"objectives": {"siglip": {"weight": 1.0, "distributed": "ring"}}},
    "filip": {"objectives": {"filip": {"weight": 1.0}}},
    "dreamlip": {"objectives": {"dreamlip": {"weight": 1.0, "grouping_weight": 0.5}},
                 "model.local_logit_scale": True},
}


def _batch(rng, batch_size, config, subcaptions=0):
  size, length = config.input.image_size, config.input.max_text_len

  def texts(*shape):
    lengths = rng.integers(3, length + 1, shape)
    out = rng.integers(4, VOCAB, (*shape, length)).astype(np.int32)
    out[np.arange(length) >= lengths[..., None]] = 0
    return out

  batch = {"image": rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32), "text": texts(batch_size)}
  if subcaptions:
    batch["multi_text"] = texts(batch_size, subcaptions)
    batch["multi_text"][::3, -1] = 0  # some sub-caption slots empty: a bool `multi_text_valid` output
  return batch


def _grads_and_metrics(config, mesh, batch, microbatch_counts):
  """For each count: the grads (params before − after one SGD step at lr 1) and the step's metrics."""
  built = experiment.build(config, VOCAB, mesh=mesh)
  model, objectives = built.model, built.objectives
  tx, schedule = optax.sgd(1.0), optax.constant_schedule(1.0)
  state, shardings = trainer.create_train_state(
      model, tx, built.sample_batch(), config.seed, mesh, sharding.rules_from_config(()))
  before = jax.device_get(state["params"])
  batch = sharding.global_batch(batch, mesh)
  out = []
  for count in microbatch_counts:
    step = trainer.make_train_step(model, objectives, tx, schedule, mesh, shardings, microbatches=count)
    with jax.set_mesh(mesh):
      after, metrics = step(jax.tree.map(jnp.copy, state), batch)  # the step donates its input
    out.append((jax.tree.map(lambda b, a: b - a, before, jax.device_get(after["params"])), jax.device_get(metrics)))
  return out


# Fast: a global loss (the outputs include a bool mask and scalars) and a shard_map ring; the rest slow.
@pytest.mark.parametrize("case", [c if c in ("clip", "siglip_ring") else pytest.param(c, marks=pytest.mark.slow)
                                  for c in sorted(CASES)])
def test_microbatches_give_the_large_batch_step(make_tiny_config, case):
  config = make_tiny_config(batch_size=16, mesh=dict(data=2, fsdp=2, tensor=1), **CASES[case])
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:4])
  batch = _batch(np.random.default_rng(0), 16, config, subcaptions=2 if case == "dreamlip" else 0)
  # 4 examples per device: one per microbatch.
  (grads_1, metrics_1), (grads_4, metrics_4) = _grads_and_metrics(config, mesh, batch, (1, 4))
  assert metrics_1.keys() == metrics_4.keys()
  for key in metrics_1:
    np.testing.assert_allclose(metrics_4[key], metrics_1[key], rtol=1e-5, atol=1e-6, err_msg=key)
  flat_1 = dict(jax.tree_util.tree_flatten_with_path(grads_1)[0])
  for path, g4 in jax.tree_util.tree_flatten_with_path(grads_4)[0]:
    np.testing.assert_allclose(g4, flat_1[path], rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  assert metrics_1["grad_norm"] > 1e-3  # the comparison is of gradients that are not all zero


def test_microbatching_splits_each_devices_rows():
  x = np.arange(16)
  micro = trainer.split_microbatches(x, 4)
  np.testing.assert_array_equal(micro[1], [1, 5, 9, 13])  # rows of 4 devices × 4 examples: one each
  np.testing.assert_array_equal(trainer.merge_microbatches(micro), x)


def test_microbatches_must_divide_the_per_device_batch(make_tiny_config):
  config = make_tiny_config(batch_size=32, microbatches=3)
  with pytest.raises(config_lib.ConfigError, match="'microbatches' 3 must be at least 1 and divide"):
    config_lib.validate(config, 8, 8)
  config_lib.validate(make_tiny_config(batch_size=32, microbatches=4), 8, 8)
