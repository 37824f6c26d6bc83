"""The benchmark tools' reports: a measured result (a plain dict) rendered as markdown or text, and
written as a JSON + markdown pair.

The measuring modules (`train_step`, `losses`, `open_clip`, `compile`) return the dicts; everything
that turns one into prose or a table is here, so the measuring code holds no formatting and a report
can be re-rendered from its JSON.
"""
import datetime
import json
import os
import platform
import re

from vlmjax import cpu_memory

# The rows of the open_clip comparison, as its result names them.
VLMJAX_ROW, EAGER_ROW, COMPILED_ROW = "vlmjax", "open_clip eager", "open_clip torch.compile"

BUSY_LOAD = 1.5  # load average above which the open_clip report says the machine was not idle

MFU_NOTE = ("MFU is a ratio measured within one run: the matmul peak is probed right before and right after "
            "the timed steps and the best probe is the denominator. On a CPU shared with other processes "
            "the wall-clock terms still move unevenly; the CPU-time MFU (model FLOPs per second of this "
            "process's CPU time, step over probe) is the steadier figure there, and errs low (idle "
            "thread-pool spinning counts as CPU time).")
OPEN_CLIP_NOTE = ("CPU-s / step is this process's CPU time (all threads) per step: on a shared machine it moves "
                  "less than wall time. vlmjax's step also checks the loss and gradients for NaN/Inf (and "
                  "skips such a step); the PyTorch step does not. torch.compile's first step is shorter when "
                  "Inductor finds its kernels in its on-disk cache from an earlier run "
                  "(`torch._inductor.config.fx_graph_cache`); XLA compiles from scratch here.")


def environment(devices, load_start) -> dict:
  """A report's header: the software, the devices, the machine and its load average at the start
  (`load_start`, `os.getloadavg()` then) and now."""
  import jax  # pylint: disable=import-outside-toplevel
  devices = list(devices)
  return {"jax": jax.__version__, "backend": jax.default_backend(), "devices": len(devices),
          "device_kind": devices[0].device_kind, "cpu": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "load_average_start": list(load_start),
          "load_average_end": list(os.getloadavg()),
          "malloc_retains_freed_memory": cpu_memory.retained,
          "date": datetime.datetime.now().isoformat(timespec="seconds")}


def write(out: str, name: str, result: dict, markdown: str) -> tuple[str, str]:
  """Writes OUT/<name>.json (every number of `result`) and OUT/<name>.md; -> their paths."""
  os.makedirs(out, exist_ok=True)
  json_path, md_path = os.path.join(out, f"{name}.json"), os.path.join(out, f"{name}.md")
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1, default=str)
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(markdown)
  return json_path, md_path


def publish(out: str, name: str, result: dict, markdown: str) -> tuple[str, str]:
  """`write`, then prints the markdown and where both files went."""
  json_path, md_path = write(out, name, result, markdown)
  print(markdown)
  print(f"Wrote {json_path} and {md_path}")
  return json_path, md_path


def _g(x, unit=1e9):
  return "n/a" if x is None else f"{x / unit:,.2f}"


def _mib(x):
  return f"{x / 2**20:,.1f}"


def gib(n) -> str:
  return f"{n / 2**30:.2f} GiB"


def train_step_markdown(name: str, r: dict) -> str:
  """The train-step benchmark (`train_step.bench_train_step`) of the config `name`."""
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
            MFU_NOTE, ""]
  return "\n".join(lines)


