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

A step that cannot be restored (a truncated array file, a garbled JSON, an empty folder) is reported
in one line and the newest older step that restores is used instead. The trainer, which owns the
run, moves the damaged folder aside to `checkpoints/damaged-<step>`; a reader (evaluate, export,
init) leaves it where it is. Nothing is deleted, and when no step restores nothing is moved.

A save that cannot write (a full or read-only disk) raises CheckpointSaveError, one line naming the
step, the folder and the OS error; the steps saved before it are complete and stay as they are (orbax
deletes the ones beyond `keep` only once a new step is complete).
"""
import dataclasses
import json
import logging
import os
import sys

import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

# A step folder moved aside is renamed `damaged-<step>`: orbax lists (and so restores, and deletes to
# keep the last `keep`) only folders named by a bare number, and cleans up only its `.orbax-checkpoint-
# tmp` folders, so it never touches these.
DAMAGED = "damaged-"


class CheckpointError(FileNotFoundError):
  """No step can be restored; a FileNotFoundError, which every command reports in one line."""


class CheckpointSaveError(OSError):
  """A step could not be written (full or read-only disk, ...); an OSError, which every command
  reports in one line. The earlier steps are complete and restorable."""


class DataIteratorHandler(grain.checkpoint.CheckpointHandler):
  """The data position (`pipeline.TrainBatches.get_state()`, a small dict) as JSON, one
  `process_{i}-of-{n}.json` per process, as grain's handler names them; restoring onto another process
  count too: when this process has no file of its own, it reads the others', which must agree."""

  def save(self, directory, item=None, args=None):
    item = item or args.item
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    (directory / name).write_text(json.dumps(item.get_state(), indent=1))

  def restore(self, directory, item=None, args=None):
    item = item or args.item
    own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    states = {f.name: f.read_text() for f in ([own] if own.exists() else directory.glob("process_*-of-*.json"))}
    if len({json.dumps(json.loads(s), sort_keys=True) for s in states.values()}) != 1:
      raise ValueError(f"checkpoint: {directory} holds data-iterator states {sorted(states)}, none for "
                       f"process {jax.process_index()} of {jax.process_count()} and not all equal")
    item.set_state(json.loads(next(iter(states.values()))))
    return item


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  item: object


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  item: object


def _describe(e: Exception) -> str:
  """'Type: message' on one line of at most about 200 characters. A long message keeps its end too:
  tensorstore's names the file and what is wrong with it last."""
  message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  message = next((line for line in message.splitlines() if line.strip()), "")
  message = " ".join(message.split(" [tensorstore_spec")[0].split())  # then its whole spec as JSON
  if len(message) > 200:
    message = f"{message[:80]} ... {message[-115:]}"
  return f"{type(e).__name__}: {message}"


class _AbandonedReads(logging.Filter):
  """Drops asyncio's report of a read, in one of `directories`, whose error nobody retrieved."""

  def __init__(self):
    super().__init__()
    self.directories = set()

  def filter(self, record):
    message = str(record.msg)
    return not ("exception was never retrieved" in message.split("\n", 1)[0] and
                any(d in message for d in self.directories))


def _quiet_abandoned_reads(directory: str):
  """A failed restore abandons the other reads in flight. As each finishes, asyncio logs a traceback
  (its error was never retrieved) or Python prints one (its callback finds orbax's event loop closed):
  from other threads, often after the restore has returned, up to hundreds, none saying more than the
  error the restore raised. Those about `directory`, and the closed loop's, are dropped for the rest of
  the process; any other asyncio error or unraisable exception is reported as before."""
  asyncio_logger = logging.getLogger("asyncio")
  quiet = next((f for f in asyncio_logger.filters if isinstance(f, _AbandonedReads)), None)
  if quiet is None:
    quiet = _AbandonedReads()
    asyncio_logger.addFilter(quiet)
  quiet.directories.add(directory)
  _quiet_closed_loop()


def _quiet_closed_loop():
  previous = sys.unraisablehook
  if getattr(previous, "vlmjax_quiet_closed_loop", False):
    return

  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
      return
    previous(unraisable)
  hook.vlmjax_quiet_closed_loop = True
  sys.unraisablehook = hook


