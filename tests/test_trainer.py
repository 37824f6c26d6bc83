"""Optimizer wiring a user relies on: the learning-rate schedule and freezing by path regex."""
import jax
import numpy as np
import pytest

from conftest import single_device_mesh
from test_contrastive import _random_batch, _setup
from vlmjax import sharding, trainer


def test_schedule_warmup_then_cosine_to_end(make_tiny_config):
  config = make_tiny_config(**{"optimizer.learning_rate": 0.1, "optimizer.warmup_steps": 10,
                               "optimizer.end_learning_rate": 0.001})
  _, schedule = trainer.make_optimizer(config.optimizer, 110)
  lr = lambda s: float(schedule(s))
  assert lr(0) == 0.0
  assert lr(5) == pytest.approx(0.05)
  assert lr(10) == pytest.approx(0.1)
  assert lr(60) == pytest.approx(0.001 + 0.5 * (0.1 - 0.001), rel=1e-4)  # halfway down the cosine
  assert lr(110) == pytest.approx(0.001)
  assert all(lr(s) >= lr(s + 1) for s in range(10, 110))


def test_frozen_params_do_not_change(make_tiny_config):
  config = make_tiny_config(**{"optimizer.frozen": "^image/", "optimizer.learning_rate": 1e-2,
                               "optimizer.warmup_steps": 0, "total_steps": 50})
  mesh = single_device_mesh()
  _, _, state, step = _setup(config, mesh)
  before = jax.device_get(state["params"])
  rng = np.random.default_rng(0)
  for _ in range(2):
    with jax.set_mesh(mesh):
      state, _ = step(state, sharding.global_batch(_random_batch(rng, config.batch_size), mesh))
  after = jax.device_get(state["params"])
  changed = {}
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after)):
    changed[trainer.path_str(path)] = not np.array_equal(x, y)
  image = {k: v for k, v in changed.items() if k.startswith("image/")}
  assert image and not any(image.values()), [k for k, v in image.items() if v]
  assert changed["text/token_embed/embedding"] and changed["image_proj/kernel"]
