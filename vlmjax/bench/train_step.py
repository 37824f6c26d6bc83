"""The train-step benchmark: a config's real step on synthetic batches, timed, counted and sized.

The experiment (`vlmjax.experiment.build`) gives the same state and jitted step `vlmjax.train` runs;
its synthetic batch has the input pipeline's shapes, so no dataset is needed. Measured: compile
time, steps/s, examples/s, the analytic model FLOPs (`vlmjax.flops`) against XLA's count, achieved
FLOP/s, MFU against a matmul peak probed in the same run, and the step's memory per device.

MFU is a ratio of two numbers measured within one run (the step time and the matmul peak, probed
right before and after the steps), so on a shared machine both move together; absolute steps/s do not.
"""
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from vlmjax import experiment as experiment_lib, flops as flops_lib, metrics, sharding
from vlmjax.bench import report, xla
from vlmjax.models import layers
from vlmjax.models.text import TextTransformer
from vlmjax.models.vit import ViT


def loops_over_layers(config) -> bool:
  """Whether a tower runs its layers in a loop (scanned, more than one layer, `unroll` < depth):
  then XLA's count of the step as compiled holds the loop's body once, and is incomplete."""
  towers = [flops_lib.tower_settings(config.model.get(t, {}), cls)
            for t, cls in (("image", ViT), ("text", TextTransformer))]
  return any(t["scan"] and 1 < t["depth"] and t["unroll"] < t["depth"] for t in towers)


def unrolled_xla_flops(config, mesh, batch) -> tuple[float, float]:
  """-> (XLA's FLOPs of the step of `xla.unrolled(config)` on `batch`, its lower + compile seconds).
  Compiled with an abstract state: nothing runs."""
  unrolled = experiment_lib.build(xla.unrolled(config), config.tokenizer.vocab_size, mesh=mesh, validate=False)
  abstract, shardings = unrolled.abstract_state()
  with unrolled.use_mesh():
    start = time.perf_counter()
    compiled = unrolled.train_step(shardings).lower(abstract, batch).compile()
    return xla.flops(compiled, mesh.size), time.perf_counter() - start


