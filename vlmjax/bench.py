"""Benchmarks, written as JSON + markdown reports.

  python -m vlmjax.bench --config configs/demo.py [--config.batch_size=64] --out benchmarks
      The real train step (trainer.create_train_state / make_train_step) on synthetic batches, no
      dataset: compile time, steps/s, examples/s, model FLOPs per step (analytic, vlmjax.flops)
      against XLA's count, achieved FLOP/s and MFU against a matmul peak measured in the same run,
      and the step's memory (compiled.memory_analysis()). -> OUT/<config name>.{json,md}

  python -m vlmjax.bench --losses --out benchmarks [--loss_batch_sizes=1024,2048,4096]
      Per-device temporary memory of the gradient of each contrastive loss form (CLIP global/local,
      SigLIP global/ring) at three global batch sizes, on 8 devices and with a fixed per-device
      batch on 2/4/8 devices; compiled, never run. -> OUT/losses.{json,md}
      On a CPU the 8 devices are faked: this command sets XLA_FLAGS
      (--xla_force_host_platform_device_count=8) and JAX_PLATFORMS=cpu before jax starts (a
      JAX_PLATFORMS already set is kept).

MFU is a ratio of two numbers measured within one run (the step time and the matmul peak, timed
right before and after the steps), so on a shared machine both move together; absolute steps/s do not.
"""
import os
import sys

LOSS_DEVICES = 8

