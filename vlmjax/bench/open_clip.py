"""vlmjax's train step against open_clip's PyTorch train step on the same model, timed side by side.

  python -m vlmjax.bench.open_clip --config configs/bench_vits16.py --out benchmarks
      [--steps=2] [--repeats=4] [--warmup=1] [--torch_compile=true]  -> OUT/open_clip_<config>.{json,md}

Needs the `interop` extra (torch, open_clip: `pip install -e '.[interop]'`, or `make bench-open-clip`);
torch and open_clip are imported only when this runs, never by the core install.

The same model by construction: the config's dual encoder, its towers set to CLIP's architecture
where they differ (class-token pooling, learned position embeddings, LayerNorm before the
transformer: what open_clip's towers are; the report lists what changed), is initialised by vlmjax,
written with `vlmjax.interop` (open_clip's state-dict layout and model config) and loaded by
`open_clip.create_model('local-dir:...')`: the same weights, fp32 on both sides, the same synthetic
batch. The same step: CLIP softmax loss with a learnable logit scale (vlmjax's `clip` objective,
`open_clip.ClipLoss`), AdamW with the config's learning-rate schedule, betas, eps and weight decay
on the same tensors, global-norm gradient clipping, the logit scale clamped to [0, ln 100] after each
update. The PyTorch step is open_clip_train's `train_one_epoch` at fp32 without its data loading
(zero_grad, forward, loss, backward, clip_grad_norm_, step, clamp), eager as there by default, and
again under `torch.compile(model)` (open_clip_train's --torchcompile) as its own row if that
compiles here (a failure is reported, with its reason, instead of the row).

Timing: after the warm-up (which holds XLA's and torch.compile's compilation), each repeat times
`steps` steps of every row in turn, the first row rotating from repeat to repeat, so that a change
of load on a shared machine falls on all rows alike; best and median repeat per row. torch runs on
one thread per core (XLA's CPU client uses one per core by default). The report also holds the
step-0 loss of each row (same weights, same batch: they must agree), the loss after the last step,
and the load average at the start and end.
"""
import os
import platform
import re
import statistics
import sys
import tempfile
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from vlmjax import cli, experiment as experiment_lib, flops as flops_lib, interop, metrics, sharding
from vlmjax.bench import command, op_profile as op_profile_lib, report
from vlmjax.bench.report import COMPILED_ROW, EAGER_ROW, VLMJAX_ROW
from vlmjax.interop import clip as interop_clip
from vlmjax.models.text import TextTransformer
from vlmjax.models.vit import ViT
from vlmjax.objectives.contrastive import MAX_LOGIT_SCALE

PROGRAM = "bench.open_clip"
FLAGS = flags.FLAGS

INSTALL_HINT = "pip install -e '.[interop]' (or make bench-open-clip)"

# What makes a vlmjax tower CLIP's (vlmjax.interop.clip.to_torch refuses anything else).
CLIP_TOWERS = (("image", ViT, "S/16", dict(pool="cls", posemb="learn", pre_norm=True, stem="patch")),
               ("text", TextTransformer, "S", dict(pool="eos", causal=True)))


def import_torch():
  """-> (torch, open_clip), or an ImportError of one line naming the extra to install."""
  try:
    import torch
    import open_clip
  except ImportError as e:
    missing = getattr(e, "name", None) or str(e)
    raise ImportError(f"the open_clip benchmark needs torch and open_clip ('{missing}' is missing): "
                      f"{INSTALL_HINT}") from None
  return torch, open_clip


def clip_architecture(config):
  """-> (a copy of `config` whose dual encoder is CLIP's architecture, the settings changed as
  'image.pool: gap -> cls'). Raises ValueError for what open_clip's CLIP step cannot mirror."""
  if config.model.get("name", "dual_encoder") != "dual_encoder":
    raise ValueError(f"bench.open_clip: model '{config.model.name}' is not a dual_encoder")
  if sorted(config.objectives) != ["clip"]:
    raise ValueError(f"bench.open_clip: objectives {sorted(config.objectives)}; the comparison is of the "
                     "CLIP loss alone (open_clip.ClipLoss): set objectives = dict(clip=dict(weight=1.0))")
  if config.microbatches != 1 or config.optimizer.frozen:
    raise ValueError("bench.open_clip: microbatches > 1 and frozen params have no counterpart in the "
                     "open_clip step here")
  config = config.copy_and_resolve_references()
  changed = []
  with config.unlocked():
    for tower, cls, variant, settings in CLIP_TOWERS:
      current = interop_clip.tower_kwargs(cls, (config.model.get(tower) or {}).to_dict() if tower in config.model
                                           else {}, variant)
      if tower not in config.model:
        config.model[tower] = {}
      for key, value in settings.items():
        if current[key] != value:
          changed.append(f"{tower}.{key}: {current[key]} -> {value}")
          config.model[tower][key] = value
    if config.precision.compute_dtype != "float32":
      changed.append(f"precision.compute_dtype: {config.precision.compute_dtype} -> float32")
      config.precision.compute_dtype = "float32"
  return config, changed


