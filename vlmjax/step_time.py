"""Interleaved train-step timing of several configs, for relative speed on a shared machine.

  python -m vlmjax.step_time --config configs/vlm_ntp.py --config configs/vlm_ntp.py:tome \\
      --config configs/vlm_ntp.py:pdrop [--steps 5 --rounds 6]

Each config's real train step (trainer.create_train_state / make_train_step, its objectives) runs
on a fixed synthetic batch of its input shapes (random images and caption tokens in the decoder
layout); after compiling, the configs take turns, `steps` steps each per round, so load on the
machine falls on all of them alike. Prints the median seconds per step of each, examples/s and the
speedup over the first config. Only relative numbers mean anything on a shared machine.
"""
import statistics
import time

from absl import app, flags
import jax
import numpy as np

from vlmjax import config as config_lib, cpu_memory, sharding, trainer
from vlmjax.data.pipeline import caption_sequence
from vlmjax.data.tokenizer import BOS, EOS
from vlmjax.metrics import quiet_absl_logging

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("config", [], "Config file[:arg], repeated; the first is the baseline.")
flags.DEFINE_integer("steps", 5, "Steps per config per round.")
flags.DEFINE_integer("rounds", 6, "Rounds of turns.")
flags.DEFINE_integer("vocab_size", 256, "Tokenizer size assumed for the synthetic tokens.")


def synthetic_batch(config, model, vocab_size: int, seed: int = 0) -> dict:
  """A batch of the shapes and layout the config's decoder preprocess makes (captions of 8 to
  max_text_len − 2 random pieces)."""
  rng = np.random.default_rng(seed)
  size, length = config.input.image_size, config.input.max_text_len
  examples = []
  for _ in range(config.batch_size):
    pieces = rng.integers(4, vocab_size, rng.integers(8, length - 1))
    text = np.zeros(length, np.int32)
    text[:len(pieces) + 2] = [BOS, *pieces, EOS]
    examples.append(caption_sequence(text, model.num_image_tokens(size)))
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  batch["image"] = rng.uniform(-1, 1, (config.batch_size, size, size, 3)).astype(np.float32)
  return batch


def build(spec: str, mesh, vocab_size: int):
  path, _, arg = spec.partition(":")
  config = config_lib.load_file(path, arg or None)
  config.init.workdir = ""  # timing only: random params
  model = trainer.build_model(config, vocab_size)
  objectives = trainer.build_objectives(config)
  for _, objective in objectives.values():
    if hasattr(objective, "log_prior"):  # VLAP: a uniform word prior is enough to time it
      objective.log_prior = np.full(vocab_size, -np.log(vocab_size), np.float32)
  tx, schedule = trainer.make_optimizer(config.optimizer, config.total_steps)
  rules = sharding.rules_from_config(config.sharding_rules)
  state, shardings = trainer.create_train_state(model, tx, trainer.sample_batch(config), config.seed, mesh, rules)
  step = trainer.make_train_step(model, objectives, tx, schedule, mesh, shardings)
  batch = sharding.global_batch(synthetic_batch(config, model, vocab_size), mesh)
  return config, state, step, batch


def main(argv):
  del argv
  quiet_absl_logging()
  if not FLAGS.config:
    raise app.UsageError("give at least one --config")
  mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
  runs = []
  for spec in FLAGS.config:
    config, state, step, batch = build(spec, mesh, FLAGS.vocab_size)
    start = time.perf_counter()
    with jax.set_mesh(mesh):
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
    print(f"{spec}: compiled and ran one step in {time.perf_counter() - start:.1f} s", flush=True)
    runs.append({"spec": spec, "config": config, "state": state, "step": step, "batch": batch, "times": []})
  for _ in range(FLAGS.rounds):
    for run in runs:
      start = time.perf_counter()
      with jax.set_mesh(mesh):
        for _ in range(FLAGS.steps):
          run["state"], metrics = run["step"](run["state"], run["batch"])
        jax.block_until_ready(metrics)
      run["times"].append((time.perf_counter() - start) / FLAGS.steps)
  base = statistics.median(runs[0]["times"])
  # tokens/s: decoder sequence positions (image slots included) per second, where the batch has tokens
  print("| config | s/step (median) | examples/s | tokens/s | speedup |\n|---|---|---|---|---|")
  for run in runs:
    t = statistics.median(run["times"])
    examples = run["config"].batch_size / t
    tokens = f"{examples * run['batch']['tokens'].shape[1]:.0f}" if "tokens" in run["batch"] else "—"
    print(f"| {run['spec']} | {t:.3f} | {examples:.1f} | {tokens} | {base / t:.2f}× |")


if __name__ == "__main__":
  cpu_memory.retain_freed_memory()  # before JAX starts its backends
  jax.config.config_with_absl()
  app.run(main)
