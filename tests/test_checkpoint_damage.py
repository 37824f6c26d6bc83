"""A damaged checkpoint: one line naming the step, then the newest older step that restores.

One tiny run saves steps 5 and 10. Each case copies it and damages step 10 in one way: a truncated
array file, garbage in the data-iterator JSON, an empty `_METADATA`, an empty step folder. Resuming
must report step 10 in one line, move its folder aside to `checkpoints/damaged-10` unchanged, and
continue from step 5 exactly as the uninterrupted run did. A reader (`RunDir.restore_params`) falls
back the same way without moving anything, and refuses the damaged step when it is named. The
truncated file, the noisiest damage (tensorstore reads finishing after orbax's loop closed), goes
through the real command line, whose stderr must hold that one line and no traceback.

A save that cannot be written (a read-only or full disk, simulated where orbax makes the step's
folder or writes an array) ends training with one line naming the step, the folder and the OS error;
the steps saved before it stay complete and the run resumes from them.
"""
import asyncio
import errno
import gc
import os
import pathlib
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FAST_COMPILE_XLA_FLAGS, REPO, tiny_config
from test_config_errors import run_cli
from test_reliability import CONFIG_FILE
from vlmjax import checkpoint, experiment
from vlmjax.checkpoint import CheckpointError
from vlmjax.data.tokenizer import Tokenizer
from vlmjax.run import RunDir, read_metrics
from vlmjax.train import train

OLDER, NEWEST = 5, 10


def _config(data_dir):
  return tiny_config(data_dir, **{"total_steps": NEWEST, "checkpoint.every_steps": OLDER,
                                  "mesh": dict(data=1, fsdp=-1, tensor=1)})


def _losses(workdir):
  return {m["step"]: m["loss"] for m in read_metrics(str(workdir)) if "loss" in m}


def _files(folder: pathlib.Path) -> dict:
  """{path inside `folder`: its bytes}, folders included (as None): what must survive a move unchanged."""
  return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def truncate_array_file(step: pathlib.Path):
  data = max((p for p in (step / "state" / "d").iterdir()), key=lambda p: p.stat().st_size)
  os.truncate(data, data.stat().st_size // 2)


def garble_data_iterator(step: pathlib.Path):
  (step / "data" / "process_0-of-1.json").write_text("{not json")


def empty_metadata(step: pathlib.Path):
  (step / "state" / "_METADATA").write_bytes(b"")


def empty_step_folder(step: pathlib.Path):
  shutil.rmtree(step)
  step.mkdir()


DAMAGE = {"truncated_array_file": truncate_array_file, "garbled_data_iterator": garble_data_iterator,
          "empty_metadata": empty_metadata, "empty_step_folder": empty_step_folder}


@pytest.fixture(scope="module")
def run(tiny_data_dir, tmp_path_factory):
  config = _config(tiny_data_dir)
  workdir = tmp_path_factory.mktemp("run") / "w"
  train(config, str(workdir))
  tokenizer = Tokenizer.load(str(workdir / RunDir.TOKENIZER))
  abstract_params = experiment.build(config, tokenizer.vocab_size).abstract_params()
  params, _ = RunDir(str(workdir)).restore_params(abstract_params, OLDER)
  return dict(config=config, workdir=workdir, losses=_losses(workdir), abstract_params=abstract_params,
              older_params=jax.device_get(params))


def _damaged_copy(run, tmp_path, damage, steps=(NEWEST,)):
  """A copy of the run with `damage` done to `steps`; -> (workdir, checkpoints/, {step: its files})."""
  workdir = tmp_path / "w"
  shutil.copytree(run["workdir"], workdir)
  checkpoints = workdir / RunDir.CHECKPOINTS
  for step in steps:
    DAMAGE[damage](checkpoints / str(step))
  return workdir, checkpoints, {step: _files(checkpoints / str(step)) for step in steps}


def _check_resumed(run, workdir, checkpoints, damaged_files, stderr: str):
  lines = [line for line in stderr.splitlines() if line.strip()]
  reports = [line for line in lines if line.startswith("checkpoint:")]
  assert len(reports) == 1, stderr
  assert reports[0].startswith(f"checkpoint: step {NEWEST} in '{checkpoints}' cannot be restored ("), reports[0]
  assert reports[0].endswith(f"); moved aside to '{checkpoints / f'damaged-{NEWEST}'}'; resuming from step {OLDER}")
  assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
  assert _files(checkpoints / f"damaged-{NEWEST}") == damaged_files[NEWEST], "the damaged folder moved unchanged"
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, NEWEST + 1))
  assert losses == run["losses"], "steps 6..10 again, exactly as the run first took them"


