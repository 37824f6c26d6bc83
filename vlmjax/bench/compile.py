"""Ahead-of-time compile of a config's real train step for a TPU slice, on any machine (no TPU needed).

  python -m vlmjax.bench.compile --config configs/clip_b16.py --topology v5p-64 [--config.k=v ...] [--json F]

libtpu describes the slice (`jax.experimental.topologies.get_topology_desc`: compile-only devices);
the mesh, train state and step are the ones `vlmjax.train` builds (`vlmjax.experiment`: its
abstract state, abstract batch and jitted step), lowered and compiled by the TPU compiler. Reports,
per chip: memory (arguments = params + optimizer state + batch, temporaries, total against the chip's
HBM), the step's FLOPs, an estimated step time and MFU. Exits 1 with one line when the step would not
fit in HBM, 2 for a bad argument or config.

Memory is the compiler's own account of the step as it runs. FLOPs and time are estimates, from the
same step with its layer scans unrolled (`xla.unrolled`; XLA's cost analysis counts a loop body
once) and compiled without windowed matmuls (on slices of many chips the TPU partitioner turns an
FSDP-gathered or reduce-scattered matmul into a loop over the shards, "collective matmul", whose
body would be counted once). A count whose program still holds a loop is reported as incomplete and
gives no time or MFU. Compute time is the TPU compiler's cost model (compute and HBM traffic, op by
op). Collectives are read from the same program (`xla.collectives`: each all-gather, reduce-scatter,
all-reduce, all-to-all and permute with its group and bytes), and their time is the bytes one chip
sends with bandwidth-optimal algorithms over the chip's published ICI bandwidth, every link busy: a
lower bound. The estimated step time is the larger of the two (the scheduler overlaps collectives
with compute), the serial time their sum. MFU is the model's matmul FLOPs (`vlmjax.flops`, no
rematerialisation) over the step time × the chip's peak.
`--noestimate_time` skips the unrolled compile (memory only).

`--sweep` compiles the config once per candidate and tabulates them (`sweep`): each `--sweep` is one
axis, keys = alternatives separated by `|`, each alternative one value per key (or one for all),
and the candidates are every combination of the axes:

  python -m vlmjax.bench.compile --config configs/clip_b16.py --topology v5p-64 \
      --sweep 'model.image.remat,model.text.remat=none|dots|save_mlp|full' \
      --sweep 'mesh.fsdp,mesh.tensor=-1,1|-1,2' --json sweep.json --markdown sweep.md

The choice is the fastest estimated step that leaves `--headroom` (15%) of the HBM free.

libtpu is the `tpu` extra. On a machine without TPUs keep it out of the environment's
site-packages (JAX would try to start a TPU runtime in every process): `make libtpu` installs it into
`.venv/libtpu`, which this module finds; or point TPU_LIBRARY_PATH at libtpu.so.
"""
import ast
import dataclasses
import glob
import json
import math
import os
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from vlmjax import cli
from vlmjax.bench import report

PROGRAM = "bench.compile"
FLAGS = flags.FLAGS


def define_flags():
  """Only when run as a program: vlmjax.train defines `--config` too, and tests import both."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file (path.py[:arg]).", lock_config=True)
  flags.DEFINE_string("topology", None, "TPU slice: v5p-64, v4-32, v5e-16, v6e-256, or an explicit v5p:4x4x4.")
  flags.DEFINE_string("json", None, "Also write the report to this JSON file.")
  flags.DEFINE_bool("estimate_time", True, "Also compile the unrolled step for FLOPs, step time and MFU.")
  flags.DEFINE_multi_string("sweep", [], "An axis of candidates: 'key[,key..]=value[,value..]|...' (repeatable).")
  flags.DEFINE_string("markdown", None, "With --sweep: also write the table to this markdown file.")
  flags.DEFINE_float("headroom", 0.15, "With --sweep: the share of HBM the chosen candidate must leave free.")


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip as the Cloud TPU documentation lists it. `cores_in_name`: TensorCores per chip that
  a slice name counts (v4-8 is 4 chips); with megacore those cores are one JAX device."""
  libtpu_name: str
  bf16_flops: float      # peak dense bf16 FLOP/s
  hbm_bytes: float       # HBM capacity
  hbm_bytes_per_s: float
  ici_bytes_per_s: float  # interconnect, all links together, one direction
  cores_in_name: int
  dims: int              # torus dimensions


