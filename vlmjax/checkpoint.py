"""Checkpoints: an orbax CheckpointManager with two items, the train state and the grain iterator.

Saving is asynchronous and keeps the last `keep`; restoring reads the newest complete checkpoint onto
whatever mesh the restore target's shardings name, so a run saved on 8 devices resumes on 1. Orbax
writes each step to a temporary folder and renames it when complete, so an interrupted save never
replaces the previous checkpoint.
"""
import os

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, workdir: str, every_steps: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.every_steps = every_steps
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int, total_steps: int) -> bool:
    return step == total_steps or (self.every_steps > 0 and step % self.every_steps == 0)

  def save(self, step: int, state, data_iterator=None):
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items))

  def restore(self, abstract_state, data_iterator=None, step: int | None = None):
    """-> train state at `step` (default: latest), placed by `abstract_state`'s shardings; the data
    iterator, if given, is moved to where it was when that state was saved."""
    step = self.latest_step() if step is None else step
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
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