def bench_train_step(config, steps: int = 10, warmup: int = 2, repeats: int = 3, devices=None,
                     xla_unrolled: bool = True, peak_seconds: float = 0.5, profile_layer: bool = False) -> dict:
  """Compiles and times the config's train step on a synthetic batch; returns the report's fields.

  `devices`: the mesh's devices (default all); `peak_seconds`: the matmul probe grows its size until
  one call takes this long (`metrics.measure_matmul_peak`); `profile_layer`: add `layer_profile`.
  """
  if steps < 1 or repeats < 1 or warmup < 0:
    raise ValueError(f"bench: --steps ({steps}) and --repeats ({repeats}) must be >= 1, --warmup >= 0")
  experiment = experiment_lib.build(config, config.tokenizer.vocab_size, devices=devices)
  mesh = experiment.mesh
  host_batch = experiment.synthetic_batch(seed=config.seed)
  batch = sharding.global_batch(host_batch, mesh)
  analytic = flops_lib.dual_encoder_flops(config.model, {k: v.shape for k, v in host_batch.items()})

  load_start = os.getloadavg()
  state, shardings = experiment.init_state()
  with experiment.use_mesh():
    start = time.perf_counter()
    lowered = experiment.train_step(shardings).lower(state, batch)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
  xla_as_run = xla.flops(compiled, mesh.size)

  peaks = [metrics.measure_matmul_peak(mesh.devices.flat, "float32", min_seconds=peak_seconds)]
  with experiment.use_mesh():
    for _ in range(warmup):
      state, step_metrics = compiled(state, batch)
    jax.block_until_ready((state, step_metrics if warmup else None))
    times, cpu_times = [], []
    for _ in range(repeats):
      start_steps, start_cpu = time.perf_counter(), time.process_time()
      for _ in range(steps):
        state, step_metrics = compiled(state, batch)
      jax.block_until_ready((state, step_metrics))
      times.append((time.perf_counter() - start_steps) / steps)
      cpu_times.append((time.process_time() - start_cpu) / steps)
  loss = float(step_metrics["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"bench: the train step's loss is {loss}")
  peaks.append(metrics.measure_matmul_peak(mesh.devices.flat, "float32", min_seconds=peak_seconds))
  peak = max(peaks, key=lambda p: p["flops_per_sec"])
  compute_dtype = str(jnp.dtype(config.precision.compute_dtype))
  compute_peak = peak if compute_dtype == "float32" else metrics.measure_matmul_peak(
      mesh.devices.flat, compute_dtype, min_seconds=peak_seconds)

  looped = loops_over_layers(config)
  xla_unrolled_flops, unrolled_compile_s = None, None
  if xla_unrolled and looped:
    xla_unrolled_flops, unrolled_compile_s = unrolled_xla_flops(config, mesh, batch)
  xla_reference = xla_unrolled_flops if xla_unrolled_flops is not None else (None if looped else xla_as_run)

  best, median = min(times), statistics.median(times)
  step_flops = analytic["train_step"]
  objective_fields = sorted({f.name for _, objective in experiment.objectives.values()
                             for f in getattr(objective, "batch_fields", ())})
  return {
      "config": {"batch_size": config.batch_size, "image_size": config.input.image_size,
                 "max_text_len": config.input.max_text_len, "compute_dtype": compute_dtype,
                 "model": config.model.to_dict(), "objectives": sorted(config.objectives),
                 "mesh": dict(mesh.shape), "batch_fields": objective_fields},
      "lower_s": lowered_at - start, "compile_s": compiled_at - lowered_at,
      "unrolled_compile_s": unrolled_compile_s,
      "steps": steps, "warmup": warmup, "repeats": repeats, "step_times_s": times,
      "steps_per_sec": 1.0 / best, "steps_per_sec_median": 1.0 / median,
      "examples_per_sec": config.batch_size / best, "examples_per_sec_median": config.batch_size / median,
      "final_loss": loss,
      "flops": {"analytic_per_step": step_flops, "analytic_parts_forward": analytic,
                "xla_per_step_as_compiled": xla_as_run, "xla_per_step_unrolled": xla_unrolled_flops,
                "analytic_over_xla": step_flops / xla_reference if xla_reference else None},
      "model_flops_per_sec": step_flops / best, "model_flops_per_sec_median": step_flops / median,
      "peak_f32": peak, "peaks_f32_measured": [p["flops_per_sec"] for p in peaks],
      "peaks_f32_measured_cpu_time": [p["cpu_time_flops_per_sec"] for p in peaks],
      "peak_compute_dtype": compute_peak,
      "mfu": metrics.mfu(step_flops / best, peak["flops_per_sec"]),
      "mfu_median": metrics.mfu(step_flops / median, peak["flops_per_sec"]),
      "mfu_compute_dtype": metrics.mfu(step_flops / best, compute_peak["flops_per_sec"]),
      # On a CPU backend: FLOPs per second of this process's CPU time, step against matmul probe.
      # Other processes on the machine take wall time from both terms unevenly, CPU time far less.
      "step_cpu_times_s": cpu_times,
      "mfu_cpu_time": metrics.mfu(step_flops / min(cpu_times), max(p["cpu_time_flops_per_sec"] for p in peaks)),
      "memory_per_device": xla.memory(compiled),
      "layer_profile": layer_profile(config, repeats) if profile_layer else None,
      "environment": report.environment(mesh.devices.flat, load_start),
  }


def best_times(fn, args, repeats: int) -> tuple[float, float]:
  """(best wall seconds, best CPU seconds of this process) of `fn(*args)` after a warm-up call."""
  jax.block_until_ready(fn(*args))
  wall, cpu = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return min(wall), min(cpu)


def layer_profile(config, repeats: int = 3) -> list[dict]:
  """Where a step's time goes: forward + backward of one image-tower block and of its parts (the real
  `layers` modules) at the config's batch and shapes, and two what-ifs (tanh GELU, bfloat16 compute).

  Each row: {'part', 'matmul_flops' (analytic, forward + backward), 'wall_s', 'cpu_s',
  'cpu_time_flops_per_sec'} for one call.
  """
  image = flops_lib.tower_settings(config.model.get("image", {}), ViT)
  size, p = config.input.image_size, image["patch_size"]
  tokens = (size // p) ** 2 + (1 if image["pool"] == "cls" else 0)
  width, mlp_dim, heads, activation = image["width"], image["mlp_dim"], image["num_heads"], image["activation"]
  dtype = jnp.dtype(config.precision.compute_dtype)
  batch = config.batch_size
  per_layer = flops_lib.transformer_flops(width, 1, mlp_dim, heads, tokens)
  train = lambda *parts: flops_lib.TRAIN_STEP_FACTOR * batch * sum(per_layer[k] for k in parts)
  block = lambda **kw: layers.Block(num_heads=heads, mlp_dim=mlp_dim, **{"activation": activation, "dtype": dtype, **kw})
  parts = [
      ("block", block(), train("attention_proj", "attention_scores", "mlp")),
      ("attention (projections + scores)", layers.Attention(heads, dtype=dtype), train("attention_proj", "attention_scores")),
      ("MLP", layers.Mlp(mlp_dim, activation, dtype=dtype), train("mlp")),
      ("layer norm (one of two)", layers.Norm("layer"), 0),
      ("what if: block with tanh GELU", block(activation="gelu_tanh"), train("attention_proj", "attention_scores", "mlp")),
      ("what if: block in bfloat16", block(dtype=jnp.bfloat16), train("attention_proj", "attention_scores", "mlp")),
  ]
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(keys[0], (batch, tokens, width), jnp.float32)
  cotangent = jax.random.normal(keys[1], (batch, tokens, width), jnp.float32)  # not ones: no algebraic shortcut
  rows = []
  for name, module, matmul_flops in parts:
    params = module.init(keys[2], x)
    # The cotangent is an argument: a captured array would be an HLO constant that XLA folds into.
    loss = lambda params, x, cotangent, module=module: (
        module.apply(params, x).astype(jnp.float32) * cotangent).sum()
    wall, cpu = best_times(jax.jit(jax.grad(loss, argnums=(0, 1))), (params, x, cotangent), repeats)
    rows.append({"part": name, "matmul_flops": matmul_flops, "wall_s": wall, "cpu_s": cpu,
                 "cpu_time_flops_per_sec": matmul_flops / cpu})
  return rows