def _count(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


# ------------------------------------------------------------------------------------------- vlmjax

def vlmjax_row(config, mesh):
  """vlmjax's train step, built by `vlmjax.experiment` as `vlmjax.train` builds it.
  -> dict(run=, compile_s=, params=, host_batch=, schedule=, hlo_text=): `run(n)` takes n steps and
  returns the last step's loss."""
  experiment = experiment_lib.build(config, config.tokenizer.vocab_size, mesh=mesh)
  host_batch = experiment.synthetic_batch(seed=config.seed)
  batch = sharding.global_batch(host_batch, mesh)
  state, shardings = experiment.init_state()
  # A host copy of the initial weights: the steps donate (overwrite) the state's buffers.
  params = jax.tree.map(lambda x: np.array(x, np.float32), state["params"])
  with experiment.use_mesh():
    start = time.perf_counter()
    compiled = experiment.train_step(shardings).lower(state, batch).compile()
    compile_s = time.perf_counter() - start
  holder = {"state": state}

  def run(n):
    with experiment.use_mesh():
      for _ in range(n):
        holder["state"], step_metrics = compiled(holder["state"], batch)
      jax.block_until_ready((holder["state"], step_metrics))
    return float(step_metrics["loss"])

  return dict(run=run, compile_s=compile_s, params=params, host_batch=host_batch, schedule=experiment.schedule,
              hlo_text=compiled.as_text())


# ------------------------------------------------------------------------------------------ open_clip

def open_clip_model(folder: str):
  """The exported model as open_clip's own loader builds it (config and weights from `folder`)."""
  _, open_clip = import_torch()
  model = open_clip.create_model("local-dir:" + folder, precision="fp32", device="cpu", output_dict=True)
  return model.train()


def torch_optimizer(model, opt):
  """AdamW as vlmjax.trainer.make_optimizer sets it up, in open_clip_train's two parameter groups:
  weight decay on matrices only, never on paths matching `wd_exclude` (the logit scale and bias).
  vlmjax's class token is [1, 1, W] and so decayed; open_clip's is [W]: named here so that it is too."""
  torch, _ = import_torch()
  exclude = re.compile(opt.wd_exclude) if opt.wd_exclude else None
  decayed = lambda name, p: ((p.ndim >= 2 or name == "visual.class_embedding")
                             and not (exclude and exclude.search(name)))
  named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  return torch.optim.AdamW(
      [{"params": [p for n, p in named if not decayed(n, p)], "weight_decay": 0.0},
       {"params": [p for n, p in named if decayed(n, p)], "weight_decay": opt.weight_decay}],
      lr=0.0, betas=(opt.b1, opt.b2), eps=opt.eps)


def torch_row(config, folder: str, host_batch: dict, learning_rates, compile_model: bool = False):
  """open_clip_train's fp32 train step on the model in `folder`. -> dict(run=, model=): `run(n)` takes
  n steps and returns the last step's loss; the first call compiles when `compile_model`."""
  torch, open_clip = import_torch()
  model = open_clip_model(folder)
  forward = torch.compile(model) if compile_model else model  # what --torchcompile does
  optimizer = torch_optimizer(model, config.optimizer)
  loss_fn = open_clip.ClipLoss()
  clip_norm = config.optimizer.grad_clip_norm
  max_logit_scale = float(config.objectives.clip.get("max_logit_scale", MAX_LOGIT_SCALE))
  images = torch.from_numpy(np.ascontiguousarray(host_batch["image"].transpose(0, 3, 1, 2)))
  texts = torch.from_numpy(host_batch["text"].astype(np.int64))
  step = [0]
  record = torch.profiler.record_function

  def train_step():
    lr = float(learning_rates[min(step[0], len(learning_rates) - 1)])
    for group in optimizer.param_groups:  # open_clip_train's scheduler sets it per step the same way
      group["lr"] = lr
    optimizer.zero_grad()
    out = forward(images, texts)
    with record("loss"):  # names for the op profile (`op_profile`); free when not profiling
      loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
    loss.backward()
    with record("optimizer: clip_grad_norm_, clamp"):
      if clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm, norm_type=2.0)
    optimizer.step()
    with torch.no_grad(), record("optimizer: clip_grad_norm_, clamp"):
      model.logit_scale.clamp_(0, max_logit_scale)
    step[0] += 1
    return loss

  def run(n):
    for _ in range(n):
      loss = train_step()
    return float(loss.detach())  # CPU ops are synchronous: the steps are done

  return dict(run=run, model=model)


