"""Workdir safety: a workdir holds one run, and one command writes into it at a time.

The contract every command keeps: it writes only inside its own outputs, never deletes a file it
did not create, and validates everything before it removes anything.

`lock(workdir, command)` holds the workdir for a command's life (a `vlmjax.lock` file naming the
holder's PID and host); a second command is refused at once with one line naming the first. A lock
whose process is gone (same host, PID not running) is stale and taken over.

`prepare(config, workdir, overwrite)` runs before anything is built. A folder that is an inference
bundle, or whose config.json is not a vlmjax run's, is refused. When the workdir holds checkpoints,
its config.json (read as JSON, never unpickled) must exist and match the new config except for the
keys in RESUMABLE_KEYS; otherwise the run is refused with one line naming the keys that differ,
unless `overwrite` is given, which deletes the previous run's own outputs (and nothing else) and
starts over. Then the new config.json is written (atomically: a kill never leaves half a file).
"""
import contextlib
import datetime
import json
import os
import shutil
import socket

import jax
from jax.experimental import multihost_utils

from vlmjax.config import ConfigError
from vlmjax.run import Bundle, RunDir

# Keys a resumed run may change: how often and where it logs, evaluates and checkpoints, the mesh and
# its sharding rules and microbatches (a checkpoint restores onto any mesh; accumulation gives the same
# step), where the data lives, the reliability thresholds, `init` (read only by a fresh run), and its
# length: `total_steps`/`total_epochs` extend or shorten a run, the learning-rate schedule being
# recomputed for the new length from the resumed step on. `optimizer.lr_multipliers` may change too
# (unfreezing a tower part-way: they scale the update and hold no state); `optimizer.ema_decay` may
# not (turning it on or off changes the state's shape). Any other difference is another run.
RESUMABLE_KEYS = (
    "total_steps", "total_epochs", "mesh", "sharding_rules", "microbatches", "checkpoint",
    "log_every_steps", "eval_every_steps", "progress_bar", "evals", "peak_flops_per_device", "init",
    "max_consecutive_nonfinite", "data.num_threads", "data.workers", "data.worker_nice", "data.index_dir",
    "data.data_dir", "data.image_root", "data.files", "data.max_bad_fraction", "optimizer.lr_multipliers")

LOCK = "vlmjax.lock"


class WorkdirBusy(RuntimeError):
  """Another command holds the workdir: the one-line message names it."""


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it exists, run by another user
    return True
  return True