@pytest.mark.parametrize("damage", ["garbled_data_iterator", "empty_metadata", "empty_step_folder"])
def test_resume_falls_back_and_moves_the_damaged_step_aside(run, tmp_path, capsys, damage):
  workdir, checkpoints, damaged_files = _damaged_copy(run, tmp_path, damage)
  train(run["config"], str(workdir))
  _check_resumed(run, workdir, checkpoints, damaged_files, capsys.readouterr().err)
  assert RunDir(str(workdir)).steps() == [OLDER, NEWEST]  # step 10 saved anew; the moved one is not a step


def test_resume_through_the_command_line(run, tiny_data_dir, tmp_path):
  """A truncated array file, through `python -m vlmjax.train`; keep=1, so the step-5 checkpoint is
  deleted once step 10 is saved anew, and the moved-aside folder must not be."""
  workdir, checkpoints, damaged_files = _damaged_copy(run, tmp_path, "truncated_array_file")
  config = tmp_path / "config.py"
  config.write_text(CONFIG_FILE.format(text=run["config"].to_json()))
  result = run_cli(tiny_data_dir, workdir, "--config.checkpoint.keep=1", config=config, data_overrides=False)
  assert result.returncode == 0, result.stderr[-4000:]
  _check_resumed(run, workdir, checkpoints, damaged_files, result.stderr)
  assert RunDir(str(workdir)).steps() == [NEWEST]
  assert set(os.listdir(checkpoints)) == {str(NEWEST), f"damaged-{NEWEST}"}


def test_resume_with_no_step_that_restores_moves_nothing(run, tmp_path):
  workdir, checkpoints, damaged_files = _damaged_copy(run, tmp_path, "truncated_array_file", (OLDER, NEWEST))
  with pytest.raises(CheckpointError) as e:
    train(run["config"], str(workdir))
  assert str(e.value).startswith(f"checkpoint: no step in '{checkpoints}' can be restored (step {NEWEST}: "
                                 "ValueError: "), str(e.value)
  assert str(e.value).endswith(f"; saved steps: {OLDER}, {NEWEST}); every step folder is left where it is")
  assert "\n" not in str(e.value)
  assert set(os.listdir(checkpoints)) == {str(OLDER), str(NEWEST)}
  assert {step: _files(checkpoints / str(step)) for step in (OLDER, NEWEST)} == damaged_files


@pytest.mark.parametrize("damage", ["truncated_array_file", "empty_metadata", "empty_step_folder"])
def test_reader_falls_back_and_moves_nothing(run, tmp_path, capsys, damage):
  workdir, checkpoints, damaged_files = _damaged_copy(run, tmp_path, damage)
  params, step = RunDir(str(workdir)).restore_params(run["abstract_params"])
  assert step == OLDER
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), run["older_params"])
  err = capsys.readouterr().err
  assert err.startswith(f"checkpoint: step {NEWEST} in '{checkpoints}' cannot be restored ("), err
  assert err.endswith(f"); reading step {OLDER} instead (the folder is left as it is)\n"), err
  assert err.count("\n") == 1
  assert _files(checkpoints / str(NEWEST)) == damaged_files[NEWEST]
  assert set(os.listdir(checkpoints)) == {str(OLDER), str(NEWEST)}

  with pytest.raises(FileNotFoundError) as e:  # the damaged step named: refused in one line
    RunDir(str(workdir)).restore_params(run["abstract_params"], NEWEST)
  assert str(e.value).startswith(f"checkpoint: step {NEWEST} in '{checkpoints}' cannot be restored ("), str(e.value)
  assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_reader_reads_params_past_a_damaged_data_iterator(run, tmp_path, capsys):
  """A reader reads only the params: a garbled data-iterator file does not stop it at step 10."""
  workdir, _, _ = _damaged_copy(run, tmp_path, "garbled_data_iterator")
  _, step = RunDir(str(workdir)).restore_params(run["abstract_params"])
  assert step == NEWEST and capsys.readouterr().err == ""


def test_only_the_noise_of_abandoned_reads_is_dropped(tmp_path, monkeypatch, caplog):
  """What a failed restore leaves behind, whenever its other reads finish: asyncio's report of an
  error nobody retrieved, about the checkpoint folder, and the closed loop's traceback. Only those."""
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  checkpoint._quiet_abandoned_reads(str(tmp_path))
  for e in (RuntimeError("Event loop is closed"), RuntimeError("another error")):
    sys.unraisablehook(types.SimpleNamespace(exc_value=e))
  assert [str(u.exc_value) for u in seen] == ["another error"]

  loop = asyncio.new_event_loop()
  for where in (tmp_path / "10" / "state", "/elsewhere"):
    future = loop.create_future()
    future.set_exception(ValueError(f'Error reading local file "{where}/d/0"'))
    del future
  gc.collect()
  loop.close()
  reported = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
  assert len(reported) == 1 and "/elsewhere" in reported[0], reported


