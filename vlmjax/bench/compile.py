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
gives no time or MFU. The step time is the TPU compiler's cost model (compute and HBM traffic; ICI
collectives are not modelled), MFU is the model's matmul FLOPs (`vlmjax.flops`, no
rematerialisation) over that time × the chip's peak.
`--noestimate_time` skips the unrolled compile (memory only).

libtpu is the `tpu` extra. On a machine without TPUs keep it out of the environment's
site-packages (JAX would try to start a TPU runtime in every process): `make libtpu` installs it into
`.venv/libtpu`, which this module finds; or point TPU_LIBRARY_PATH at libtpu.so.
"""
import dataclasses
import json
import math
import os
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


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip as the Cloud TPU documentation lists it. `cores_in_name`: TensorCores per chip that
  a slice name counts (v4-8 is 4 chips); with megacore those cores are one JAX device."""
  libtpu_name: str
  bf16_flops: float      # peak dense bf16 FLOP/s
  hbm_bytes: float       # HBM capacity
  hbm_bytes_per_s: float
  cores_in_name: int
  dims: int              # torus dimensions


GIB = 2**30
CHIPS = {
    "v4": Chip("v4", 275e12, 32 * GIB, 1.2e12, cores_in_name=2, dims=3),
    "v5p": Chip("v5p", 459e12, 95.74 * GIB, 2.765e12, cores_in_name=2, dims=3),  # as libtpu's compiler counts
    "v5e": Chip("v5e", 197e12, 16 * GIB, 0.819e12, cores_in_name=1, dims=2),
    "v6e": Chip("v6e", 918e12, 32 * GIB, 1.64e12, cores_in_name=1, dims=2),
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
  cost, loops = {}, None
  if estimate_time:
    counted = lower(xla.unrolled(config), mesh=mesh, validate=False)[0].compile(compiler_options=COUNTING_OPTIONS)
    loops = xla.while_loops(counted)
    cost = xla.cost(counted) if loops == 0 else {}
  try:
    model_flops = flops_lib.train_step_flops(config.model, {k: v.shape for k, v in batch.items()})
  except (KeyError, ValueError):  # a model the analytic count does not know
    model_flops = None

  flops = float(cost.get("flops", 0.0))  # per chip: the partitioned program one device runs
  hbm_traffic = float(cost.get("bytes accessed", 0.0))
  roofline_s = max(flops / chip.bf16_flops, hbm_traffic / chip.hbm_bytes_per_s)
  step_s = float(cost.get("optimal_seconds", 0.0)) or roofline_s
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
      "hbm_bytes_accessed_per_chip": hbm_traffic, "step_time_s": step_s, "roofline_step_time_s": roofline_s,
      "mfu": model_flops / (step_s * chip.bf16_flops * topology.num_chips) if step_s and model_flops else None,
      "estimated_time": estimate_time and loops == 0, "loops_in_counted_program": loops,
      "peak_bf16_flops_per_chip": chip.bf16_flops, "fits": total <= chip.hbm_bytes,
      "examples_per_s": config.batch_size / step_s if step_s else None,
  }


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