if __name__ == "__main__" and "--losses" in sys.argv[1:]:
  # Fake CPU devices must be requested before jax initialises its backends, i.e. before the import.
  os.environ["XLA_FLAGS"] = " ".join(
      f for f in (os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={LOSS_DEVICES}") if f)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vlmjax import config as config_lib, cpu_memory, flops as flops_lib, metrics, registry, sharding, trainer  # noqa: E402
from vlmjax.models import layers  # noqa: E402
from vlmjax.models.text import TextTransformer  # noqa: E402
from vlmjax.models.vit import ViT  # noqa: E402

FLAGS = flags.FLAGS

# (objective, `distributed` form) pairs of the loss benchmark, as a config would name them.
LOSS_FORMS = (("clip", "global"), ("clip", "local"), ("siglip", "global"), ("siglip", "ring"))

# Batch fields objectives ask for beyond image/text, and how many texts per example they hold.
NEGATIVES_PER_EXAMPLE = 3  # the built-in dataset's negative captions (attribute, relation, count)


# ----------------------------------------------------------------------------------------- train step

def synthetic_batch(config, fields=(), seed: int = 0) -> dict:
  """A global numpy batch with the shapes the input pipeline gives: images uniform in [-1, 1],
  captions of random token ids and random lengths (BOS ... EOS, then padding), plus the extra
  `fields` objectives ask for (image_view2, text_view2, negative_text, multi_text)."""
  rng = np.random.default_rng(seed)
  size, length, batch = config.input.image_size, config.input.max_text_len, config.batch_size
  vocab = config.tokenizer.vocab_size

  def texts(*lead):
    tokens = rng.integers(4, vocab, size=(*lead, length), dtype=np.int32)
    lengths = rng.integers(3, length + 1, size=lead)
    positions = np.arange(length)
    tokens[..., 0] = 2                                                          # BOS
    tokens = np.where(positions == (lengths - 1)[..., None], 3, tokens)         # EOS
    return np.where(positions < lengths[..., None], tokens, 0).astype(np.int32)

  images = lambda: rng.uniform(-1, 1, size=(batch, size, size, 3)).astype(np.float32)
  out = {"image": images(), "text": texts(batch)}
  makers = {"image_view2": images, "text_view2": lambda: out["text"],
            "negative_text": lambda: texts(batch, NEGATIVES_PER_EXAMPLE),
            "multi_text": lambda: texts(batch, config.input.subcaptions + 1)}
  for field in fields:
    if field not in makers:
      raise ValueError(f"bench: no synthetic data for the batch field '{field}' an objective asks for "
                       f"(known: {', '.join(makers)})")
    out[field] = makers[field]()
  return out


def _memory(compiled) -> dict:
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
           "generated_code_size_in_bytes", "peak_memory_in_bytes")
  return {name.removesuffix("_in_bytes"): int(getattr(stats, name)) for name in names if hasattr(stats, name)}


def _xla_flops(compiled, num_devices: int) -> float:
  """XLA's FLOP count of a compiled step, for all devices: its cost analysis is of one device's
  (SPMD-partitioned) program."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list per device on older jax
  return num_devices * float(cost.get("flops", float("nan"))) if cost else float("nan")


def _unscanned(config):
  """A copy of `config` whose towers run their layers in a Python loop instead of `nn.scan`."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for tower in ("image", "text"):
      if tower in config.model:
        config.model[tower].scan = False
  return config


def _build_step(config, mesh):
  rules = sharding.rules_from_config(config.sharding_rules)
  model = trainer.build_model(config, config.tokenizer.vocab_size)
  objectives = trainer.build_objectives(config)
  tx, schedule = trainer.make_optimizer(config.optimizer, config.total_steps)
  return model, objectives, tx, schedule, rules


def bench_train_step(config, steps: int = 10, warmup: int = 2, repeats: int = 3, devices=None,
                     xla_unrolled: bool = True, peak_seconds: float = 0.5, profile_layer: bool = False) -> dict:
  """Compiles and times the config's train step on a synthetic batch; returns the report's fields.

  `devices`: the mesh's devices (default all); `peak_seconds`: the matmul probe grows its size until
  one call takes this long (`metrics.measure_matmul_peak`); `profile_layer`: add `layer_profile`.
  """
  if steps < 1 or repeats < 1 or warmup < 0:
    raise ValueError(f"bench: --steps ({steps}) and --repeats ({repeats}) must be >= 1, --warmup >= 0")
  try:
    mesh = sharding.make_mesh(config.mesh, devices)
  except ValueError as e:
    raise config_lib.ConfigError(f"config: {e}") from None
  config_lib.validate(config, mesh.size, sharding.batch_axes_size(mesh))
  model, objectives, tx, schedule, rules = _build_step(config, mesh)
  fields = sorted({f for _, objective in objectives.values() for f in getattr(objective, "batch_fields", ())})
  host_batch = synthetic_batch(config, fields, config.seed)
  batch = sharding.global_batch(host_batch, mesh)
  shapes = {k: v.shape for k, v in host_batch.items()}
  analytic = flops_lib.dual_encoder_flops(config.model, shapes)
  make_step = lambda model, shardings: trainer.make_train_step(
      model, objectives, tx, schedule, mesh, shardings, microbatches=config.microbatches)

  load_start = os.getloadavg()
  state, shardings = trainer.create_train_state(model, tx, trainer.sample_batch(config), config.seed, mesh, rules)
  train_step = make_step(model, shardings)
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    lowered = train_step.lower(state, batch)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
  xla_as_run = _xla_flops(compiled, mesh.size)

  peaks = [metrics.measure_matmul_peak(mesh.devices.flat, "float32", min_seconds=peak_seconds)]
  with jax.set_mesh(mesh):
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

  xla_unrolled_flops, unrolled_compile_s = None, None
  towers = {t: flops_lib.tower_settings(config.model.get(t, {}), cls) for t, cls in (("image", ViT), ("text", TextTransformer))}
  # XLA counts a loop's body once: its count of the step as compiled is complete only where no tower
  # loops over its layers (not scanned, one layer, or `unroll` >= depth).
  looped = any(t["scan"] and 1 < t["depth"] and t["unroll"] < t["depth"] for t in towers.values())
  as_run_complete = not looped
  if xla_unrolled and looped:
    unrolled = _unscanned(config)
    model_u = _build_step(unrolled, mesh)[0]
    abstract, shardings_u = trainer.abstract_train_state(model_u, tx, trainer.sample_batch(unrolled), mesh, rules)
    with jax.set_mesh(mesh):
      start_u = time.perf_counter()
      xla_unrolled_flops = _xla_flops(make_step(model_u, shardings_u).lower(abstract, batch).compile(),
                                        mesh.size)
      unrolled_compile_s = time.perf_counter() - start_u
  xla_reference = xla_unrolled_flops if xla_unrolled_flops is not None else (
      xla_as_run if as_run_complete else None)

  best, median = min(times), statistics.median(times)
  step_flops = analytic["train_step"]
  return {
      "config": {"batch_size": config.batch_size, "image_size": config.input.image_size,
                 "max_text_len": config.input.max_text_len, "compute_dtype": compute_dtype,
                 "model": config.model.to_dict(), "objectives": sorted(config.objectives),
                 "mesh": dict(mesh.shape), "batch_fields": fields},
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
      "memory_per_device": _memory(compiled),
      "layer_profile": layer_profile(config, repeats) if profile_layer else None,
      "environment": _environment(mesh.devices.flat, load_start),
  }


def _best_times(fn, args, repeats: int) -> tuple[float, float]:
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
    wall, cpu = _best_times(jax.jit(jax.grad(loss, argnums=(0, 1))), (params, x, cotangent), repeats)
    rows.append({"part": name, "matmul_flops": matmul_flops, "wall_s": wall, "cpu_s": cpu,
                 "cpu_time_flops_per_sec": matmul_flops / cpu})
  return rows


def _environment(devices, load_start) -> dict:
  devices = list(devices)
  return {"jax": jax.__version__, "backend": jax.default_backend(), "devices": len(devices),
          "device_kind": devices[0].device_kind, "cpu": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "load_average_start": list(load_start),
          "load_average_end": list(os.getloadavg()),
          "malloc_retains_freed_memory": cpu_memory.retained,
          "date": datetime.datetime.now().isoformat(timespec="seconds")}


def _g(x, unit=1e9):
  return "n/a" if x is None else f"{x / unit:,.2f}"


def _mib(x):
  return f"{x / 2**20:,.1f}"


def train_step_markdown(name: str, r: dict) -> str:
  env, fl, mem, cfg = r["environment"], r["flops"], r["memory_per_device"], r["config"]
  peak = r["peak_f32"]
  lines = [
      f"# Train-step benchmark: {name}", "",
      f"{env['date']}, jax {env['jax']}, {env['devices']} × {env['device_kind']} ({env['backend']}, "
      f"{env['cpu_count']} CPU cores), load average {env['load_average_start'][0]:.2f} at the start, "
      f"{env['load_average_end'][0]:.2f} at the end. glibc malloc keeps freed memory "
      f"(`vlmjax.cpu_memory`): {'yes' if env.get('malloc_retains_freed_memory') else 'no'}.", "",
      f"Batch {cfg['batch_size']}, images {cfg['image_size']}², text length {cfg['max_text_len']}, "
      f"compute dtype {cfg['compute_dtype']}, objectives {', '.join(cfg['objectives'])}, "
      f"mesh {cfg['mesh']}. Synthetic batches; {r['warmup']} warm-up steps, then {r['repeats']} × "
      f"{r['steps']} timed steps (best repeat, median in brackets).", "",
      "| metric | value |", "|---|---|",
      f"| trace + lower / XLA compile | {r['lower_s']:.1f} s / {r['compile_s']:.1f} s |",
      f"| steps/s | {r['steps_per_sec']:.3f} ({r['steps_per_sec_median']:.3f}) |",
      f"| examples/s | {r['examples_per_sec']:.1f} ({r['examples_per_sec_median']:.1f}) |",
      f"| model GFLOP per step, analytic | {_g(fl['analytic_per_step'])} |",
      "| XLA GFLOP per step, layers unrolled | " + (
          _g(fl["xla_per_step_unrolled"]) if fl["xla_per_step_unrolled"] is not None or fl["analytic_over_xla"] is None
          else "not needed (no layer loop: the count as compiled is complete)") + " |",
      f"| XLA GFLOP per step, as compiled (a layer loop's body counted once) | "
      f"{_g(fl['xla_per_step_as_compiled'])} |",
      "| analytic / XLA | " + (f"{fl['analytic_over_xla']:.3f}" if fl["analytic_over_xla"] else
                               "n/a (scanned layers: run with --xla_unrolled)") + " |",
      f"| achieved model GFLOP/s | {_g(r['model_flops_per_sec'])} ({_g(r['model_flops_per_sec_median'])}) |",
      f"| f32 matmul peak, GFLOP/s (n = {peak['size']}, best of {len(r['peaks_f32_measured'])} probes) | "
      f"{_g(peak['flops_per_sec'])} |",
      f"| **MFU** (of the measured f32 matmul peak) | **{r['mfu']:.1%}** ({r['mfu_median']:.1%}) |",
  ]
  if env["backend"] == "cpu":
    lines.append(f"| MFU by this process's CPU time (step vs. matmul probe) | {r['mfu_cpu_time']:.1%} |")
  if cfg["compute_dtype"] != "float32":
    lines.append(f"| {cfg['compute_dtype']} matmul peak GFLOP/s / MFU of it | "
                 f"{_g(r['peak_compute_dtype']['flops_per_sec'])} / {r['mfu_compute_dtype']:.1%} |")
  lines += [f"| memory per device: arguments / outputs (of which aliased to the donated state) / "
            f"temporaries, MiB | {_mib(mem.get('argument_size', 0))} / {_mib(mem.get('output_size', 0))} "
            f"({_mib(mem.get('alias_size', 0))}) / {_mib(mem.get('temp_size', 0))} |"]
  lines += ["", "Analytic forward GFLOP by part (a train step is 3 × forward):", "", "| part | GFLOP |", "|---|---|"]
  lines += [f"| {k} | {_g(v)} |" for k, v in fl["analytic_parts_forward"].items() if k != "train_step"]
  if r.get("layer_profile"):
    probe = max(r["peaks_f32_measured_cpu_time"])
    lines += ["", "One image-tower block, forward + backward at this batch (the real `layers` modules), "
              "by this process's CPU time; matmul efficiency = matmul GFLOP per CPU-second over the "
              "f32 matmul probe's:", "",
              "| part | matmul GFLOP | CPU ms | wall ms | matmul efficiency |", "|---|---|---|---|---|"]
    lines += [f"| {row['part']} | {_g(row['matmul_flops'])} | {row['cpu_s'] * 1e3:,.1f} | {row['wall_s'] * 1e3:,.1f} | "
              + (f"{row['cpu_time_flops_per_sec'] / probe:.0%}" if row["matmul_flops"] else "–") + " |"
              for row in r["layer_profile"]]
  lines += ["", "f32 matmul probe (GFLOP/s by size, all devices):",
            " ".join(f"n={n}: {_g(v)};" for n, v in peak["by_size"].items()), "",
            "MFU is a ratio measured within one run: the matmul peak is probed right before and right "
            "after the timed steps and the best probe is the denominator. On a CPU shared with other "
            "processes the wall-clock terms still move unevenly; the CPU-time MFU (model FLOPs per second "
            "of this process's CPU time, step over probe) is the steadier figure there, and errs low "
            "(idle thread-pool spinning counts as CPU time).", ""]
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------- losses

def loss_fn(name: str, distributed: str):
  """The registered objective's loss as a function of (image_embeds, text_embeds, θ, bias), built
  exactly as a config builds it (`objectives.<name>.distributed`)."""
  objective = registry.get("objective", name)(distributed=distributed)

  def loss(image_embeds, text_embeds, logit_scale, logit_bias):
    outputs = {"image_embeds": image_embeds, "text_embeds": text_embeds, "logit_scale": logit_scale,
               "logit_bias": logit_bias}
    return objective(outputs, {})[0]

  return loss


def loss_memory(name: str, distributed: str, batch_size: int, embed_dim: int, devices) -> dict:
  """Compiles jit(value_and_grad) of the loss with respect to both embeddings, sharded over the
  batch on a (data=1, fsdp=len(devices)) mesh; returns its per-device memory (nothing runs)."""
  mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1), list(devices))
  if batch_size % mesh.size:
    raise ValueError(f"bench: loss batch size {batch_size} is not divisible by {mesh.size} devices")
  step = jax.jit(jax.value_and_grad(loss_fn(name, distributed), argnums=(0, 1)))
  embeds = jax.ShapeDtypeStruct((batch_size, embed_dim), jnp.float32,
                                sharding=NamedSharding(mesh, P(sharding.MESH_AXES[:2])))
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
  with jax.set_mesh(mesh):
    compiled = step.lower(embeds, embeds, scalar, scalar).compile()
  return _memory(compiled)


