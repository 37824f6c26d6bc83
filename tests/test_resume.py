"""Preemption and resume through the real entry point `vlmjax.train.train`.

Run A trains 20 steps without stopping. Run B trains the same config but stops after step 10 (as a
preemption would: `stop_after_steps=10` checkpoints and returns), then is started again on the same
workdir and continues to 20. Since the checkpoint holds the train state *and* the grain iterator's
position, B's steps 11..20 must be bit-identical to A's, and so must the final params.
"""
import os

import jax
import numpy as np
import pytest

from conftest import single_device_mesh, tiny_config
from vlmjax import experiment, sharding, trainer
from vlmjax.data.tokenizer import Tokenizer
from vlmjax.run import RunDir, read_metrics
from vlmjax.train import train

TOTAL = 20
STOP = 10


def _config(data_dir):
  # Crop and brightness augmentation on, so the data RNG must be restored too, not only the order.
  return tiny_config(data_dir, **{
      "total_steps": TOTAL, "checkpoint.every_steps": 5, "checkpoint.async_save": True, "log_every_steps": 1,
      "evals": {},
      "mesh": dict(data=1, fsdp=-1, tensor=1),  # all 8 fake devices: the checkpoint is sharded
      "input.crop_min": 0.8, "input.brightness": 0.1, "optimizer.warmup_steps": 5})


def _final_params(config, workdir, step=TOTAL, mesh=None, host=True):
  tokenizer = Tokenizer.load(os.path.join(workdir, "tokenizer.model"))
  mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
  abstract, _ = experiment.build(config, tokenizer.vocab_size, mesh=mesh).abstract_state()
  checkpointer = RunDir(workdir).checkpointer(0, 3)
  try:
    assert checkpointer.latest_step() == step
    params = checkpointer.restore_params(abstract["params"], step)
    return jax.device_get(params) if host else params
  finally:
    checkpointer.close()


@pytest.fixture(scope="module")
def runs(tiny_data_dir, tmp_path_factory):
  config = _config(tiny_data_dir)
  workdir_a = str(tmp_path_factory.mktemp("run_a"))
  workdir_b = str(tmp_path_factory.mktemp("run_b"))
  results_a = train(config, workdir_a)
  interrupted = train(config, workdir_b, stop_after_steps=STOP)
  checkpointer = RunDir(workdir_b).checkpointer(0, 3)
  steps_after_stop = checkpointer.manager.all_steps()
  checkpointer.close()
  metrics_after_stop = read_metrics(workdir_b)
  results_b = train(config, workdir_b)
  return dict(config=config, a=workdir_a, b=workdir_b, results_a=results_a, results_b=results_b,
              interrupted=interrupted, steps_after_stop=steps_after_stop,
              metrics_after_stop=metrics_after_stop)


def _losses(workdir):
  return {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}


def test_interrupted_run_stops_and_checkpoints(runs):
  assert runs["interrupted"] == {}
  assert sorted(runs["steps_after_stop"]) == [5, STOP]
  steps = [m["step"] for m in runs["metrics_after_stop"] if "loss" in m]
  assert steps == list(range(1, STOP + 1))


def test_uninterrupted_run_logs_every_step(runs):
  assert sorted(_losses(runs["a"])) == list(range(1, TOTAL + 1))


def test_resumed_losses_equal_uninterrupted_exactly(runs):
  a, b = _losses(runs["a"]), _losses(runs["b"])
  assert sorted(b) == list(range(1, TOTAL + 1)), "each step is logged once, none repeated after resume"
  assert len(set(a.values())) > 10  # the loss really changes from step to step
  for step in range(STOP + 1, TOTAL + 1):
    assert b[step] == a[step], f"step {step}: resumed {b[step]!r} != uninterrupted {a[step]!r}"
  for step in range(1, STOP + 1):
    assert b[step] == a[step], f"step {step} (before the stop)"


def test_resumed_learning_rate_and_grad_norm_equal(runs):
  a = {m["step"]: m for m in read_metrics(runs["a"]) if "loss" in m}
  b = {m["step"]: m for m in read_metrics(runs["b"]) if "loss" in m}
  for step in range(STOP + 1, TOTAL + 1):
    assert b[step]["learning_rate"] == a[step]["learning_rate"]
    assert b[step]["grad_norm"] == a[step]["grad_norm"]


def test_resumed_final_params_equal_exactly(runs):
  with open(os.path.join(runs["a"], "tokenizer.model"), "rb") as fa, \
      open(os.path.join(runs["b"], "tokenizer.model"), "rb") as fb:
    assert fa.read() == fb.read()
  pa = _final_params(runs["config"], runs["a"])
  pb = _final_params(runs["config"], runs["b"])
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(y, x, err_msg=trainer.path_str(path))
  assert runs["results_a"] == runs["results_b"] == {}


def test_checkpoint_restores_onto_another_mesh(runs):
  """Saved FSDP-sharded over 8 devices, restored onto 1 device and onto a (2, 2, 2) mesh."""
  reference = _final_params(runs["config"], runs["a"])
  for mesh in (single_device_mesh(), sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))):
    params = _final_params(runs["config"], runs["a"], mesh=mesh, host=False)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(reference), jax.tree.leaves(params)):
      assert y.sharding.mesh.shape == mesh.shape, trainer.path_str(path)
      np.testing.assert_array_equal(np.asarray(y), x, err_msg=trainer.path_str(path))