GIB = 2**30
CHIPS = {
    "v4": Chip("v4", 275e12, 32 * GIB, 1.2e12, 300e9, cores_in_name=2, dims=3),
    "v5p": Chip("v5p", 459e12, 95.74 * GIB, 2.765e12, 600e9, cores_in_name=2, dims=3),  # HBM as libtpu counts it
    "v5e": Chip("v5e", 197e12, 16 * GIB, 0.819e12, 200e9, cores_in_name=1, dims=2),
    "v6e": Chip("v6e", 918e12, 32 * GIB, 1.64e12, 448e9, cores_in_name=1, dims=2),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}
CHIPS_PER_HOST = (2, 2, 1)  # 4 chips per host (TPU VM worker)
# The standard slice shapes by chip count (3D tori for v4/v5p, 2D for v5e/v6e).
SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
             256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}
SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


# For the copy whose cost is counted: no windowed (looped) matmuls, so every FLOP is in straight-line code.
COUNTING_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


class CompileError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str
  chip: Chip
  shape: tuple           # chips along each torus dimension

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)

  @property
  def num_hosts(self) -> int:
    return max(1, self.num_chips // 4)

  @property
  def libtpu_topology(self) -> str:
    return f"{self.chip.libtpu_name}:{'x'.join(map(str, self.shape))}"

  @property
  def wrap(self) -> tuple:
    """Wrap-around links: a 3D slice is a torus from 4×4×4 up; a 2D one along sides of 16."""
    if self.chip.dims == 3:
      return (self.num_chips >= 64 and all(d % 4 == 0 for d in self.shape),) * 3
    return tuple(d == 16 for d in self.shape) + (False,)


def parse_topology(name: str) -> Slice:
  """'v5p-64' (TensorCores for v4/v5p, chips for v5e/v6e, as Cloud TPU names slices) or 'v5p:4x4x4'."""
  if ":" in name:
    kind, _, dims = name.partition(":")
    shape = tuple(int(d) for d in dims.split("x") if d.isdigit())
    if len(shape) != len(dims.split("x")):
      raise CompileError(f"--topology '{name}': expected e.g. v5p:4x4x4")
  else:
    kind, _, count = name.rpartition("-")
    if not count.isdigit():
      raise CompileError(f"--topology '{name}': expected e.g. v5p-64 or v5p:4x4x4")
  kind = ALIASES.get(kind, kind)
  if kind not in CHIPS:
    raise CompileError(f"--topology '{name}': unknown TPU '{kind}' (known: {', '.join(CHIPS)})")
  chip = CHIPS[kind]
  if ":" not in name:
    chips, remainder = divmod(int(count), chip.cores_in_name)
    shapes = SHAPES_3D if chip.dims == 3 else SHAPES_2D
    if remainder or chips not in shapes:
      sizes = ", ".join(f"{kind}-{c * chip.cores_in_name}" for c in shapes)
      raise CompileError(f"--topology '{name}': not a standard slice (known: {sizes}); give its shape, "
                         f"e.g. {kind}:{'x'.join(['4'] * chip.dims)}")
    shape = shapes[chips]
  if len(shape) != chip.dims:
    raise CompileError(f"--topology '{name}': {kind} slices have {chip.dims} dimensions")
  return Slice(name, chip, shape)


def find_libtpu() -> str:
  """Path of libtpu.so: TPU_LIBRARY_PATH, an importable `libtpu`, or the venv's libtpu/ folder."""
  candidates = [os.environ.get("TPU_LIBRARY_PATH", "")]
  try:
    import libtpu  # pylint: disable=import-outside-toplevel
    candidates.append(libtpu.get_library_path())
  except ImportError:
    pass
  candidates.append(os.path.join(sys.prefix, "libtpu", "libtpu", "libtpu.so"))
  for path in candidates:
    if path and os.path.isfile(path):
      return path
  raise CompileError("libtpu is not installed: run `make libtpu` (installs it into .venv/libtpu) or set "
                     "TPU_LIBRARY_PATH to a libtpu.so")


def topology_devices(topology: Slice):
  """Compile-only TPU devices of the slice. Must run before JAX starts a backend."""
  os.environ["TPU_LIBRARY_PATH"] = find_libtpu()
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no GCE metadata server to ask
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling only: no TPU to lock
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_platforms", "cpu")  # the default backend stays the CPU: nothing runs on TPU
  description = topologies.get_topology_desc(
      topology.libtpu_topology, "tpu", chip_config_name="megacore" if topology.chip.cores_in_name == 2 else "default",
      chips_per_host_bounds=CHIPS_PER_HOST, num_slices=1,
      wrap=topology.wrap)
  return description.devices


def vocab_and_prompt(config) -> tuple[int, int]:
  """(vocabulary size, prompt pieces) of the run: from `tokenizer.path` when the config names a
  trained tokenizer, else `tokenizer.vocab_size` and no prompt (it cannot be encoded)."""
  from vlmjax.data import pipeline  # pylint: disable=import-outside-toplevel
  from vlmjax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel
  if not config.tokenizer.path:
    return config.tokenizer.vocab_size, 0
  tokenizer = Tokenizer.load(config.tokenizer.path)
  return tokenizer.vocab_size, len(pipeline.prompt_ids(tokenizer, config.input))


def compile_step(config, topology: Slice, estimate_time: bool = True) -> dict:
  """Compiles the train step of `config` for `topology`; -> the report (see `report.compile_text`).
  `estimate_time`: also compile the unrolled step for XLA's FLOPs and time estimate (slower)."""
  import jax  # pylint: disable=import-outside-toplevel
  from vlmjax import experiment as experiment_lib, flops as flops_lib, sharding  # pylint: disable=import-outside-toplevel
  from vlmjax.bench import xla  # pylint: disable=import-outside-toplevel

  devices = topology_devices(topology)
  vocab, prompt_len = vocab_and_prompt(config)

  def lower(config, **kwargs):
    experiment = experiment_lib.build(config, vocab, processes=topology.num_hosts, prompt_len=prompt_len,
                                      **kwargs)
    abstract, shardings = experiment.abstract_state()
    with experiment.use_mesh():
      return experiment.train_step(shardings).lower(abstract, experiment.abstract_batch()), experiment, abstract

  lowered, experiment, abstract = lower(config, devices=devices)
  mesh, batch = experiment.mesh, experiment.abstract_batch()
  memory = xla.memory(lowered.compile())  # of the step as it runs (scanned)
  chip = topology.chip
  total = (memory["argument_size"] + memory["output_size"] - memory["alias_size"] + memory["temp_size"]
           + memory["generated_code_size"])
  estimate_time = estimate_time and total <= chip.hbm_bytes
  cost, loops, collectives = {}, None, {}
  if estimate_time:
    counted = lower(xla.unrolled(config), mesh=mesh, validate=False)[0].compile(compiler_options=COUNTING_OPTIONS)
    loops = xla.while_loops(counted)
    if loops == 0:
      cost, collectives = xla.cost(counted), xla.collective_summary(xla.collectives(counted.as_text()))
  try:
    model_flops = flops_lib.train_step_flops(config.model, {k: v.shape for k, v in batch.items()}, vocab)
  except (KeyError, ValueError):  # a model the analytic count does not know
    model_flops = None

  flops = float(cost.get("flops", 0.0))  # per chip: the partitioned program one device runs
  hbm_traffic = float(cost.get("bytes accessed", 0.0))
  roofline_s = max(flops / chip.bf16_flops, hbm_traffic / chip.hbm_bytes_per_s)
  compute_s = float(cost.get("optimal_seconds", 0.0)) or roofline_s
  ici_s = sum(c["ici_bytes"] for c in collectives.values()) / chip.ici_bytes_per_s
  step_s = max(compute_s, ici_s)  # XLA's TPU scheduler runs collectives asynchronously, beside compute
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract["params"]))
  return {
      "topology": topology.name, "libtpu_topology": topology.libtpu_topology, "chips": topology.num_chips,
      "hosts": topology.num_hosts, "device_kind": devices[0].device_kind, "mesh": dict(mesh.shape),
      "batch_size": config.batch_size, "per_chip_batch": config.batch_size // sharding.batch_axes_size(mesh),
      "microbatches": config.microbatches, "params": params,
      "memory": {"arguments": memory["argument_size"], "outputs": memory["output_size"],
                 "aliased": memory["alias_size"], "temporaries": memory["temp_size"],
                 "code": memory["generated_code_size"], "total": total, "hbm": chip.hbm_bytes},
      "flops_per_chip": flops, "flops_per_step": flops * topology.num_chips, "model_flops_per_step": model_flops,
      "hbm_bytes_accessed_per_chip": hbm_traffic, "compute_time_s": compute_s, "roofline_step_time_s": roofline_s,
      "collectives": collectives, "hbm_bytes_per_s": chip.hbm_bytes_per_s,
      "ici_bytes_per_s": chip.ici_bytes_per_s, "ici_time_s": ici_s,
      "step_time_s": step_s, "serial_step_time_s": compute_s + ici_s,
      "mfu": model_flops / (step_s * chip.bf16_flops * topology.num_chips) if step_s and model_flops else None,
      "serial_mfu": (model_flops / ((compute_s + ici_s) * chip.bf16_flops * topology.num_chips)
                     if step_s and model_flops else None),
      "estimated_time": estimate_time and loops == 0, "loops_in_counted_program": loops,
      "peak_bf16_flops_per_chip": chip.bf16_flops, "fits": total <= chip.hbm_bytes,
      "examples_per_s": config.batch_size / step_s if step_s else None,
  }