# `python -m vlmjax.train ARGS` on a disk that turns read-only once step OLDER is saved: every folder
# made in checkpoints/ after that fails, as on a read-only mount (where a file cannot be written either).
READ_ONLY_TRAIN = f"""
import errno, os, runpy, sys
make_folder = os.mkdir

def read_only(path, *args, **kwargs):
  checkpoints = os.path.dirname(os.path.abspath(path))
  if os.path.basename(checkpoints) == "checkpoints" and os.path.isdir(os.path.join(checkpoints, "{OLDER}")):
    raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
  return make_folder(path, *args, **kwargs)

os.mkdir = read_only
sys.argv = ["vlmjax.train", *sys.argv[1:]]
runpy.run_module("vlmjax.train", run_name="__main__", alter_sys=True)
"""


def test_a_save_that_cannot_write_ends_training_in_one_line(run, tmp_path):
  """Through the command line, saving in the background (async_save, the default): exit 2 at once
  (orbax's threads of the failed save are not waited for), one line, step 5 complete, and the run
  resumes from it exactly as the uninterrupted run went."""
  config = tmp_path / "config.py"
  config.write_text(CONFIG_FILE.format(text=run["config"].to_json()))
  workdir = tmp_path / "w"
  env = dict(os.environ, XLA_FLAGS=f"{FAST_COMPILE_XLA_FLAGS} --xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  result = subprocess.run(
      [sys.executable, "-c", READ_ONLY_TRAIN, "--config", str(config), "--workdir", str(workdir),
       "--config.checkpoint.async_save=True"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
  checkpoints = workdir / RunDir.CHECKPOINTS
  assert result.returncode == 2, result.stderr[-4000:]
  assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr[-4000:]
  lines = [line for line in result.stderr.splitlines() if line.strip() and "OpenCV" not in line]
  assert lines == [f"vlmjax.train: error: checkpoint: cannot save step {NEWEST} in '{checkpoints}' (OSError: "
                   f"[Errno 30] Read-only file system: '{checkpoints}/.write-check-0'); step "
                   f"{OLDER} and the steps before it are complete: once the folder can be written, run the same "
                   "command to resume from it"], result.stderr[-4000:]
  assert RunDir(str(workdir)).steps() == [OLDER]
  train(run["config"], str(workdir))
  assert _losses(workdir) == run["losses"]
  assert RunDir(str(workdir)).steps() == [OLDER, NEWEST]


@pytest.mark.parametrize("async_save", [False, True])
def test_a_full_disk_keeps_the_saved_steps(tmp_path, monkeypatch, async_save):
  """tensorstore's write of step 3 fails: CheckpointSaveError (an OSError) naming the step, the folder
  and the error, from `save` or, saving in the background, from `close`; steps 1 and 2 restore."""
  from orbax.checkpoint._src.serialization import serialization
  write = serialization.async_serialize_from_host

  async def full_disk(rslices, tensorstore_spec, **kwargs):
    if "/3.orbax-checkpoint-tmp/" in str(tensorstore_spec):
      raise OSError(errno.ENOSPC, "No space left on device")
    return await write(rslices, tensorstore_spec, **kwargs)

  monkeypatch.setattr(serialization, "async_serialize_from_host", full_disk)
  state = {"w": jnp.arange(4.0), "step": jnp.int32(0)}
  saver = checkpoint.Checkpointer(str(tmp_path), 1, 2, async_save=async_save, cleanup=True)
  saver.save(1, state)
  saver.save(2, {**state, "step": jnp.int32(2)})
  with pytest.raises(checkpoint.CheckpointSaveError) as e:
    saver.save(3, state)
    saver.close()
  assert str(e.value) == (f"checkpoint: cannot save step 3 in '{tmp_path}' (OSError: [Errno 28] No space left on "
                          "device); step 2 and the steps before it are complete: once the folder can be written, "
                          "run the same command to resume from it")
  saver.close()  # after a failed save: nothing more to wait for, nothing raised again
  reader = checkpoint.Checkpointer(str(tmp_path), 1, 2)
  assert reader.manager.all_steps() == [1, 2]
  restored = reader.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state))
  assert int(restored["step"]) == 2
  reader.close()