# -------------------------------------------------------------------------------------------- bench

def _first_line(error: BaseException, limit: int = 400) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f"{type(error).__name__}: {lines[0] if lines else ''}"[:limit]


def _environment(mesh, load_start, torch) -> dict:
  import open_clip
  import torch._inductor.config as inductor_config
  env = report.environment(mesh.devices.flat, load_start)
  parallel = torch.__config__.parallel_info().splitlines()
  env.update(
      torch=torch.__version__, open_clip=open_clip.__version__, python=platform.python_version(),
      torch_threads=torch.get_num_threads(), torch_interop_threads=torch.get_num_interop_threads(),
      torch_parallel_backend=next((line.split(":", 1)[1].strip() for line in parallel
                                   if line.startswith("ATen parallel backend")), None),
      torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
      inductor_fx_graph_cache=bool(inductor_config.fx_graph_cache),
      xla_cpu_threads="one per core (XLA's default)", XLA_FLAGS=os.environ.get("XLA_FLAGS", ""),
      OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS"))
  return env


def bench_against_open_clip(config, steps: int = 2, warmup: int = 3, repeats: int = 4,
                            torch_compile: bool = True, devices=None, op_profile: bool = False) -> dict:
  """Times vlmjax's train step and open_clip's (eager, and compiled if `torch_compile`) on the same
  model, weights and batch, interleaved; returns the report's fields. `devices`: vlmjax's mesh
  (default: the first device; open_clip runs on one CPU process too). `op_profile`: then profile
  `steps` more steps of each row, op by op (`op_profile`), into the report's 'op_profile'."""
  if steps < 1 or repeats < 1 or warmup < 1:
    raise ValueError(f"bench.open_clip: --steps ({steps}), --repeats ({repeats}) and --warmup ({warmup}) "
                     "must be >= 1 (the first warm-up step gives the step-0 losses)")
  torch, open_clip = import_torch()
  torch.set_num_threads(os.cpu_count())
  load_start = os.getloadavg()
  config, changed = clip_architecture(config)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), devices or jax.devices()[:1])

  ours = vlmjax_row(config, mesh)
  learning_rates = np.asarray(ours["schedule"](jnp.arange(config.total_steps)))
  rows = {VLMJAX_ROW: {"run": ours["run"], "compile_s": ours["compile_s"]}}
  failures = {}
  with tempfile.TemporaryDirectory() as folder:
    interop.write("open_clip", folder, config.model.to_dict(), ours["params"])
    rows[EAGER_ROW] = torch_row(config, folder, ours["host_batch"], learning_rates)
    params_open_clip = sum(p.numel() for p in rows[EAGER_ROW]["model"].parameters())
    if torch_compile:
      rows[COMPILED_ROW] = torch_row(config, folder, ours["host_batch"], learning_rates, compile_model=True)

  # Warm-up, row by row; the first step of each is step 0 on the same weights and batch.
  for name in list(rows):
    row = rows[name]
    try:
      start = time.perf_counter()
      row["loss_step0"] = row["run"](1)
      row["first_step_s"] = time.perf_counter() - start
      if warmup > 1:
        row["run"](warmup - 1)
    except Exception as e:  # torch.compile can fail in many ways (no C++ compiler, an unsupported op)
      if name != COMPILED_ROW:
        raise
      failures[name] = {"error": _first_line(e), "after_s": time.perf_counter() - start}
      del rows[name]

  names = list(rows)
  times = {name: [] for name in names}
  cpu_times = {name: [] for name in names}
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      start, start_cpu = time.perf_counter(), time.process_time()
      rows[name]["loss_last"] = rows[name]["run"](steps)
      times[name].append((time.perf_counter() - start) / steps)
      cpu_times[name].append((time.process_time() - start_cpu) / steps)

  profiles = {}
  if op_profile:  # after the timing, which it would slow down
    for name in names:
      profiles[name] = (op_profile_lib.profile_xla(rows[name]["run"], ours["hlo_text"], steps) if name == VLMJAX_ROW
                        else op_profile_lib.profile_torch(rows[name]["run"], steps))
  for name in names:
    if not np.isfinite(rows[name]["loss_last"]):
      raise FloatingPointError(f"bench.open_clip: {name}'s loss is {rows[name]['loss_last']}")
  host_batch = ours["host_batch"]
  step_flops = flops_lib.train_step_flops(config.model, {k: v.shape for k, v in host_batch.items()})
  batch_size = config.batch_size
  results = {}
  for name in names:
    best, median = min(times[name]), statistics.median(times[name])
    results[name] = {
        "examples_per_sec": batch_size / best, "examples_per_sec_median": batch_size / median,
        "step_times_s": times[name], "step_cpu_times_s": cpu_times[name],
        "model_flops_per_sec": step_flops / best, "loss_step0": rows[name]["loss_step0"],
        "loss_last": rows[name]["loss_last"], "first_step_s": rows[name]["first_step_s"],
        "compile_s": rows[name].get("compile_s")}
  base = results[VLMJAX_ROW]
  for name in names:
    results[name]["vlmjax_speedup"] = base["examples_per_sec"] / results[name]["examples_per_sec"]
    results[name]["vlmjax_speedup_median"] = (base["examples_per_sec_median"]
                                              / results[name]["examples_per_sec_median"])
  image = flops_lib.tower_settings(config.model.image, ViT)
  opt = config.optimizer
  return {
      "config": {"batch_size": batch_size, "image_size": config.input.image_size,
                 "max_text_len": config.input.max_text_len, "compute_dtype": "float32",
                 "model": config.model.to_dict(), "clip_architecture_changes": changed,
                 "optimizer": opt.to_dict(), "total_steps": config.total_steps},
      "params": {"vlmjax": _count(ours["params"]), "open_clip": int(params_open_clip),
                 # CLIP's patch convolution has no bias: export folds vlmjax's into the position embedding
                 "vlmjax_patch_bias": int(image["width"])},
      "model_flops_per_step": step_flops,
      "steps": steps, "warmup": warmup, "repeats": repeats,
      "rows": results, "failed": failures, "torch_compile_tried": bool(torch_compile),
      "loss_step0_max_abs_diff": max(abs(r["loss_step0"] - base["loss_step0"]) for r in results.values()),
      "environment": _environment(mesh, load_start, torch), "op_profile": profiles,
  }