def parse_sweep(axes: list[str], config) -> list[dict]:
  """--sweep axes -> the candidates: one {key: value} per combination. Values take the type of
  the config's own value at that key."""
  candidates = [{}]
  for axis in axes:
    keys, sep, alternatives = axis.partition("=")
    keys = [k.strip() for k in keys.split(",")]
    if not sep or not alternatives or not all(keys):
      raise CompileError(f"--sweep '{axis}': expected key[,key..]=value[,value..]|...")
    options = []
    for alternative in alternatives.split("|"):
      values = [v.strip() for v in alternative.split(",")]
      if len(values) == 1:
        values = values * len(keys)
      if len(values) != len(keys):
        raise CompileError(f"--sweep '{axis}': '{alternative}' gives {len(values)} values for {len(keys)} keys")
      options.append({k: typed(config, k, v, axis) for k, v in zip(keys, values)})
    candidates = [{**c, **o} for c in candidates for o in options]
  return candidates


def typed(config, key: str, value: str, axis: str):
  """`value` as the type of config[key] (int, float, bool or str); a key the config leaves to the
  model's default (its section exists, the key does not) takes a number or a string."""
  *parents, leaf = key.split(".")
  try:
    section = config
    for part in parents:
      section = section[part]
    current = section[leaf] if leaf in section else None
  except (KeyError, AttributeError, TypeError):
    raise CompileError(f"--sweep '{axis}': the config has no section '{'.'.join(parents)}'") from None
  if current is None:
    try:
      return ast.literal_eval(value)
    except (ValueError, SyntaxError):
      return value
  if isinstance(current, bool):
    if value.lower() not in ("true", "false"):
      raise CompileError(f"--sweep '{axis}': '{key}' takes true or false, not '{value}'")
    return value.lower() == "true"
  try:
    return type(current)(value) if isinstance(current, (int, float)) else value
  except ValueError:
    raise CompileError(f"--sweep '{axis}': '{key}' takes {type(current).__name__}, not '{value}'") from None