def data_startup_markdown(r: dict) -> str:
  """The file-list startup benchmark (`data_startup.bench_data_startup`)."""
  env, t = r["environment"], r["targets"]
  ok = lambda good: "yes" if good else "**no**"
  return "\n".join([
      f"# Data startup: a {r['rows']:,}-row CSV file list", "",
      f"{env['date']}, {env['cpu']}, {env['cpu_count']} CPU cores, load average "
      f"{env['load_average_start'][0]:.2f} at the start, {env['load_average_end'][0]:.2f} at the end.", "",
      f"`sources.make_source` (`data.name = 'csv'`) on a generated file of {r['rows']:,} rows "
      f"({r['file_bytes'] / 2**20:,.1f} MiB, {r['multi_line_rows']:,} of them quoted captions with a "
      f"comma, quotes and a newline), image paths that do not exist; then the first {r['first_reads']} "
      f"`__getitem__` (each a bad record: the image is missing). Memory: this process's resident set "
      f"({r['memory_from']}), the peak sampled every 5 ms; glibc malloc keeps freed memory "
      f"(`vlmjax.cpu_memory`): {'yes, so the memory after construction still holds its freed temporaries' if env.get('malloc_retains_freed_memory') else 'no'}.", "",
      "| metric | value | target | met |", "|---|---|---|---|",
      f"| construction (row index) | {r['construct_s']:.2f} s | < {t['construct_s']:g} s | "
      f"{ok(r['construct_s'] < t['construct_s'])} |",
      f"| first {r['first_reads']} reads | {r['first_reads_s'] * 1e3:.1f} ms | | |",
      f"| extra resident memory after construction | {_mib(r['extra_after_bytes'])} MiB | < {_mib(t['extra_bytes'])} MiB | "
      f"{ok(r['extra_after_bytes'] < t['extra_bytes'])} |",
      f"| extra resident memory, peak during construction | {_mib(r['extra_peak_bytes'])} MiB | < "
      f"{_mib(t['extra_bytes'])} MiB | {ok(r['extra_peak_bytes'] < t['extra_bytes'])} |",
      f"| the row index (int64 offsets) | {_mib(r['index_bytes'])} MiB | | |",
      f"| writing the file (not part of startup) | {r['write_s']:.1f} s | | |", ""])


def input_pipeline_markdown(name: str, r: dict) -> str:
  """The input-pipeline benchmark (`input_pipeline.bench_input_pipeline`) of the config `name`."""
  env, cfg, step = r["environment"], r["config"], r["step"]
  data = cfg["data"] if not cfg["mixture"] else f"a mixture of {', '.join(cfg['mixture'])}"
  lines = [
      f"# Input pipeline against the step: {name}", "",
      f"{env['date']}, jax {env['jax']}, {env['devices']} × {env['device_kind']} ({env['backend']}, "
      f"{env['cpu_count']} CPU cores), load average {env['load_average_start'][0]:.2f} at the start, "
      f"{env['load_average_end'][0]:.2f} at the end.", "",
      f"Batch {cfg['batch_size']}, images {cfg['image_size']}², training data: {data}.", "",
      "## Training, against the step alone", "",
      f"The step alone: the train-step benchmark on a synthetic batch, **{step['examples_per_sec']:.1f} "
      f"examples/s** (best of {step['repeats']} × {step['steps']} steps; median {step['examples_per_sec_median']:.1f}). "
      "Training: `python -m vlmjax.train` on the same config in a subprocess, as a user runs it (no "
      "evaluation); examples/s over its logging intervals after the first, which holds the compilation.", "",
      "| data setting | training examples/s | of the step alone | per interval |", "|---|---|---|---|"]
  lines += [f"| {row['name']} | {row['examples_per_sec']:.1f} | {row['of_step_alone']:.0%} | "
            f"{', '.join(f'{x:.0f}' for x in row['interval_examples_per_sec'][1:])} |" for row in r["training"]]
  lines += ["", "## The pipeline alone", "",
            "The config's training batches made and discarded, no step running; CPU time is this "
            "process's (worker processes' time is their own).", "",
            "| data setting | examples/s | CPU ms / example (this process) | first batches, s |", "|---|---|---|---|"]
  lines += [f"| {row['name']} | {row['examples_per_sec']:.0f} | {row['process_cpu_ms_per_example']:.2f} | "
            f"{row['warmup_batches_s']:.1f} |" for row in r["pipeline"]]
  lines += ["", "On a CPU the step and the data share the cores: the step alone is the ceiling, and what "
            "training loses to it is the data's CPU time, plus the stalls when a data thread pre-empts one "
            "of XLA's threads and the others wait for it at the next barrier. Worker processes with a "
            "lowered priority (`data.workers`, `data.worker_nice`) take only the cycles the step leaves idle.", ""]
  return "\n".join(lines)


def losses_markdown(r: dict) -> str:
  """The loss-memory benchmark (`losses.bench_losses`)."""
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


