"""Ahead-of-time compile of a config's real train step for a TPU slice, on any machine (no TPU needed).

  python -m vlmjax.compile --config configs/clip_b16.py --topology v5p-64 [--config.k=v ...] [--json F]

libtpu describes the slice (`jax.experimental.topologies.get_topology_desc`: compile-only devices);
the mesh, train state and step are the ones `vlmjax.train` builds (`trainer.abstract_train_state`,
`trainer.make_train_step`), lowered with abstract arrays and compiled by the TPU compiler. Reports,
per chip: memory (arguments = params + optimizer state + batch, temporaries, total against the chip's
HBM), the step's FLOPs, an estimated step time and MFU. Exits 1 with one line when the step would not
fit in HBM, 2 for a bad argument or config.

Memory is the compiler's own account of the step as it runs. FLOPs and time are estimates, from the
same step with its layer scans unrolled (XLA's cost analysis counts a loop body once): the step time
is the TPU compiler's cost model (compute and HBM traffic; ICI collectives are not modelled), MFU is
the model's matmul FLOPs (`vlmjax.flops`, no rematerialisation) over that time × the chip's peak.
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


def abstract_batch(config, fields, batch_sharding):
  """ShapeDtypeStructs of a global batch as the input pipeline makes it, with the objectives' extra
  `fields` (image_view2, text_view2, negative_text, multi_text)."""
  import jax  # pylint: disable=import-outside-toplevel
  from vlmjax import trainer  # pylint: disable=import-outside-toplevel
  from vlmjax.data.shapes import NEGATIVE_KINDS  # pylint: disable=import-outside-toplevel
  batch = {k: (config.batch_size, *v.shape[1:], v.dtype) for k, v in trainer.sample_batch(config).items()}
  extra = {"image_view2": lambda: batch["image"], "text_view2": lambda: batch["text"],
           "negative_text": lambda: (config.batch_size, len(NEGATIVE_KINDS), *batch["text"][1:]),
           "multi_text": lambda: (config.batch_size, config.input.subcaptions + 1, *batch["text"][1:])}
  for field in fields:
    if field not in extra:
      raise CompileError(f"objective batch field '{field}' has no known shape (known: {', '.join(extra)})")
    batch[field] = extra[field]()
  return {k: jax.ShapeDtypeStruct(v[:-1], v[-1], sharding=batch_sharding) for k, v in batch.items()}


def unrolled(config):
  """The config with its transformer stacks unrolled (`scan` False): XLA's cost analysis counts a
  loop's body once, so FLOPs and time are estimated on the unrolled step (the same computation)."""
  from vlmjax import registry  # pylint: disable=import-outside-toplevel
  config = config.copy_and_resolve_references()

  def visit(section):
    for key in list(section.keys()):
      if key == "scan":
        section[key] = False
      elif hasattr(section[key], "keys"):
        visit(section[key])

  with config.unlocked():
    for tower in getattr(registry.get("model", config.model.name), "towers", {}):
      if tower in config.model:
        config.model[tower]["scan"] = False
    visit(config.model)
  return config


def compile_step(config, topology: Slice, estimate_time: bool = True) -> dict:
  """Compiles the train step of `config` for `topology`; -> the report (see `format_report`).
  `estimate_time`: also compile the unrolled step for XLA's FLOPs and time estimate (slower)."""
  import jax  # pylint: disable=import-outside-toplevel
  from vlmjax import config as config_lib, flops as flops_lib, sharding, trainer  # pylint: disable=import-outside-toplevel
  from vlmjax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel

  devices = topology_devices(topology)
  try:
    mesh = sharding.make_mesh(config.mesh, devices)
  except ValueError as e:
    raise config_lib.ConfigError(f"config: {e}") from None
  config_lib.validate(config, mesh.size, sharding.batch_axes_size(mesh), topology.num_hosts)
  vocab = Tokenizer.load(config.tokenizer.path).vocab_size if config.tokenizer.path else config.tokenizer.vocab_size
  rules = sharding.rules_from_config(config.sharding_rules)

  def lower(config):
    model = trainer.build_model(config, vocab)
    objectives = trainer.build_objectives(config)
    tx, schedule = trainer.make_optimizer(config.optimizer, max(config.total_steps, 2))
    fields = sorted({f for _, o in objectives.values() for f in getattr(o, "batch_fields", ())})
    abstract, shardings = trainer.abstract_train_state(model, tx, trainer.sample_batch(config), mesh, rules)
    batch = abstract_batch(config, fields, sharding.batch_sharding(mesh))
    step = trainer.make_train_step(model, objectives, tx, schedule, mesh, shardings,
                                   microbatches=config.microbatches, rules=rules)
    with jax.set_mesh(mesh):
      return step.lower(abstract, batch), abstract, batch

  lowered, abstract, batch = lower(config)
  memory = lowered.compile().memory_analysis()  # of the step as it runs (scanned)
  chip = topology.chip
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
           + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
  estimate_time = estimate_time and total <= chip.hbm_bytes
  cost = (lower(unrolled(config))[0].compile().cost_analysis() or {}) if estimate_time else {}
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
      "memory": {"arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
                 "aliased": memory.alias_size_in_bytes, "temporaries": memory.temp_size_in_bytes,
                 "code": memory.generated_code_size_in_bytes, "total": total, "hbm": chip.hbm_bytes},
      "flops_per_chip": flops, "flops_per_step": flops * topology.num_chips, "model_flops_per_step": model_flops,
      "hbm_bytes_accessed_per_chip": hbm_traffic, "step_time_s": step_s, "roofline_step_time_s": roofline_s,
      "mfu": model_flops / (step_s * chip.bf16_flops * topology.num_chips) if step_s and model_flops else None,
      "estimated_time": estimate_time,
      "peak_bf16_flops_per_chip": chip.bf16_flops, "fits": total <= chip.hbm_bytes,
      "examples_per_s": config.batch_size / step_s if step_s else None,
  }


