"""Interleaved train-step timing of several configs, for relative speed on a shared machine.

  python -m vlmjax.bench.step_time --config configs/vlm_ntp.py --config configs/vlm_ntp.py:tome \\
      --config configs/vlm_ntp.py:pdrop [--steps 5 --rounds 6]

Each config's real train step (`vlmjax.experiment`: its model, objectives and optimizer) runs on a
fixed synthetic batch of its input shapes (`Experiment.synthetic_batch`: random images and captions
in the decoder layout), with random params and the batch split over all devices (fsdp). After
compiling, the configs take turns, `steps` steps each per round, so load on the machine falls on all
of them alike. Prints the median seconds per step of each, examples/s and the speedup over the first
config. Only relative numbers mean anything on a shared machine.
"""
import statistics
import time

from absl import app, flags
import jax
import numpy as np

from vlmjax import cli, config as config_lib, experiment as experiment_lib, sharding
from vlmjax.bench import command
from vlmjax.metrics import quiet_absl_logging

PROGRAM = "bench.step_time"
FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_multi_string("config", [], "Config file[:arg], repeated; the first is the baseline.")
  flags.DEFINE_integer("steps", 5, "Steps per config per round.")
  flags.DEFINE_integer("rounds", 6, "Rounds of turns.")
  flags.DEFINE_integer("vocab_size", 256, "Tokenizer size assumed for the synthetic tokens.")


def build(spec: str, mesh, vocab_size: int):
  """-> (experiment, initial state, jitted step, global batch) of `spec` ('path.py[:arg]')."""
  path, _, arg = spec.partition(":")
  config = config_lib.load_file(path, arg or None)
  config.init.workdir = ""  # timing only: random params
  experiment = experiment_lib.build(config, vocab_size, mesh=mesh)
  for _, objective in experiment.objectives.values():
    # `prepare` (run by vlmjax.train) reads the training data, which timing has none of; what VLAP's
    # step reads from it is a word prior, and a uniform one costs the same.
    if hasattr(objective, "log_prior"):
      objective.log_prior = np.full(vocab_size, -np.log(vocab_size), np.float32)
  state, shardings = experiment.init_state()
  batch = sharding.global_batch(experiment.synthetic_batch(vocab_size), mesh)
  return experiment, state, experiment.train_step(shardings), batch


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  quiet_absl_logging()
  if not FLAGS.config:
    cli.fail(PROGRAM, "give at least one --config")
  mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
  runs = []
  for spec in FLAGS.config:
    try:
      experiment, state, step, batch = build(spec, mesh, FLAGS.vocab_size)
    except command.ERRORS as e:
      cli.fail(PROGRAM, f"{spec}: {e}")
    start = time.perf_counter()
    with experiment.use_mesh():
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
    print(f"{spec}: compiled and ran one step in {time.perf_counter() - start:.1f} s", flush=True)
    runs.append({"spec": spec, "experiment": experiment, "state": state, "step": step, "batch": batch, "times": []})
  for _ in range(FLAGS.rounds):
    for run in runs:
      start = time.perf_counter()
      with run["experiment"].use_mesh():
        for _ in range(FLAGS.steps):
          run["state"], metrics = run["step"](run["state"], run["batch"])
        jax.block_until_ready(metrics)
      run["times"].append((time.perf_counter() - start) / FLAGS.steps)
  base = statistics.median(runs[0]["times"])
  # tokens/s: decoder sequence positions (image slots included) per second, where the batch has tokens
  print("| config | s/step (median) | examples/s | tokens/s | speedup |\n|---|---|---|---|---|")
  for run in runs:
    t = statistics.median(run["times"])
    examples = run["experiment"].batch_size / t
    tokens = f"{examples * run['batch']['tokens'].shape[1]:.0f}" if "tokens" in run["batch"] else "—"
    print(f"| {run['spec']} | {t:.3f} | {examples:.1f} | {tokens} | {base / t:.2f}× |")


if __name__ == "__main__":
  command.run(PROGRAM, main, define_flags)