def open_clip_markdown(name: str, r: dict) -> str:
  """The comparison with open_clip (`open_clip.bench_against_open_clip`) of the config `name`."""
  env, cfg, opt, rows = r["environment"], r["config"], r["config"]["optimizer"], r["rows"]
  changes = ", ".join(f"`{c}`" for c in cfg["clip_architecture_changes"]) or "none"
  eager = rows.get(EAGER_ROW)
  lines = [
      f"# Train step: vlmjax vs open_clip (PyTorch), {name}", "",
      f"{env['date']}, {env['cpu']} ({env['cpu_count']} CPU cores), load average "
      f"{env['load_average_start'][0]:.2f} at the start, {env['load_average_end'][0]:.2f} at the end. "
      f"jax {env['jax']} (XLA CPU, {env['xla_cpu_threads']}); torch {env['torch']} "
      f"({env['torch_threads']} threads, {env['torch_interop_threads']} inter-op, "
      f"{env['torch_parallel_backend']}, {env['torch_cpu_capability']}), open_clip {env['open_clip']}; "
      "one process; glibc malloc keeps freed memory (`vlmjax.cpu_memory`, for every row): "
      f"{'yes' if env.get('malloc_retains_freed_memory') else 'no'}.", "",
      f"The same model: the config's dual encoder in CLIP's architecture (changed: {changes}), "
      f"{r['params']['vlmjax']:,} parameters in vlmjax, {r['params']['open_clip']:,} in open_clip (CLIP's "
      f"patch convolution has no bias: vlmjax's {r['params']['vlmjax_patch_bias']} are folded into the position "
      "embedding on export), built by `open_clip.create_model` from vlmjax's open_clip export, with the same "
      f"initial weights. Batch {cfg['batch_size']}, images {cfg['image_size']}², text length "
      f"{cfg['max_text_len']}, float32, one synthetic batch; CLIP softmax loss with a learnable logit scale "
      f"(clamped to [0, ln 100] after each update), AdamW (peak lr {opt['learning_rate']:g}, "
      f"{opt['warmup_steps']} warm-up steps, β = ({opt['b1']:g}, {opt['b2']:g}), ε = {opt['eps']:g}, weight "
      f"decay {opt['weight_decay']:g}), gradient clipping at global norm {opt['grad_clip_norm']:g}. "
      f"{_g(r['model_flops_per_step'])} model GFLOP per step (analytic).", "",
      f"{r['warmup']} warm-up step(s) per row (compilation included), then {r['repeats']} repeats of "
      f"{r['steps']} steps, the rows taking turns within each repeat; best repeat (median in brackets).", "",
      "| train step | examples/s | s / step | CPU-s / step | model GFLOP/s | vlmjax's speed-up over it | "
      "first step (compile) | loss at step 0 | loss after the last step |",
      "|---|---|---|---|---|---|---|---|---|"]
  labels = {VLMJAX_ROW: "vlmjax (`jax.jit`)", EAGER_ROW: "open_clip, eager (open_clip_train's default)",
            COMPILED_ROW: "open_clip, `torch.compile` (--torchcompile)"}
  for row_name, row in rows.items():
    lines.append(
        f"| {labels[row_name]} | {row['examples_per_sec']:.2f} ({row['examples_per_sec_median']:.2f}) | "
        f"{min(row['step_times_s']):.3f} | {min(row['step_cpu_times_s']):.3f} | "
        f"{_g(row['model_flops_per_sec'])} | "
        + ("–" if row_name == VLMJAX_ROW else f"×{row['vlmjax_speedup']:.2f} (×{row['vlmjax_speedup_median']:.2f})")
        + f" | {row['first_step_s']:.1f} s"
        + (f" (+ {row['compile_s']:.1f} s XLA compile before it)" if row.get("compile_s") else "")
        + f" | {row['loss_step0']:.6f} | {row['loss_last']:.6f} |")
  for row_name, failure in r["failed"].items():
    lines.append(f"| {labels[row_name]} | failed after {failure['after_s']:.0f} s: {failure['error']} |"
                 " | | | | | | |")
  if not r["torch_compile_tried"]:
    lines.append(f"| {labels[COMPILED_ROW]} | not run (--torch_compile=false) | | | | | | | |")
  lines += [""]
  loads, cores = (env["load_average_start"][0], env["load_average_end"][0]), env["cpu_count"]
  if max(loads) > BUSY_LOAD:
    lines += [f"**Not measured on an idle machine**: load average {loads[0]:.2f} at the start and "
              f"{loads[1]:.2f} at the end, on {cores} cores. "
              "Other processes took CPU time from every row, and not necessarily evenly (compare each "
              "row's wall time with its CPU time); rerun on an idle machine: "
              f"`{r.get('command') or 'python -m vlmjax.bench.open_clip --config CONFIG --out benchmarks'}`.", ""]
  if eager:
    lines += [f"Step-0 losses agree to {r['loss_step0_max_abs_diff']:.1e} (same weights, same batch). "
              + OPEN_CLIP_NOTE, ""]
  if r.get("op_profile"):
    lines += op_profile_markdown(r, labels)
  return "\n".join(lines)


