"""Workdir safety: a workdir holds one run.

`prepare(config, workdir, overwrite)` runs before anything is built. When the workdir holds
checkpoints, its config.json (read as JSON, never unpickled) must match the new config except for
the keys in RESUMABLE_KEYS; otherwise the run is refused with one line naming the keys that differ,
unless `overwrite` is given, which deletes the previous run's outputs and starts over. Then the new
config.json is written (atomically: a kill never leaves half a file).
"""
import json
import os
import shutil

import jax
from jax.experimental import multihost_utils

from vlmjax.config import ConfigError
from vlmjax.run import RunDir

# Keys a resumed run may change: how often and where it logs, evaluates and checkpoints, the mesh and
# its sharding rules and microbatches (a checkpoint restores onto any mesh; accumulation gives the same
# step), where the data lives, the reliability thresholds, `init` (read only by a fresh run), and its
# length: `total_steps`/`total_epochs` extend or shorten a run, the learning-rate schedule being
# recomputed for the new length from the resumed step on. Any other difference is another run.
RESUMABLE_KEYS = (
    "total_steps", "total_epochs", "mesh", "sharding_rules", "microbatches", "checkpoint",
    "log_every_steps", "eval_every_steps", "progress_bar", "evals", "peak_flops_per_device", "init",
    "max_consecutive_nonfinite", "data.num_threads", "data.data_dir", "data.image_root",
    "data.max_bad_fraction")



def _flatten(tree, prefix=""):
  if isinstance(tree, dict) and tree:
    for key, value in tree.items():
      yield from _flatten(value, f"{prefix}{key}.")
  else:
    yield prefix[:-1], tree


def _resumable(key: str) -> bool:
  return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def config_differences(saved: dict, new: dict) -> list[str]:
  """['batch_size: 16 -> 32', ...] for the keys (dotted paths) outside RESUMABLE_KEYS that differ."""
  old, cur = dict(_flatten(saved)), dict(_flatten(new))
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


def _check(config, workdir: str):
  """Raises ConfigError if the workdir holds checkpoints of a run with another config."""
  run = RunDir(workdir)
  steps = run.steps()  # (no checkpoints/ is created: a run that fails before training leaves no trace)
  path = run.file(RunDir.CONFIG)
  if not steps or not os.path.exists(path):
    return
  latest = steps[-1]
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except ValueError:
    raise ConfigError(f"workdir: '{path}' is not valid JSON; pass --overwrite to start over in this "
                      "workdir") from None
  differences = config_differences(saved, json.loads(config.to_json_best_effort()))
  if differences:
    shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
    raise ConfigError(
        f"workdir: '{workdir}' holds checkpoints (step {latest}) of a run with another config ({shown}); "
        "resume it with the same config, use another --workdir, or pass --overwrite to delete that run "
        "and start over")


def prepare(config, workdir: str, overwrite: bool = False):
  """Refuses another run's workdir (ConfigError), or clears it with `overwrite`; writes config.json.
  Every process checks (so all fail alike); process 0 deletes and writes."""
  os.makedirs(workdir, exist_ok=True)
  if not overwrite:
    _check(config, workdir)
  if jax.process_index() == 0:
    if overwrite:
      _delete_run(workdir, config)
    path = RunDir(workdir).file(RunDir.CONFIG)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=1))
    os.replace(path + ".tmp", path)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("vlmjax.workdir.prepare")  # nobody reads before process 0 is done