def _holder(path: str) -> dict | None:
  """The lock file's {pid, host, command, since}, or None when it is unreadable (being written)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


@contextlib.contextmanager
def lock(workdir: str, command: str):
  """Holds `workdir` for this process while the block runs (process 0 only, when there are several:
  they run one command together). Raises WorkdirBusy naming the holder when another live process
  has it."""
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  me = {"pid": os.getpid(), "host": socket.gethostname(), "command": f"vlmjax.{command}",
        "since": datetime.datetime.now().isoformat(timespec="seconds")}
  for _ in range(2):  # a second try after removing a stale lock
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      holder = _holder(path)
      if holder and holder.get("host") == me["host"] and not _process_alive(int(holder.get("pid", -1))):
        os.remove(path)  # stale: its process is gone
        continue
      who = (f"{holder.get('command', 'a vlmjax command')} (pid {holder.get('pid')} on {holder.get('host')}, "
             f"since {holder.get('since')})") if holder else "another vlmjax command"
      raise WorkdirBusy(f"workdir: '{workdir}' is in use by {who}; wait for it to finish or stop it (if that "
                        f"process is gone, delete '{path}')") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(me, f)
    break
  try:
    yield
  finally:
    if (_holder(path) or {}).get("pid") == me["pid"]:
      os.remove(path)



def _flatten(tree, prefix=""):
  if isinstance(tree, dict) and tree:
    for key, value in tree.items():
      yield from _flatten(value, f"{prefix}{key}.")
  else:
    yield prefix[:-1], tree


def _resumable(key: str) -> bool:
  return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


# Keys added to the config after runs were saved without them: such a run's config.json reads as
# these values (each one's "off"), so it resumes under a config that leaves them off.
ADDED_DEFAULTS = {"optimizer.layer_decay": 1.0, "optimizer.lr_multipliers": [], "optimizer.ema_decay": 0.0,
                  "data.label_key": "", "data.class_names": None, "data.class_names_file": "",
                  "input.prefix_attention": "causal", "data.mixture": {}}


def config_differences(saved: dict, new: dict) -> list[str]:
  """['batch_size: 16 -> 32', ...] for the keys (dotted paths) outside RESUMABLE_KEYS that differ."""
  old, cur = dict(_flatten(saved)), dict(_flatten(new))
  old.update({k: v for k, v in ADDED_DEFAULTS.items() if k not in old and k in cur})
  missing = "(unset)"
  return [f"{key}: {old.get(key, missing)!r} -> {cur.get(key, missing)!r}".replace("'(unset)'", missing)
          for key in sorted(old.keys() | cur.keys())
          if not _resumable(key) and old.get(key, missing) != cur.get(key, missing)]


def _delete_run(workdir: str, config):
  keep = os.path.abspath(config.tokenizer.path) if config.tokenizer.path else None
  for name in RunDir.OUTPUTS:  # what a run writes into its folder
    path = RunDir(workdir).file(name)
    if os.path.abspath(path) == keep:
      continue  # the config's own tokenizer file, not an output of the run
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def _read_run_config(path: str) -> dict | None:
  """A vlmjax run's config.json as a dict; None when there is none. ConfigError when the file is
  there but is not a vlmjax run's config (another library's config.json, or not JSON)."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (ValueError, UnicodeDecodeError):
    saved = None
  if not isinstance(saved, dict) or not {"model", "objectives", "data"} <= set(saved):
    raise ConfigError(f"workdir: '{path}' is not a vlmjax run's config; this folder is not a vlmjax workdir "
                      "(train into another --workdir)")
  return saved


def _check(config, workdir: str, overwrite: bool):
  """Raises ConfigError if the workdir is not this run's to write: an inference bundle, a folder
  with another program's config.json, or checkpoints of another config (or of an unknown one)."""
  if Bundle.holds_one(workdir):
    raise ConfigError(f"workdir: '{workdir}' is an inference bundle ({Bundle.INFO}); train into another --workdir")
  run = RunDir(workdir)
  path = run.file(RunDir.CONFIG)
  saved = _read_run_config(path)
  steps = run.steps()  # (no checkpoints/ is created: a run that fails before training leaves no trace)
  if not steps or overwrite:
    return
  if saved is None:
    raise ConfigError(f"workdir: '{workdir}' holds checkpoints (step {steps[-1]}) but no {RunDir.CONFIG}, so "
                      "their run's config is unknown; put its config.json back, use another --workdir, or pass "
                      "--overwrite to delete that run and start over")
  differences = config_differences(saved, json.loads(config.to_json_best_effort()))
  if differences:
    shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
    raise ConfigError(
        f"workdir: '{workdir}' holds checkpoints (step {steps[-1]}) of a run with another config ({shown}); "
        "resume it with the same config, use another --workdir, or pass --overwrite to delete that run "
        "and start over")


def check(config, workdir: str, overwrite: bool = False):
  """`prepare`'s refusals, writing nothing (a dry run): ConfigError if the workdir is not this run's."""
  if os.path.isdir(workdir):
    _check(config, workdir, overwrite)


def prepare(config, workdir: str, overwrite: bool = False):
  """Refuses another run's workdir (ConfigError), or clears it with `overwrite`; writes config.json.
  Every process checks (so all fail alike); process 0 deletes and writes."""
  os.makedirs(workdir, exist_ok=True)
  _check(config, workdir, overwrite)
  if jax.process_index() == 0:
    if overwrite:
      _delete_run(workdir, config)
    path = RunDir(workdir).file(RunDir.CONFIG)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=1))
    os.replace(path + ".tmp", path)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("vlmjax.workdir.prepare")  # nobody reads before process 0 is done