def op_profile_markdown(r: dict, labels: dict) -> list[str]:
  """The op-by-op profile of each row (`op_profile`), by category, side by side, then each row's
  costliest ops."""
  from vlmjax.bench.op_profile import CATEGORIES, TORCH_ONLY  # pylint: disable=import-outside-toplevel
  profiles = r["op_profile"]
  names = list(profiles)
  wall = {n: 1e3 * min(r["rows"][n]["step_times_s"]) for n in names}
  lines = ["## Op by op", "",
           f"{r['steps']} steps of each row profiled after the timing (`jax.profiler`: XLA:CPU's ops by their HLO "
           "instruction, mapped to the JAX op each came from; `torch.profiler`: aten ops' self time). Op time is "
           "not wall time: XLA runs independent ops at once on its threads, a PyTorch op uses all threads.", "",
           "| ms per step | " + " | ".join(labels[n] for n in names) + " |", "|---|" + "---|" * len(names)]
  for category in CATEGORIES + TORCH_ONLY:
    lines.append(f"| {category} | " + " | ".join(f"{profiles[n]['per_step_ms'].get(category, 0.0):.1f}"
                                                 for n in names) + " |")
  lines.append("| **all ops** | " + " | ".join(f"**{profiles[n]['ops_ms']:.1f}**" for n in names) + " |")
  lines.append("| wall time per step (best repeat) | " + " | ".join(f"{wall[n]:.1f}" for n in names) + " |")
  for n in names:
    lines += ["", f"Costliest ops, {labels[n]}:", "", "| op | category | ms per step | from |", "|---|---|---|---|"]
    for op, category, origin, ms in profiles[n]["top"]:
      origin = re.sub(r"^jit\(train_step\)/", "", origin).replace("closed_call/blocks.body/blocks/", "")
      lines.append(f"| `{op}` | {category} | {ms:.1f} | {origin and f'`{origin}`'} |")
  return lines + [""]


