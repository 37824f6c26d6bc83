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
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from vlmjax import config as config_lib, experiment as experiment_lib, registry, sharding, trainer
from vlmjax.checkpoint import Checkpointer
from vlmjax.data.tokenizer import Tokenizer
from vlmjax.models.vit import resample_posemb


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

  def restore_params(self, abstract_params, step: int | None = None, ema: bool = False):
    """-> (params, step): the params at `step` (default: the newest that restores, a damaged newer
    one reported in one line and left in place: a reader does not own the run), placed by
    `abstract_params`' shardings; a subtree of the params is read alone (partial restore). `ema`:
    the params' moving average instead (the run's `optimizer.ema_decay` > 0; `check_ema` first).
    FileNotFoundError naming the folder, the missing step, or the step that cannot be restored."""
    steps = self.steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in '{self.checkpoint_dir}'")
    if step is not None and step not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} in '{self.checkpoint_dir}' "
                              f"(steps: {', '.join(map(str, steps))})")
    checkpointer = self.checkpointer()
    try:
      return checkpointer.read_params(abstract_params, step, "ema" if ema else "params")
    finally:
      checkpointer.close()

  def check_ema(self, config, flag: str = "--ema"):
    """ValueError (one line naming `flag`) unless the run keeps an EMA of its params: a checkpoint
    without one would only report that no step restores."""
    if not float(config.optimizer.get("ema_decay", 0.0)) > 0:
      raise ValueError(f"{flag}: the run in '{self.path}' keeps no EMA of its params (its optimizer.ema_decay "
                       "is 0); leave out --ema")

  def load(self, step: int | None = None, mesh=None, image_size: int | None = None, ema: bool = False) -> Loaded:
    """The run's model and params at `step` (default: the newest) on `mesh` (default: one device);
    with `image_size`, a model at that `input.image_size`, the params resampled to it (`resized_params`);
    `ema`: the params' moving average (ValueError when the run keeps none)."""
    config = self.read_config()
    if ema:
      self.check_ema(config)
    tokenizer = Tokenizer.load(self.tokenizer_file(config))
    experiment = experiment_lib.build(config, tokenizer.vocab_size, mesh=mesh or one_device_mesh(),
                                      objectives=False, validate=False)
    params, step = self.restore_params(experiment.abstract_params(), step, ema)
    if image_size is not None and image_size != config.input.image_size:
      # Restored at the run's own shapes above, then moved to the model of the other size.
      config = at_image_size(config, image_size, f"training workdir '{self.path}'")
      experiment = experiment_lib.build(config, tokenizer.vocab_size, mesh=experiment.mesh, objectives=False,
                                        validate=False)
      params = resized_params(params, experiment.abstract_params(), f"training workdir '{self.path}'")
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

  def load(self, step: int | None = None, mesh=None, dtype: str | None = None,
           image_size: int | None = None) -> Loaded:
    """The bundle's model and params replicated over `mesh` (default: one device), cast to `dtype`
    when given, checked against the model's shapes. A bundle holds one step. With `image_size`, a
    model at that `input.image_size` (the config's other keys as saved), the params resampled to it
    (`resized_params`)."""
    config, info = self.read_config(), self.info()
    if step is not None and step != int(info["step"]):
      raise FileNotFoundError(f"bundle: '{self.path}' holds step {info['step']}, not {step}")
    resize = image_size is not None and image_size != config.input.image_size
    if resize:
      config = at_image_size(config, image_size, f"bundle '{self.path}'")
    tokenizer = self.tokenizer()
    vocab_size = tokenizer.vocab_size if tokenizer else int(info["vocab_size"])
    mesh = mesh or one_device_mesh()
    experiment = experiment_lib.build(config, vocab_size, mesh=mesh, objectives=False, validate=False)
    params = self.read_params(sharding.replicated(mesh))
    if resize:
      params = resized_params(params, experiment.abstract_params(), f"bundle '{self.path}'")
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


def at_image_size(config, image_size: int, where: str) -> ml_collections.ConfigDict:
  """A copy of `config` with `input.image_size` = `image_size`. ConfigError (one line naming `where`)
  unless the image tower can take it (at least one patch)."""
  if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
    raise config_lib.ConfigError(f"{where}: 'image_size' {image_size!r} must be a positive integer")
  config = ml_collections.ConfigDict(config.to_dict())
  config.input.image_size = image_size
  try:
    config_lib._check_input_sizes(config, registry.get("model", config.model.name))  # pylint: disable=protected-access
  except (config_lib.ConfigError, registry.RegistryError) as e:
    message = str(e).removeprefix("config: ").replace("'input.image_size'", "'image_size'")
    raise config_lib.ConfigError(f"{where}: {message}") from None
  return config


def resample_posembs(params, expected):
  """`params` with each ViT position table whose length differs from `expected`'s (a tree of arrays
  or ShapeDtypeStructs: the model's params, or any subtree of them) resampled to that length's
  square grid by `vit.resample_posemb`: a checkpoint of another image size or patch grid. A ViT's
  table is the 'pos_embedding' beside a 'patch_embed' in `params` (a text tower's has none); a
  'cls' beside it means its first row is the class token's, which is kept. Everything else is
  returned as it is, for `check_params` to judge."""
  if not isinstance(params, dict) or not isinstance(expected, dict):
    return params
  out = {k: resample_posembs(v, expected[k]) if k in expected else v for k, v in params.items()}
  old, new = params.get("pos_embedding"), expected.get("pos_embedding")
  if "patch_embed" not in params or not hasattr(old, "shape") or not hasattr(new, "shape"):
    return out
  if len(old.shape) != 3 or len(new.shape) != 3 or old.shape[::2] != new.shape[::2] or old.shape == new.shape:
    return out
  prefix = 1 if "cls" in params else 0
  side = math.isqrt(max(new.shape[1] - prefix, 0))
  if side * side == new.shape[1] - prefix:
    try:
      out["pos_embedding"] = resample_posemb(old, (side, side), prefix)
    except ValueError:  # the source's table is no square grid: left for check_params to report
      pass
  return out


def resized_params(params, abstract_params, where: str):
  """`params` for the model of `abstract_params` (ShapeDtypeStructs with shardings) at another image
  size or patch grid: its ViT position tables resampled (`resample_posembs`), every param checked
  (`check_params`: any other difference is an error naming it) and placed by the abstract's shardings,
  each in its own dtype."""
  params = resample_posembs(params, abstract_params)
  check_params(params, abstract_params, where)
  return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), params, abstract_params)