def _gib(n) -> str:
  return f"{n / 2**30:.2f} GiB"


def format_report(r: dict) -> str:
  m = r["memory"]
  rows = [
      ("slice", f"{r['topology']} ({r['libtpu_topology']}, {r['chips']} chips, {r['hosts']} hosts, {r['device_kind']})"),
      ("mesh", " × ".join(f"{k}={v}" for k, v in r["mesh"].items())),
      ("batch", f"{r['batch_size']} global, {r['per_chip_batch']} per chip, {r['microbatches']} microbatch(es)"),
      ("params", f"{r['params'] / 1e6:.1f} M"),
      ("memory per chip: arguments", f"{_gib(m['arguments'])} (params, optimizer state, batch)"),
      ("memory per chip: temporaries", f"{_gib(m['temporaries'])} (activations, gradients, collectives)"),
      ("memory per chip: total", f"{_gib(m['total'])} of {_gib(m['hbm'])} HBM ({100 * m['total'] / m['hbm']:.0f}%)"),
  ]
  if r["model_flops_per_step"]:
    rows.append(("model FLOPs per step", f"{r['model_flops_per_step']:.3e} (matmuls, forward + backward)"))
  if r["estimated_time"]:
    rows += [
        ("compiled FLOPs per step", f"{r['flops_per_step']:.3e} ({r['flops_per_chip']:.3e} per chip, remat included)"),
        ("estimated step time", f"{r['step_time_s'] * 1e3:.1f} ms (XLA's TPU cost model; compute-or-HBM "
                                f"roofline {r['roofline_step_time_s'] * 1e3:.1f} ms; ICI collectives not modelled)"),
        ("estimated throughput", f"{r['examples_per_s']:,.0f} examples/s"),
    ]
    if r["mfu"] is not None:
      rows.append(("estimated MFU", f"{100 * r['mfu']:.1f}% of {r['peak_bf16_flops_per_chip'] / 1e12:.0f} "
                                    "TFLOP/s bf16 per chip"))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def fail(message, status: int = 2):
  text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
  print(f"vlmjax.compile: error: {text}", file=sys.stderr)
  sys.exit(status)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from vlmjax import config as config_lib, registry  # pylint: disable=import-outside-toplevel
  from vlmjax.metrics import quiet_absl_logging  # pylint: disable=import-outside-toplevel
  quiet_absl_logging()
  if FLAGS.config is None or FLAGS.topology is None:
    fail("--config and --topology are required")
  try:
    topology = parse_topology(FLAGS.topology)
    report = compile_step(FLAGS.config, topology, FLAGS.estimate_time)
  except (CompileError, config_lib.ConfigError, registry.RegistryError, OSError) as e:
    fail(e)
  except Exception as e:  # the TPU compiler reports what does not fit as an error
    if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
      first = next((line for line in str(e).splitlines() if "memory" in line.lower()), str(e).splitlines()[0])
      fail(f"does not fit on {FLAGS.topology}: {first.strip()[:300]}", 1)
    raise
  print(format_report(report))
  if FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)
  if not report["fits"]:
    fail(f"does not fit on {FLAGS.topology}: {_gib(report['memory']['total'])} per chip > "
         f"{_gib(report['memory']['hbm'])} HBM", 1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
