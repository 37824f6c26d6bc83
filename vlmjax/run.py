"""Run folders and bundles: which files a run keeps where, and loading its params at a step.

A training run's folder (`RunDir`, the `--workdir` of `vlmjax.train`):

  config.json        the run's config (JSON, never unpickled)
  tokenizer.model    the SentencePiece model, when the config names none (trained on the captions)
  checkpoints/       orbax: the train state and the data position per step (`checkpoint.Checkpointer`)
  metrics.jsonl      one JSON record per logged step
  tensorboard/       TensorBoard event files
  eval_results.json  the final evaluation (with its step)
  eval_results/      step_N.json: evaluations of earlier steps (`vlmjax.evaluate --step N`)

An inference bundle (`Bundle`, written by `vlmjax.export`): `params/` (orbax) or `params.safetensors`,
`config.json` (its tokenizer.path cleared), `tokenizer.model` (absent for an imported model without
one) and `bundle.json` ({"step", "dtype", "model", "format", "vocab_size", "source"}).

Both load alike: `open_run(path).load(step, mesh)` -> `Loaded(config, model, params, tokenizer,
step, experiment)`, the params restored onto `mesh` (default: this process's first device) without
any optimizer state.
"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from vlmjax import experiment as experiment_lib, sharding, trainer
from vlmjax.checkpoint import Checkpointer
from vlmjax.data.tokenizer import Tokenizer


@dataclasses.dataclass
class Loaded:
  config: ml_collections.ConfigDict
  model: object
  params: dict
  tokenizer: Tokenizer | None
  step: int
  experiment: experiment_lib.Experiment


def one_device_mesh():
  return sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])


def read_config(path: str, what: str) -> ml_collections.ConfigDict:
  """A config.json -> ConfigDict; FileNotFoundError / ValueError naming the file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what}: '{path}' does not exist (is '{os.path.dirname(path)}' a {what}?)")
  try:
    with open(path, encoding="utf-8") as f:
      return ml_collections.ConfigDict(json.load(f))
  except ValueError:
    raise ValueError(f"{what}: '{path}' is not valid JSON") from None


class RunDir:
  """A training run's folder: its file names, and its params at any saved step."""
  CONFIG = "config.json"
  TOKENIZER = "tokenizer.model"
  CHECKPOINTS = "checkpoints"
  METRICS = "metrics.jsonl"
  TENSORBOARD = "tensorboard"
  EVAL_RESULTS = "eval_results.json"
  EVAL_STEPS = "eval_results"  # step_N.json: `vlmjax.evaluate --step N`
  OUTPUTS = (CHECKPOINTS, METRICS, TENSORBOARD, EVAL_RESULTS, EVAL_STEPS, TOKENIZER, CONFIG)  # what a run writes

  def __init__(self, path: str):
    self.path = path

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  @property
  def checkpoint_dir(self) -> str:
    return os.path.abspath(self.file(self.CHECKPOINTS))

  def read_config(self) -> ml_collections.ConfigDict:
    return read_config(self.file(self.CONFIG), "training workdir")

  def tokenizer_file(self, config) -> str:
    """The config's own tokenizer, else the one the run trained and saved here."""
    return config.tokenizer.path or self.file(self.TOKENIZER)

  def checkpointer(self, every_steps: int = 0, keep: int = 1, async_save: bool = False,
                   cleanup: bool = False) -> Checkpointer:
    return Checkpointer(self.checkpoint_dir, every_steps, keep, async_save, cleanup)

  def steps(self) -> list[int]:
    """The steps saved in checkpoints/, oldest first."""
    if not os.path.isdir(self.checkpoint_dir):
      return []
    checkpointer = self.checkpointer()
    try:
      return sorted(checkpointer.manager.all_steps())
    finally:
      checkpointer.close()

  def restore_params(self, abstract_params, step: int | None = None):
    """-> (params, step): the params at `step` (default: the newest that restores, a damaged newer
    one reported in one line and left in place: a reader does not own the run), placed by
    `abstract_params`' shardings; a subtree of the params is read alone (partial restore).
    FileNotFoundError naming the folder, the missing step, or the step that cannot be restored."""
    steps = self.steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in '{self.checkpoint_dir}'")
    if step is not None and step not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} in '{self.checkpoint_dir}' "
                              f"(steps: {', '.join(map(str, steps))})")
    checkpointer = self.checkpointer()
    try:
      return checkpointer.read_params(abstract_params, step)
    finally:
      checkpointer.close()

  def load(self, step: int | None = None, mesh=None) -> Loaded:
    """The run's model and params at `step` (default: the newest) on `mesh` (default: one device)."""
    config = self.read_config()
    tokenizer = Tokenizer.load(self.tokenizer_file(config))
    experiment = experiment_lib.build(config, tokenizer.vocab_size, mesh=mesh or one_device_mesh(),
                                      objectives=False, validate=False)
    params, step = self.restore_params(experiment.abstract_params(), step)
    return Loaded(config, experiment.model, params, tokenizer, step, experiment)