# ---------------------------------------------------------------------------------------------- CLI

def define_flags():
  config_flags.DEFINE_config_file("config", None, "Experiment config file (path.py[:arg]) whose model to "
                                  "benchmark.", lock_config=True)
  flags.DEFINE_string("out", None, "Folder for the JSON and markdown reports.")
  flags.DEFINE_string("name", None, "Report file name (default: open_clip_<the config file's name>).")
  flags.DEFINE_integer("steps", 2, "Timed train steps per repeat and row.")
  flags.DEFINE_integer("warmup", 3, "Untimed train steps per row first (compilation included; XLA:CPU's "
                       "heap reaches its steady size over the first few steps).")
  flags.DEFINE_integer("repeats", 4, "Timed repeats; the best and the median are reported.")
  flags.DEFINE_bool("torch_compile", True, "Also time open_clip under torch.compile (--torchcompile).")
  flags.DEFINE_bool("op_profile", False, "Then profile --steps steps of each row, op by op, into the report.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  metrics.quiet_absl_logging()
  if not FLAGS.out or FLAGS.config is None:
    cli.fail(PROGRAM, "--config and --out are required")
  name = FLAGS.name or "open_clip_" + command.config_name()
  try:
    result = bench_against_open_clip(FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.repeats, FLAGS.torch_compile,
                                     op_profile=FLAGS.op_profile)
    result["command"] = " ".join(["python -m vlmjax.bench.open_clip"] + sys.argv[1:])
    report.publish(FLAGS.out, name, result, report.open_clip_markdown(name, result))
  except command.ERRORS as e:
    cli.fail(PROGRAM, e)


if __name__ == "__main__":
  command.run(PROGRAM, main, define_flags)
