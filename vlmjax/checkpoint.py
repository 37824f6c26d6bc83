"""Checkpoints: an orbax CheckpointManager with two items, the train state and the grain iterator.

Saving is asynchronous and keeps the last `keep`; restoring reads the newest complete checkpoint onto
whatever mesh the restore target's shardings name, so a run saved on 8 devices resumes on 1. Orbax
writes each step to a temporary folder and renames it when complete, so an interrupted save (even a
SIGKILL) never replaces the previous checkpoint: a step folder is only listed once complete, and the
trainer's Checkpointer (`cleanup=True`) deletes the temporary folders an interrupted run left. Nothing
is unpickled: the state is read with StandardRestore (tensorstore + JSON), the data position is JSON.

Every process writes: its shards of the state, and its own data-iterator file. A checkpoint restores
onto any number of processes: the state by its shardings, the data position from the files of the
processes that wrote it (identical by construction, see `pipeline.train_dataset`).
"""
import dataclasses
import json
import os
import re

import grain
import jax
import orbax.checkpoint as ocp


class DataIteratorHandler(grain.checkpoint.CheckpointHandler):
  """grain's handler (one `process_{i}-of-{n}.json` per process), restoring onto another process
  count too: when this process has no file of its own, it reads the others', which must agree."""

  def restore(self, directory, item=None, args=None):
    item = item or args.item
    if (directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json").exists():
      return super().restore(directory, item, args)
    states = {f.name: f.read_text() for f in directory.glob("process_*-of-*.json")}
    if len(set(states.values())) != 1:
      raise ValueError(f"checkpoint: {directory} holds data-iterator states {sorted(states)}, none for "
                       f"process {jax.process_index()} of {jax.process_count()} and not all equal")
    item.set_state(json.loads(next(iter(states.values()))))
    item.start_prefetch()
    return item


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  item: object


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  item: object


class Checkpointer:

  def __init__(self, workdir: str, every_steps: int, keep: int, async_save: bool = True,
               cleanup: bool = False):
    """`cleanup`: delete incomplete (temporary) step folders; only for the process that writes, not
    for a reader (evaluate, export) that may look at a workdir a run is still saving into."""
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.every_steps = every_steps
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=cleanup),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int, total_steps: int) -> bool:
    return step == total_steps or (self.every_steps > 0 and step % self.every_steps == 0)

  def save(self, step: int, state, data_iterator=None):
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = DataSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items))

  def restore(self, abstract_state, data_iterator=None, step: int | None = None):
    """-> train state at `step` (default: latest), placed by `abstract_state`'s shardings; the data
    iterator, if given, is moved to where it was when that state was saved."""
    step = self.latest_step() if step is None else step
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = DataRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def restore_params(self, abstract_params, step: int | None = None):
    """Only the params (for evaluation and export); the optimizer state is not read."""
    step = self.latest_step() if step is None else step
    target = {"params": abstract_params}
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=jax.tree.map(
                lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), target),
            partial_restore=True)))
    return restored["state"]["params"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _select(tree, pattern: str, prefix: str = ""):
  """The nested-dict subtree of leaves whose '/'-joined path matches `pattern` (re.search)."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      sub = _select(value, pattern, path + "/")
      if sub:
        out[key] = sub
    elif re.search(pattern, path):
      out[key] = value
  return out


def _merge(tree, update):
  return {k: _merge(v, update[k]) if isinstance(v, dict) and k in update else update.get(k, v)
          for k, v in tree.items()}


def init_params_from(workdir: str, params, pattern: str, step: int | None = None):
  """`params` with the leaves whose path matches `pattern` (e.g. '^image/') replaced by those of the
  newest checkpoint in another run's `workdir` (LiT: start from a trained tower, then lock it), or of
  an inference bundle (`vlmjax.export`, e.g. imported open_clip / HF weights) when `workdir` is one.

  Raises ValueError naming the workdir, or the first param missing from it or of another shape.
  """
  wanted = _select(params, pattern)
  if not wanted:
    raise ValueError(f"init.params: '{pattern}' matches no parameter of this model")
  if os.path.exists(os.path.join(workdir, "bundle.json")):
    return _merge(params, _from_bundle(workdir, wanted, pattern))
  source = Checkpointer(workdir, every_steps=0, keep=1, async_save=False)
  if source.latest_step() is None:
    raise ValueError(f"init.workdir: no checkpoint in {source.directory}")
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), wanted)
  try:
    loaded = source.restore_params(abstract, step)
  except (ValueError, KeyError, FileNotFoundError) as e:
    loaded = _restaged(workdir, wanted, step)
    if loaded is None:
      raise ValueError(f"init.workdir: {workdir} does not hold params matching '{pattern}' with this "
                       f"model's shapes ({str(e).splitlines()[0][:200]})") from None
  finally:
    source.close()
  return _merge(params, loaded)


def load_run_params(workdir: str, step: int | None = None):
  """Another run's (config, model, params as host arrays, tokenizer) with its own model's layout."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from vlmjax import trainer  # trainer imports this module  # pylint: disable=import-outside-toplevel
  from vlmjax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  tokenizer = Tokenizer.load(config.tokenizer.path or os.path.join(workdir, "tokenizer.model"))
  model = trainer.build_model(config, tokenizer.vocab_size)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(lambda r: nn.meta.unbox(model.init(r, **trainer.model_inputs(
      model, trainer.sample_batch(config), False))["params"]), jax.random.PRNGKey(0))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
  source = Checkpointer(workdir, every_steps=0, keep=1, async_save=False)
  try:
    if source.latest_step() is None:
      raise ValueError(f"no checkpoint in {source.directory}")
    params = jax.device_get(source.restore_params(abstract, step))
  finally:
    source.close()
  return config, model, params, tokenizer


def _restaged(workdir: str, wanted, step):
  """`wanted`'s decoder from a run whose decoder has other PyramidDrop stages (an LM run starting a
  PyramidDrop VLM), re-split into this model's stages; None when that is not the mismatch."""
  from vlmjax.models.decoder import restage  # pylint: disable=import-outside-toplevel
  if "decoder" not in wanted or not os.path.exists(os.path.join(workdir, "config.json")):
    return None
  try:
    _, _, source, _ = load_run_params(workdir, step)
    if "decoder" not in source:
      return None
    others = {k: v for k, v in wanted.items() if k != "decoder"}
    tree = {**_select_like(source, others), "decoder": restage(source["decoder"], wanted["decoder"])}

    def place(x, w):
      if tuple(x.shape) != tuple(w.shape):
        raise ValueError(f"shape {tuple(x.shape)} against {tuple(w.shape)}")
      return jax.device_put(jax.numpy.asarray(x, w.dtype), w.sharding)
    return jax.tree.map(place, tree, wanted)
  except (ValueError, KeyError, TypeError):
    return None


def _select_like(source, like):
  """The subtree of `source` with the keys of `like` (KeyError when one is missing)."""
  if isinstance(like, dict):
    return {k: _select_like(source[k], v) for k, v in like.items()}
  return source


def _from_bundle(bundle: str, wanted, pattern: str):
  """The leaves of `wanted` (arrays) from a bundle's params, cast and placed like them."""
  from vlmjax import export  # export imports this module
  loaded = _select(export.load_bundle_params(bundle), pattern)
  missing = [p for p, _ in jax.tree_util.tree_flatten_with_path(wanted)[0]
             if not _has_path(loaded, [getattr(k, "key", k) for k in p])]
  if missing:
    path = "/".join(str(getattr(k, "key", k)) for k in missing[0])
    raise ValueError(f"init.workdir: bundle {bundle} has no param '{path}' (matching '{pattern}')")

  def take(path, x):
    y = loaded
    for k in path:
      y = y[getattr(k, "key", k)]
    if tuple(y.shape) != tuple(x.shape):
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      raise ValueError(f"init.workdir: bundle {bundle} param '{name}' has shape {tuple(y.shape)}, this "
                       f"model's {tuple(x.shape)}")
    return jax.device_put(y.astype(x.dtype), x.sharding)

  return jax.tree_util.tree_map_with_path(take, wanted)


def _has_path(tree, keys) -> bool:
  for k in keys:
    if not isinstance(tree, dict) or k not in tree:
      return False
    tree = tree[k]
  return True
