"""Metric writers (TensorBoard event files and metrics.jsonl), the console progress bar, and
throughput: a measured matmul peak and model FLOPs utilisation (MFU).

Only process 0 writes. Each record is `{'step': int, name: float, ...}`.
"""
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


class MetricWriter:
  """Appends records to a JSON-lines file and to TensorBoard event files in `tensorboard_dir`."""

  def __init__(self, jsonl_path: str, tensorboard_dir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter  # protobuf only, no TensorFlow
      os.makedirs(os.path.dirname(os.path.abspath(jsonl_path)), exist_ok=True)
      self.jsonl = open(jsonl_path, "a", encoding="utf-8")
      self.tensorboard = SummaryWriter(tensorboard_dir)

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


def measure_matmul_peak(devices=None, dtype="float32", sizes=(512, 1024, 2048, 4096, 8192, 16384),
                        min_seconds: float = 0.2, repeats: int = 3) -> dict:
  """The best FLOP/s of a jitted square matmul run on every device at once.

  One [n, n] @ [n, n] per device (a [D, n, n] batch sharded over `devices`, default all), for n in
  `sizes` until a call takes over `min_seconds` (larger n reach the peak; on a CPU a call is slow long
  before that). Each size: a warm-up call, then the best of `repeats` timed calls.
  Returns {'flops_per_sec': best total over the devices, 'per_device': that / D, 'size': its n,
  'by_size': {n: total FLOP/s}, 'dtype': dtype, 'devices': D, 'cpu_time_flops_per_sec': the best
  FLOPs per second of this process's CPU time (on a CPU backend, a rate other processes barely move)}.
  """
  devices = jax.devices() if devices is None else list(devices)
  mesh = Mesh(np.asarray(devices), ("d",))
  spec = NamedSharding(mesh, P("d"))
  matmul = jax.jit(lambda a, b: jnp.einsum("dij,djk->dik", a, b), out_shardings=spec)
  by_size, by_cpu_time = {}, {}
  for n in sizes:
    make = jax.jit(lambda key, n=n: jax.random.normal(key, (2, len(devices), n, n), dtype), out_shardings=
                   NamedSharding(mesh, P(None, "d")))
    a, b = make(jax.random.PRNGKey(n))
    matmul(a, b).block_until_ready()
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
      start, start_cpu = time.perf_counter(), time.process_time()
      matmul(a, b).block_until_ready()
      best = min(best, time.perf_counter() - start)
      best_cpu = min(best_cpu, time.process_time() - start_cpu)
    by_size[n] = 2.0 * n ** 3 * len(devices) / best
    by_cpu_time[n] = 2.0 * n ** 3 * len(devices) / max(best_cpu, 1e-9)
    del a, b
    if best > min_seconds:
      break
  size = max(by_size, key=by_size.get)
  return {"flops_per_sec": by_size[size], "per_device": by_size[size] / len(devices), "size": size,
          "by_size": by_size, "dtype": str(jnp.dtype(dtype)), "devices": len(devices),
          "cpu_time_flops_per_sec": max(by_cpu_time.values())}


def mfu(model_flops_per_sec: float, peak_flops_per_sec: float) -> float:
  """Model FLOPs utilisation: achieved model FLOP/s over the peak FLOP/s of the same devices."""
  return model_flops_per_sec / peak_flops_per_sec


@functools.lru_cache(maxsize=None)
def _peak_per_device(dtype: str, declared: float) -> float:
  if declared > 0:
    return declared
  return measure_matmul_peak(jax.local_devices(), dtype, min_seconds=0.05)["per_device"]


@functools.lru_cache(maxsize=None)
def _flops_per_step(model_json: str, shapes: tuple) -> float:
  import ml_collections
  from vlmjax import flops
  return float(flops.train_step_flops(ml_collections.ConfigDict(json.loads(model_json)), dict(shapes)))


def throughput_metrics(config, batch: dict, examples_per_sec: float) -> dict:
  """{'model_flops_per_sec', 'mfu'} for a training log line, from the analytic FLOPs of a step on
  `batch` (vlmjax.flops) and the peak: `config.peak_flops_per_device` if > 0, else a matmul peak
  measured once on the local devices in the compute dtype (no MFU if < 0). {} for a model without
  an analytic FLOP count. MFU is a ratio within one run: on a shared machine both terms are noisy.
  """
  shapes = tuple(sorted((k, tuple(np.shape(v))) for k, v in batch.items()))
  try:
    step_flops = _flops_per_step(config.model.to_json(), shapes)
  except ValueError:  # no analytic count for this model
    return {}
  model_flops_per_sec = step_flops * examples_per_sec / config.batch_size
  out = {"model_flops_per_sec": model_flops_per_sec}
  if config.peak_flops_per_device >= 0:
    peak = _peak_per_device(config.precision.compute_dtype, float(config.peak_flops_per_device))
    out["mfu"] = mfu(model_flops_per_sec, peak * jax.device_count())
  return out
