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

  def __init__(self, directory: str, every_steps: int, keep: int, async_save: bool = True,
               cleanup: bool = False):
    """Checkpoints in `directory` (a run folder's `checkpoints/`, `run.RunDir`). `cleanup`: delete
    incomplete (temporary) step folders; only for the process that writes, not for a reader
    (evaluate, export) that may look at a folder a run is still saving into."""
    self.directory = os.path.abspath(directory)
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

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