class Bundle:
  """An inference bundle: the params alone, the config and the tokenizer (`vlmjax.export`)."""
  CONFIG = "config.json"
  INFO = "bundle.json"
  TOKENIZER = "tokenizer.model"
  PARAMS = "params"                       # orbax
  SAFETENSORS = "params.safetensors"

  def __init__(self, path: str):
    self.path = path

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  @classmethod
  def holds_one(cls, path: str) -> bool:
    return os.path.exists(os.path.join(path, cls.INFO))

  def read_config(self) -> ml_collections.ConfigDict:
    return read_config(self.file(self.CONFIG), "bundle")

  def info(self) -> dict:
    path = self.file(self.INFO)
    if not os.path.exists(path):
      raise FileNotFoundError(f"bundle: '{path}' is missing (is '{self.path}' a bundle?)")
    with open(path, encoding="utf-8") as f:
      return json.load(f)

  def tokenizer(self) -> Tokenizer | None:
    path = self.file(self.TOKENIZER)
    return Tokenizer.load(path) if os.path.exists(path) else None

  def read_params(self, placement=None):
    """The params (orbax or safetensors), placed by `placement` (default: the first device)."""
    orbax_path, safetensors_path = os.path.abspath(self.file(self.PARAMS)), self.file(self.SAFETENSORS)
    placement = placement or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if os.path.exists(safetensors_path):
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
      return jax.tree.map(lambda x: jax.device_put(x, placement), unflatten(load_file(safetensors_path)))
    if not os.path.exists(orbax_path):
      raise FileNotFoundError(f"bundle: '{orbax_path}' (or {self.SAFETENSORS}) is missing")
    with ocp.StandardCheckpointer() as ckptr:
      meta = ckptr.metadata(orbax_path).item_metadata
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=placement), meta)
      return ckptr.restore(orbax_path, target)

  def load(self, step: int | None = None, mesh=None, dtype: str | None = None) -> Loaded:
    """The bundle's model and params replicated over `mesh` (default: one device), cast to `dtype`
    when given, checked against the model's shapes. A bundle holds one step."""
    config, info = self.read_config(), self.info()
    if step is not None and step != int(info["step"]):
      raise FileNotFoundError(f"bundle: '{self.path}' holds step {info['step']}, not {step}")
    tokenizer = self.tokenizer()
    vocab_size = tokenizer.vocab_size if tokenizer else int(info["vocab_size"])
    mesh = mesh or one_device_mesh()
    experiment = experiment_lib.build(config, vocab_size, mesh=mesh, objectives=False, validate=False)
    params = self.read_params(sharding.replicated(mesh))
    check_params(params, experiment.abstract_params(), f"bundle '{self.path}'")
    if dtype is not None:
      params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)
    return Loaded(config, experiment.model, params, tokenizer, int(info["step"]), experiment)


def read_metrics(workdir: str) -> list[dict]:
  """A run folder's metrics.jsonl records, in order."""
  path = RunDir(workdir).file(RunDir.METRICS)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def drop_metrics_after(workdir: str, step: int):
  """Removes metrics.jsonl records past `step`: what a killed run logged after its last checkpoint,
  which the resumed run logs again (so each step appears once), and a line a kill cut short.
  TensorBoard's event files keep both."""
  path = RunDir(workdir).file(RunDir.METRICS)
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


def open_run(path: str) -> RunDir | Bundle:
  """A bundle when `path` holds bundle.json, else a training run's folder."""
  return Bundle(path) if Bundle.holds_one(path) else RunDir(path)


def unflatten(flat: dict) -> dict:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
  tree = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def check_params(params, expected, where: str):
  """Raises ValueError naming the first param of `params` missing, extra or of another shape than
  in `expected` (a tree of ShapeDtypeStructs)."""
  got = {trainer.path_str(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  want = {trainer.path_str(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(expected)[0]}
  for path, shape in want.items():
    if path not in got:
      raise ValueError(f"{where}: param '{path}' is missing (the model expects shape {tuple(shape)})")
    if tuple(got[path]) != tuple(shape):
      raise ValueError(f"{where}: param '{path}' has shape {tuple(got[path])}, the model expects {tuple(shape)}")
  extra = sorted(set(got) - set(want))
  if extra:
    raise ValueError(f"{where}: param '{extra[0]}' is not a param of this model")