def with_overrides(config, overrides: dict):
  from vlmjax.config import set_dotted  # pylint: disable=import-outside-toplevel
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for key, value in overrides.items():
      set_dotted(config, key, value)
  return config


def sweep(config, topology: Slice, candidates: list[dict], headroom: float, log=print) -> dict:
  """Compiles each candidate's step -> {'rows': [{'overrides', 'report' or 'error'}], 'choice':
  index of the fastest estimated step leaving `headroom` of HBM free, or None}."""
  from vlmjax import config as config_lib  # pylint: disable=import-outside-toplevel
  rows = []
  for i, overrides in enumerate(candidates):
    label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "as configured"
    log(f"[{i + 1}/{len(candidates)}] {label}")
    try:
      result = compile_step(with_overrides(config, overrides), topology)
      rows.append({"overrides": overrides, "report": result})
      m = result["memory"]
      log(f"  {report.gib(m['total'])} of {report.gib(m['hbm'])} per chip"
          + (f", est. step {1e3 * result['step_time_s']:.1f} ms" if result["estimated_time"] else "")
          + (f", MFU {100 * result['mfu']:.1f}%" if result["mfu"] else ""))
    except (CompileError, config_lib.ConfigError, ValueError) as e:
      rows.append({"overrides": overrides, "error": str(e).splitlines()[0][:300]})
    except Exception as e:  # pylint: disable=broad-except
      if "RESOURCE_EXHAUSTED" not in str(e) and "Ran out of memory" not in str(e):
        raise
      rows.append({"overrides": overrides, "error": "does not fit (the compiler ran out of HBM)"})
  usable = [i for i, row in enumerate(rows) if "report" in row and row["report"]["estimated_time"]
            and row["report"]["memory"]["total"] <= (1 - headroom) * row["report"]["memory"]["hbm"]]
  choice = min(usable, key=lambda i: rows[i]["report"]["step_time_s"]) if usable else None
  return {"topology": topology.name, "headroom": headroom, "rows": rows, "choice": choice}