class _SaveFailures(logging.Filter):
  """Drops orbax's error records that carry an exception, keeping the last exception. A failed save
  logs its error (with a traceback) from each of its threads, several times; the Checkpointer raises
  that error itself, as one line, when the save is waited for."""

  def __init__(self):
    super().__init__()
    self.last = None

  def filter(self, record):
    if record.levelno >= logging.ERROR and record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
      self.last = record.exc_info[1]
      return False
    return True


def _save_failures() -> _SaveFailures:
  """The filter on the logger orbax logs through (absl's), installed once per process."""
  absl_logger = logging.getLogger("absl")
  failures = next((f for f in absl_logger.filters if isinstance(f, _SaveFailures)), None)
  if failures is None:
    failures = _SaveFailures()
    absl_logger.addFilter(failures)
  return failures


def _on_every_process(ok: bool) -> bool:
  """Whether `ok` holds on every process: they must all use the same step."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _restore_newest(directory: str, steps, restore_step):
  """-> (result, step, failed): `restore_step(step)` of the newest of `steps` (in `directory`) that
  restores on every process, and [(step, reason)] of the newer ones that did not, newest first;
  (None, None, failed) when none does."""
  _quiet_abandoned_reads(directory)
  failed = []
  for step in sorted(steps, reverse=True):
    try:
      result, reason = restore_step(step), None
    except Exception as e:  # pylint: disable=broad-except  # orbax, tensorstore, json: many types for damage
      result, reason = None, _describe(e)
    if _on_every_process(reason is None):
      return result, step, failed
    failed.append((step, reason or "it failed on another process"))
  return None, None, failed


def _cannot_restore(directory: str, step: int, reason: str) -> str:
  return f"checkpoint: step {step} in '{directory}' cannot be restored ({reason})"


def _none_restores(directory: str, failed, named: bool = False) -> CheckpointError:
  """The error for `failed` ([(step, reason)], newest first: every step tried); `named`: the one step
  the caller asked for."""
  (newest, reason), *_ = failed
  if named:
    return CheckpointError(_cannot_restore(directory, newest, reason))
  steps = ", ".join(str(step) for step, _ in reversed(failed))
  return CheckpointError(f"checkpoint: no step in '{directory}' can be restored (step {newest}: {reason}; "
                         f"saved steps: {steps}); every step folder is left where it is")


def _report(line: str):
  if jax.process_index() == 0:
    print(line, file=sys.stderr, flush=True)


class Checkpointer:

  def __init__(self, directory: str, every_steps: int, keep: int, async_save: bool = True,
               cleanup: bool = False):
    """Checkpoints in `directory` (a run folder's `checkpoints/`, `run.RunDir`). `cleanup`: delete
    incomplete (temporary) step folders; only for the process that writes, not for a reader
    (evaluate, export) that may look at a folder a run is still saving into."""
    self.directory = os.path.abspath(directory)
    self.every_steps = every_steps
    # lightweight_initialize: the steps' own metadata (save time, metrics) is not read when listing
    # them; nothing here uses it, and a damaged step's would log an error each time a manager opens.
    self.options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=cleanup, lightweight_initialize=True)
    self.manager = self._open()
    self.failed = False  # a save failed: the manager is not used (nor closed) again
    self._saving = None  # the step of the save in flight
    self._failures = None

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.directory, options=self.options, item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int, total_steps: int) -> bool:
    return step == total_steps or (self.every_steps > 0 and step % self.every_steps == 0)

  def save(self, step: int, state, data_iterator=None):
    """Saves `step` (in the background when `async_save`). CheckpointSaveError when it, or the
    previous save still in flight, cannot be written."""
    self._finish_save()
    self._check_writable(step)
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = DataSave(data_iterator)
    self._failures = _save_failures()
    self._saving = step
    try:
      self.manager.save(step, args=ocp.args.Composite(**items))
    except (OSError, ValueError) as e:  # tensorstore reports a failed write as a ValueError
      raise self._save_error(step, e) from None
    if not self.options.enable_async_checkpointing:
      self._finish_save()

  def _check_writable(self, step: int):
    """Makes and removes a folder where the step's goes. orbax makes that one in a background thread
    and, when it cannot, the data iterator's save waits for it for minutes before failing: a read-only
    folder is found here first, at once."""
    probe = os.path.join(self.directory, f".write-check-{jax.process_index()}")
    try:
      os.makedirs(probe, exist_ok=True)
      os.rmdir(probe)
    except OSError as e:
      raise self._save_error(step, e) from None

  def _finish_save(self):
    """Waits for the save in flight, if any; CheckpointSaveError when its step is not complete."""
    step, self._saving = self._saving, None
    if step is None:
      return
    try:
      self.manager.wait_until_finished()
    except (OSError, ValueError) as e:
      raise self._save_error(step, e) from None
    if not os.path.isdir(os.path.join(self.directory, str(step))):  # orbax may log a failure and go on
      raise self._save_error(step, self._failures.last)

  def _save_error(self, step: int, error) -> CheckpointSaveError:
    self.failed = True
    _quiet_closed_loop()  # the failed save's abandoned writes
    saved = sorted(s for s in self.manager.all_steps() if s != step and
                   os.path.isdir(os.path.join(self.directory, str(s))))
    kept = (f"; step {saved[-1]} and the steps before it are complete: once the folder can be written, run the "
            "same command to resume from it" if saved else "")
    reason = _describe(error) if error is not None else "its folder was not completed"
    return CheckpointSaveError(f"checkpoint: cannot save step {step} in '{self.directory}' ({reason}){kept}")

  def restore(self, abstract_state, data_iterator=None, step: int | None = None):
    """-> train state at `step` (default: latest), placed by `abstract_state`'s shardings; the data
    iterator, if given, is moved to where it was when that state was saved."""
    step = self.latest_step() if step is None else step
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = DataRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def resume(self, abstract_state, data_iterator=None):
    """`restore` of the newest step that restores, for the trainer, which owns the run. A newer step
    that does not is reported in one line and moved aside to `damaged-<step>` (process 0 moves, the
    others wait), never deleted. CheckpointError when no step restores; then nothing is moved."""
    state, step, failed = _restore_newest(
        self.directory, self.manager.all_steps(), lambda s: self.restore(abstract_state, data_iterator, s))
    if step is None:
      raise _none_restores(self.directory, failed)
    if not failed:
      return state
    if jax.process_index() == 0:
      for damaged, reason in failed:
        moved = self._move_aside(damaged)
        _report(f"{_cannot_restore(self.directory, damaged, reason)}; moved aside to '{moved}'; "
                f"resuming from step {step}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("vlmjax.checkpoint.resume")  # all moved before anyone lists
    self.manager.close()
    self.manager = self._open()  # its list of steps still holds the moved ones
    return state

  def _move_aside(self, step: int) -> str:
    """Renames step `step`'s folder to a free `damaged-<step>[-n]` beside it; -> the new path."""
    target = os.path.join(self.directory, f"{DAMAGED}{step}")
    n = 1
    while os.path.exists(target):
      n += 1
      target = os.path.join(self.directory, f"{DAMAGED}{step}-{n}")
    os.rename(os.path.join(self.directory, str(step)), target)
    return target

  def restore_params(self, abstract_params, step: int | None = None, item: str = "params"):
    """Only the params (for evaluation and export); the optimizer state is not read. `item`: the
    state's entry to read, 'params' or 'ema' (the params' moving average, shaped like them)."""
    step = self.latest_step() if step is None else step
    target = {item: abstract_params}
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=jax.tree.map(
                lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), target),
            partial_restore=True)))
    return restored["state"][item]

  def read_params(self, abstract_params, step: int | None = None, item: str = "params"):
    """-> (params, step): `restore_params` for a reader, which never moves anything. With no `step`,
    a newer step that does not restore is reported in one line and the newest that does is read.
    CheckpointError naming the step (or the folder) when it (or none) restores."""
    steps = self.manager.all_steps() if step is None else [step]
    params, used, failed = _restore_newest(self.directory, steps,
                                           lambda s: self.restore_params(abstract_params, s, item))
    if used is None:
      raise _none_restores(self.directory, failed, named=step is not None)
    for damaged, reason in failed:
      _report(f"{_cannot_restore(self.directory, damaged, reason)}; reading step {used} instead (the "
              "folder is left as it is)")
    return params, used

  def close(self):
    """Finishes the save in flight (CheckpointSaveError if it failed). After a failed save the
    manager is left open: closing it waits on the failed save's threads, for minutes when the step
    folder was never made."""
    if self.failed:
      return
    self._finish_save()
    self.manager.close()
