"""Metric writers (TensorBoard event files and metrics.jsonl) and the console progress bar.

Only process 0 writes. Each record is `{'step': int, name: float, ...}`.
"""
import json
import os
import time

import jax
import numpy as np
import tqdm


class MetricWriter:

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter  # protobuf only, no TensorFlow
      os.makedirs(workdir, exist_ok=True)
      self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
    self.jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self.jsonl.flush()
    for name, value in scalars.items():
      self.tensorboard.add_scalar(name, value, int(step))
    self.tensorboard.flush()

  def close(self):
    if self.enabled:
      self.jsonl.close()
      self.tensorboard.close()


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def drop_metrics_after(workdir: str, step: int):
  """Removes metrics.jsonl records past `step`: what a killed run logged after its last checkpoint,
  which the resumed run logs again (so each step appears once), and a line a kill cut short.
  TensorBoard's event files keep both."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  keep = []
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if record.get("step", 0) <= step:
      keep.append(line if line.endswith("\n") else line + "\n")
  if len(keep) < len(lines):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.writelines(keep)
    os.replace(path + ".tmp", path)


class Progress:
  """A progress bar showing loss, examples/s and ETA (tqdm computes the ETA from steps/s)."""

  def __init__(self, start_step: int, total_steps: int, batch_size: int, enabled: bool = True):
    self.batch_size = batch_size
    self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                         disable=not enabled or jax.process_index() != 0, smoothing=0.1)
    self.last_time, self.last_step = time.perf_counter(), start_step
    self.examples_per_sec = 0.0

  def update(self, step: int, loss: float) -> float:
    """Advances the bar to `step`; returns examples/s since the last update."""
    now = time.perf_counter()
    if step > self.last_step:
      self.examples_per_sec = (step - self.last_step) * self.batch_size / max(now - self.last_time, 1e-9)
    self.bar.set_postfix(loss=f"{loss:.4f}", ex_per_s=f"{self.examples_per_sec:.0f}", refresh=False)
    self.bar.update(step - self.bar.n)
    self.last_time, self.last_step = now, step
    return self.examples_per_sec

  def close(self):
    self.bar.close()


def quiet_absl_logging():
  """Command-line entry points log warnings and up unless --verbosity is given: the console is for
  the progress bar and results, not orbax's and tfds's INFO lines."""
  from absl import flags, logging
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