def versions() -> dict:
  """jax's version and libtpu's (from the dist-info beside the libtpu.so in use)."""
  import jax  # pylint: disable=import-outside-toplevel
  found = {"jax": jax.__version__}
  root = os.path.dirname(os.path.dirname(find_libtpu()))
  for info in sorted(glob.glob(os.path.join(root, "libtpu*.dist-info"))):
    found["libtpu"] = os.path.basename(info).removesuffix(".dist-info").split("-")[1]
  return found


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from vlmjax import config as config_lib, registry  # pylint: disable=import-outside-toplevel
  from vlmjax.metrics import quiet_absl_logging  # pylint: disable=import-outside-toplevel
  quiet_absl_logging()
  if FLAGS.config is None or FLAGS.topology is None:
    cli.fail(PROGRAM, "--config and --topology are required")
  try:
    topology = parse_topology(FLAGS.topology)
    if FLAGS.sweep:
      table = sweep(FLAGS.config, topology, parse_sweep(FLAGS.sweep, FLAGS.config), FLAGS.headroom)
      table["command"] = " ".join(["python -m vlmjax.bench.compile"] + [shlex.quote(a) for a in sys.argv[1:]])
      table["versions"] = versions()
      print(report.sweep_markdown(table))
      for path, text in ((FLAGS.json, json.dumps(table, indent=1)), (FLAGS.markdown, report.sweep_markdown(table))):
        if path:
          with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
      return
    result = compile_step(FLAGS.config, topology, FLAGS.estimate_time)
  except (CompileError, config_lib.ConfigError, registry.RegistryError, OSError) as e:
    cli.fail(PROGRAM, e)
  except Exception as e:  # the TPU compiler reports what does not fit as an error
    if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
      first = next((line for line in str(e).splitlines() if "memory" in line.lower()), str(e).splitlines()[0])
      cli.fail(PROGRAM, f"does not fit on {FLAGS.topology}: {first.strip()[:300]}", 1)
    raise
  print(report.compile_text(result))
  if FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
  if not result["fits"]:
    cli.fail(PROGRAM, f"does not fit on {FLAGS.topology}: {report.gib(result['memory']['total'])} per chip > "
             f"{report.gib(result['memory']['hbm'])} HBM", 1)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.flags_parser(PROGRAM))