def compile_text(r: dict) -> str:
  """The TPU sizing report (`compile.compile_step`) as an aligned two-column table."""
  m = r["memory"]
  rows = [
      ("slice", f"{r['topology']} ({r['libtpu_topology']}, {r['chips']} chips, {r['hosts']} hosts, {r['device_kind']})"),
      ("mesh", " × ".join(f"{k}={v}" for k, v in r["mesh"].items())),
      ("batch", f"{r['batch_size']} global, {r['per_chip_batch']} per chip, {r['microbatches']} microbatch(es)"),
      ("params", f"{r['params'] / 1e6:.1f} M"),
      ("memory per chip: arguments", f"{gib(m['arguments'])} (params, optimizer state, batch)"),
      ("memory per chip: temporaries", f"{gib(m['temporaries'])} (activations, gradients, collectives)"),
      ("memory per chip: total", f"{gib(m['total'])} of {gib(m['hbm'])} HBM ({100 * m['total'] / m['hbm']:.0f}%)"),
  ]
  if r["model_flops_per_step"]:
    rows.append(("model FLOPs per step", f"{r['model_flops_per_step']:.3e} (matmuls, forward + backward)"))
  if r.get("loops_in_counted_program"):
    rows.append(("compiled FLOPs per step", f"not estimated: {r['loops_in_counted_program']} loop(s) remain in the "
                                            "counted program, whose bodies XLA's cost analysis counts once"))
  if r["estimated_time"]:
    ratio = f"; {r['flops_per_step'] / r['model_flops_per_step']:.2f} × the model's" if r["model_flops_per_step"] else ""
    rows += [
        ("compiled FLOPs per step", f"{r['flops_per_step']:.3e} ({r['flops_per_chip']:.3e} per chip, remat "
                                    f"included{ratio})"),
        ("estimated compute time", f"{r['compute_time_s'] * 1e3:.1f} ms (XLA's TPU cost model; compute-or-HBM "
                                   f"roofline {r['roofline_step_time_s'] * 1e3:.1f} ms)"),
    ]
    for kind, c in r["collectives"].items():
      rows.append((f"collectives: {kind}", f"{c['count']} per step, {c['bytes'] / 2**20:,.1f} MiB, "
                                           f"{c['ici_bytes'] / 2**20:,.1f} MiB sent per chip"))
    rows += [
        ("estimated ICI time", f"{r['ici_time_s'] * 1e3:.1f} ms (at {r['ici_bytes_per_s'] / 1e9:.0f} GB/s per chip, "
                               "every link busy: a lower bound)"),
        ("estimated step time", f"{r['step_time_s'] * 1e3:.1f} ms (collectives overlapped; "
                                f"{r['serial_step_time_s'] * 1e3:.1f} ms if not)"),
        ("estimated throughput", f"{r['examples_per_s']:,.0f} examples/s"),
    ]
    if r["mfu"] is not None:
      rows.append(("estimated MFU", f"{100 * r['mfu']:.1f}% of {r['peak_bf16_flops_per_chip'] / 1e12:.0f} "
                                    f"TFLOP/s bf16 per chip ({100 * r['serial_mfu']:.1f}% with no overlap)"))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def sweep_markdown(table: dict) -> str:
  """A `compile --sweep` table (`compile.sweep`): one row per candidate, the chosen one marked."""
  lines = [f"Candidates on {table['topology']}; chosen (**bold**): the fastest estimated step leaving "
           f"{100 * table['headroom']:.0f}% of HBM free.", ""]
  if table.get("command"):
    versions = ", ".join(f"{k} {v}" for k, v in table.get("versions", {}).items())
    lines += ["```", table["command"], "```", "", f"Compiled with {versions}. Memory: the TPU compiler's allocation "
              "per chip. Compute: XLA's TPU cost model, op by op. ICI: the collectives' bytes one chip sends, "
              "at its interconnect bandwidth (a lower bound). Step: the larger of the two. MFU: the model's "
              "matmul FLOPs over the step at the chip's bf16 peak. Bound by: the larger of the step's FLOPs "
              "and its HBM traffic, each at the chip's peak rate.", ""]
  lines += ["| candidate | mesh | HBM per chip | compiled / model FLOPs | compute | ICI | step | MFU | bound by |",
            "|---|---|---|---|---|---|---|---|---|"]
  for i, row in enumerate(table["rows"]):
    label = ", ".join(f"{k.removeprefix('model.')}={v}" for k, v in row["overrides"].items()) or "as configured"
    label = f"**{label}**" if i == table["choice"] else label
    if "error" in row:
      lines.append(f"| {label} | | {row['error']} | | | | | | |")
      continue
    r = row["report"]
    m = r["memory"]
    mesh = "×".join(f"{k}{v}" for k, v in r["mesh"].items() if v > 1)
    memory = f"{gib(m['total'])} ({100 * m['total'] / m['hbm']:.0f}%)"
    if not r["estimated_time"]:
      why = "does not fit" if not r["fits"] else "not estimated"
      lines.append(f"| {label} | {mesh} | {memory}: {why} | | | | | | |")
      continue
    ratio = f"{r['flops_per_step'] / r['model_flops_per_step']:.2f}" if r["model_flops_per_step"] else "–"
    lines.append(f"| {label} | {mesh} | {memory} | {ratio} | {1e3 * r['compute_time_s']:.1f} ms | "
                 f"{1e3 * r['ici_time_s']:.1f} ms | {1e3 * r['step_time_s']:.1f} ms | "
                 f"{100 * r['mfu']:.1f}% | {bound(r)} |")
  return "\n".join(lines)


def bound(r: dict) -> str:
  """Which term sets a compile report's estimated step: ICI, or within compute the larger of the
  FLOP time and the HBM-traffic time at peak."""
  if r["ici_time_s"] >= r["compute_time_s"]:
    return "ICI"
  flop_s = r["flops_per_chip"] / r["peak_bf16_flops_per_chip"]
  hbm_s = r["hbm_bytes_accessed_per_chip"] / r["hbm_bytes_per_s"]
  terms = f"FLOPs {1e3 * flop_s:.0f} ms, HBM {1e3 * hbm_s:.0f} ms"
  return f"{'FLOPs' if flop_s >= hbm_s else 'HBM'} ({terms})"