def bench_losses(batch_sizes=(1024, 2048, 4096), embed_dim: int = 256, num_devices: int = LOSS_DEVICES,
                 forms=LOSS_FORMS) -> dict:
  """Temporary memory per device of each loss form's gradient: on `num_devices` devices at each
  global batch size ('fixed_devices'), and with the per-device batch fixed at
  max(batch_sizes) / num_devices on proportionally fewer devices ('fixed_per_device_batch').
  `forms`: (objective, distributed) pairs."""
  batch_sizes = [int(b) for b in batch_sizes]
  if len(batch_sizes) < 2:
    raise ValueError(f"bench: give at least two loss batch sizes, got {batch_sizes}")
  if len(jax.devices()) < num_devices:
    raise RuntimeError(f"bench: the loss benchmark needs {num_devices} devices, jax sees {len(jax.devices())}; "
                       f"run it as `python -m vlmjax.bench --losses` (which fakes them on a CPU) or set "
                       f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} before jax starts")
  if any(b2 != 2 * b1 for b1, b2 in zip(batch_sizes, batch_sizes[1:])):
    raise ValueError(f"bench: loss batch sizes must each double the last, got {batch_sizes}")
  per_device = batch_sizes[-1] // num_devices
  device_counts = [b // per_device for b in batch_sizes]
  if any(b % per_device or n < 1 for b, n in zip(batch_sizes, device_counts)):
    raise ValueError(f"bench: batch sizes {batch_sizes} do not split into {per_device} per device on "
                     f"{num_devices} or fewer devices")
  devices = jax.devices()[:num_devices]
  load_start = os.getloadavg()
  results = []
  for name, distributed in forms:
    fixed = [loss_memory(name, distributed, b, embed_dim, devices) for b in batch_sizes]
    weak = [loss_memory(name, distributed, b, embed_dim, devices[:n]) for b, n in zip(batch_sizes, device_counts)]
    temp = lambda runs: [r["temp_size"] for r in runs]
    growth = lambda t: [b / a for a, b in zip(t, t[1:])]
    results.append({"objective": name, "distributed": distributed,
                  "fixed_devices": {"temp_bytes": temp(fixed), "growth_per_doubling": growth(temp(fixed)),
                                    "memory": fixed},
                  "fixed_per_device_batch": {"temp_bytes": temp(weak), "growth_per_doubling": growth(temp(weak)),
                                             "memory": weak}})
  return {"batch_sizes": batch_sizes, "embed_dim": embed_dim, "num_devices": num_devices,
          "per_device_batch": per_device, "device_counts": device_counts, "forms": results,
          "environment": _environment(devices, load_start)}


def losses_markdown(r: dict) -> str:
  env, sizes = r["environment"], r["batch_sizes"]
  header = "| loss | form | " + " | ".join(f"B = {b}" for b in sizes) + " | growth per doubling |"
  rule = "|---|---|" + "---|" * len(sizes) + "---|"

  def table(key, caption):
    rows = [caption, "", header, rule]
    for f in r["forms"]:
      cell = f[key]
      rows.append(f"| {f['objective']} | {f['distributed']} | " + " | ".join(_mib(t) for t in cell["temp_bytes"])
                  + " | " + ", ".join(f"×{g:.2f}" for g in cell["growth_per_doubling"]) + " |")
    return rows

  lines = [
      "# Contrastive loss memory", "",
      f"{env['date']}, jax {env['jax']}, {env['backend']} devices ({env['device_kind']}). "
      f"`compiled.memory_analysis().temp_size_in_bytes` (MiB per device) of "
      f"`jax.jit(jax.value_and_grad(loss, argnums=(image_embeds, text_embeds)))`, embeddings "
      f"[B, {r['embed_dim']}] float32 sharded over the batch; the losses are the registered objectives "
      "built with `distributed=...`. Compiled only, never run.", ""]
  lines += table("fixed_devices", f"On {r['num_devices']} devices (per-device batch b = B / {r['num_devices']}):")
  lines += [""]
  lines += table("fixed_per_device_batch",
                 f"With the per-device batch fixed at b = {r['per_device_batch']}, on "
                 f"{' / '.join(map(str, r['device_counts']))} devices:")
  lines += ["", "Per-device sizes the forms are built around: CLIP global one [B, B] logit matrix (GSPMD may "
            "split its rows over devices), CLIP local [b, B] rows; SigLIP global [B, B], SigLIP ring one [b, b] "
            "block per hop. ×2 per doubling is linear growth, ×4 quadratic.", ""]
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI

def define_flags():
  """The command line's flags; defined only when run as a program, so that importing this module
  (tests, notebooks) never clashes with vlmjax.train's --config."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file (path.py[:arg]) to benchmark.",
                                  lock_config=True)
  flags.DEFINE_string("out", None, "Folder for the JSON and markdown reports.")
  flags.DEFINE_string("name", None, "Report file name (default: the config file's name, or 'losses').")
  flags.DEFINE_integer("steps", 10, "Timed train steps per repeat.")
  flags.DEFINE_integer("warmup", 2, "Untimed train steps after compiling.")
  flags.DEFINE_integer("repeats", 3, "Timed repeats of --steps steps; the best and the median are reported.")
  flags.DEFINE_bool("xla_unrolled", True, "Also compile the step with unscanned layers for XLA's FLOP "
                    "count (XLA counts a scanned layer's body once).")
  flags.DEFINE_bool("profile_layer", False, "Add a forward + backward profile of one image-tower block "
                    "and its parts, with tanh-GELU and bfloat16 what-ifs.")
  flags.DEFINE_bool("losses", False, "Benchmark the contrastive losses' memory instead of a train step.")
  flags.DEFINE_list("loss_batch_sizes", ["1024", "2048", "4096"], "Global batch sizes, each double the last.")
  flags.DEFINE_integer("loss_embed_dim", 256, "Embedding width for the loss benchmark.")


def write_report(out: str, name: str, result: dict, markdown: str) -> tuple[str, str]:
  os.makedirs(out, exist_ok=True)
  json_path, md_path = os.path.join(out, f"{name}.json"), os.path.join(out, f"{name}.md")
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1, default=str)
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(markdown)
  return json_path, md_path


def fail(message) -> None:
  """One line on stderr naming the culprit, exit status 2."""
  text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
  print(f"vlmjax.bench: error: {text}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl parsing with errors in --config / --config.key=value as one line naming the argument."""
  try:
    return FLAGS(argv)
  except Exception as e:  # absl and ml_collections raise many types for bad arguments
    message = str(e).splitlines()[-1] if str(e).strip() else type(e).__name__
    named = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
             and a.split("=")[0].rsplit(".", 1)[-1] in str(e)]
    if isinstance(e, AttributeError) and named:
      fail(f"config: unknown key '{named[0].removeprefix('--config.')}'")
    fail(f"{named[0] + ': ' if named else ''}{message}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  metrics.quiet_absl_logging()
  if not FLAGS.out:
    fail("--out is required")
  if FLAGS.losses == (FLAGS.config is not None):
    fail("give either --config (train-step benchmark) or --losses (loss memory benchmark)")
  try:
    if FLAGS.losses:
      result = bench_losses([int(b) for b in FLAGS.loss_batch_sizes], FLAGS.loss_embed_dim)
      paths = write_report(FLAGS.out, FLAGS.name or "losses", result, losses_markdown(result))
    else:
      name = FLAGS.name or re.sub(r"\.py$", "", os.path.basename(config_flags.get_config_filename(FLAGS["config"])))
      result = bench_train_step(FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.repeats,
                                xla_unrolled=FLAGS.xla_unrolled, profile_layer=FLAGS.profile_layer)
      paths = write_report(FLAGS.out, name, result, train_step_markdown(name, result))
  except (config_lib.ConfigError, registry.RegistryError, ValueError, RuntimeError, OSError) as e:
    fail(e)
  print_report(paths)


def print_report(paths):
  """Prints the markdown report written by `write_report` (paths: its (json, markdown) paths)."""
  with open(paths[1], encoding="utf-8") as f:
    print(f.read())
  print(f"Wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
  cpu_memory.retain_freed_memory()  # before JAX starts its backends
  define_flags()
  jax.config.config_with_absl()
  app.run(main, flags_parser=parse_flags)
