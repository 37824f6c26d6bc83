"""`vlmjax.train` never deletes or corrupts what it did not write.

Every bad invocation below is refused with one line on stderr, no traceback, and leaves every file
of the workdir byte-identical; two trainings on one workdir are refused by the workdir lock; and
values that used to fail late (or train to NaN) are refused before anything is touched.
"""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, tiny_config
from test_config_errors import run_cli, write_config
from vlmjax import config as config_lib, export, workdir as workdir_lib
from vlmjax.data import sources
from vlmjax.data.tokenizer import Tokenizer, TokenizerError
from vlmjax.train import train

# The config file every CLI case runs (a tiny CLIP with a checkpoint at every 2 steps).
BODY = """
c.total_steps = 4
c.checkpoint = dict(every_steps=2, keep=3, async_save=False)
c.mesh = dict(data=-1, fsdp=1, tensor=1)
c.data.num_threads = 1
"""


def snapshot(folder) -> dict:
  """{relative path: sha256} of every file below `folder`."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


def one_line_error(result) -> str:
  assert result.returncode != 0, f"expected a failure\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-2000:]}"
  assert "Traceback" not in result.stderr, result.stderr[-4000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines and lines[-1].startswith("vlmjax.train: error: "), result.stderr[-2000:]
  return lines[-1]


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
  """A finished tiny run (checkpoints at steps 2 and 4) made by the CLI's own config file."""
  folder = tmp_path_factory.mktemp("trained")
  config_path = write_config(folder, BODY)
  config = config_lib.load_file(config_path)
  config.data.data_dir, config.data.builder_config = tiny_data_dir, "tiny"
  workdir = str(folder / "run")
  train(config, workdir)
  return {"config": config_path, "workdir": workdir, "folder": folder}


@pytest.fixture
def workdir(trained, tmp_path):
  """A copy of the trained run, for a case to try to damage."""
  copy = str(tmp_path / "run")
  shutil.copytree(trained["workdir"], copy)
  return copy


@pytest.mark.parametrize("args,culprit", [
    (["--config.checkpoint.keep=0"], "'checkpoint.keep' 0 must be"),
    (["--config.optimizer.learning_rate=nan"], "'optimizer.learning_rate' nan must be a finite number"),
    (["--config.input.max_text_len=64"], "'input.max_text_len' 64 exceeds the text tower's max_len 16"),
    # --overwrite checks the data before it deletes anything.
    (["--overwrite", "--config.data.name=csv"], "'data.files.train' is not set"),
    # Resuming with another config is refused (and --overwrite is the way out).
    (["--config.batch_size=8"], "holds checkpoints (step 4) of a run with another config"),
])
def test_bad_invocation_changes_nothing(trained, workdir, tiny_data_dir, args, culprit):
  """Through the real command line: one line, no traceback, every file of the run unchanged."""
  before = snapshot(workdir)
  line = one_line_error(run_cli(tiny_data_dir, workdir, *args, config=trained["config"]))
  assert culprit in line, line
  assert snapshot(workdir) == before


@pytest.mark.parametrize("key,value,culprit", [
    ("checkpoint.keep", -1, "'checkpoint.keep' -1 must be"),
    ("optimizer.learning_rate", -0.1, "'optimizer.learning_rate' -0.1 must be"),
    ("optimizer.weight_decay", float("inf"), "'optimizer.weight_decay' inf must be a finite number"),
    ("log_every_steps", 0, "'log_every_steps' 0 must be"),
    ("seed", -1, "'seed' -1 must be"),
    ("input.image_size", 0, "'input.image_size' 0"),
    ("input.image_size", 36, "not a multiple of the image tower's patch_size 8"),
    ("batch_size", -16, "'batch_size' -16 must be positive"),
    ("optimizer.b2", 1.0, "'optimizer.b2' 1.0 must be below 1"),
    ("input.crop_min", 0.0, "'input.crop_min' 0.0 must be a finite number > 0"),
])
def test_out_of_range_values_are_refused_before_anything_runs(tiny_data_dir, tmp_path, key, value, culprit):
  """Values that used to pass validation and fail later (or train to NaN): refused in `train` before
  the workdir is touched (the CLI prints the same message as one line, above)."""
  config = tiny_config(tiny_data_dir, mesh=dict(data=-1, fsdp=1, tensor=1), **{key: value})
  with pytest.raises(config_lib.ConfigError, match=culprit.replace("(", "\\(")):
    train(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_a_bundle_is_not_a_workdir(trained, tiny_data_dir, tmp_path):
  bundle = export.export(trained["workdir"], str(tmp_path / "bundle"))
  before = snapshot(bundle)
  line = one_line_error(run_cli(tiny_data_dir, bundle, config=trained["config"]))
  assert "is an inference bundle" in line
  line = one_line_error(run_cli(tiny_data_dir, bundle, "--overwrite", config=trained["config"]))
  assert "is an inference bundle" in line
  assert snapshot(bundle) == before


def test_another_programs_folder_is_not_a_workdir(trained, tiny_data_dir, tmp_path):
  """An HF export's folder has a config.json of its own: neither training nor --overwrite touch it."""
  folder = tmp_path / "hf"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({"model_type": "clip", "projection_dim": 32}))
  (folder / "model.safetensors").write_bytes(b"weights")
  before = snapshot(folder)
  for extra in ([], ["--overwrite"]):
    line = one_line_error(run_cli(tiny_data_dir, folder, *extra, config=trained["config"]))
    assert "is not a vlmjax run's config" in line
  assert snapshot(folder) == before


def test_checkpoints_without_their_config_are_not_resumed(trained, workdir, tiny_data_dir):
  os.remove(os.path.join(workdir, "config.json"))
  before = snapshot(workdir)
  line = one_line_error(run_cli(tiny_data_dir, workdir, config=trained["config"]))
  assert "holds checkpoints (step 4) but no config.json" in line
  assert snapshot(workdir) == before


def test_garbage_tokenizer_file(trained, tiny_data_dir, tmp_path):
  garbage = tmp_path / "tokenizer.model"
  garbage.write_bytes(b"not a sentencepiece model")
  line = one_line_error(run_cli(tiny_data_dir, tmp_path / "w", f"--config.tokenizer.path={garbage}",
                                config=trained["config"]))
  assert "not a SentencePiece model" in line and str(garbage) in line
  with pytest.raises(TokenizerError, match="not a SentencePiece model"):
    Tokenizer.load(str(garbage))


def test_eval_split_files_are_checked_before_training(trained, tiny_data_dir, tmp_path):
  """A missing test image is found before the first step, not after training; and correcting the
  path is a resumable change (where the data lives)."""
  image = tmp_path / "a.png"
  from PIL import Image
  Image.new("RGB", (32, 32), "red").save(image)
  (tmp_path / "train.csv").write_text("image_path,caption\n" + "a.png,a red square\n" * 8)
  (tmp_path / "test.csv").write_text("image_path,caption\na.png,a red square\nmissing.png,gone\n")
  workdir = tmp_path / "w"
  result = run_cli(tiny_data_dir, workdir, "--config.data.name=csv", f"--config.data.files.train={tmp_path}/train.csv",
                   f"--config.data.files.test={tmp_path}/test.csv",
                   config=write_config(tmp_path, BODY + 'c.evals = dict(retrieval=dict(type="retrieval", split="test"))\n'))
  line = one_line_error(result)
  assert "missing.png' on line 3" in line
  assert not (workdir / "checkpoints").exists()
  saved = {"data": {"files": {"test": "/old/test.csv"}, "name": "csv"}, "batch_size": 8}
  new = {"data": {"files": {"test": "/new/test.csv"}, "name": "csv"}, "batch_size": 8}
  assert workdir_lib.config_differences(saved, new) == []


@pytest.mark.parametrize("name,content,message", [
    ("header_only.csv", "image_path,caption\n", "has no rows"),
    ("short_row.csv", "caption,image_path\nok,a.png\njust a caption\n", "line 3 of .* has no image path"),
    ("no_path.csv", "image_path,caption\n,caption without an image\n", "has no image path"),
    ("bad.jsonl", '{"image_path": "a.png", "caption": "ok"}\n{not json\n', "line 2 of"),
    ("number.jsonl", '{"image_path": 7, "caption": "ok"}\n', r"has no image path in 'image_path' \(got 7\)"),
])
def test_file_list_errors_are_one_line(tmp_path, name, content, message):
  from PIL import Image
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  (tmp_path / name).write_text(content)
  with pytest.raises((sources.DataFileError, KeyError), match=message):
    sources.FileListSource(str(tmp_path / name))


def test_a_caption_over_the_csv_field_limit_is_read(tmp_path):
  """A 200k-character caption is a (skipped, counted) bad record, not an unreadable file."""
  from PIL import Image
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  (tmp_path / "long.csv").write_text(f"image_path,caption\na.png,{'x' * 200_000}\na.png,short\n")
  source = sources.FileListSource(str(tmp_path / "long.csv"))
  assert len(source) == 2 and len(source[0]["caption"]) == 200_000


def test_the_run_records_where_its_data_is(tiny_data_dir, tmp_path, monkeypatch):
  """A relative data_dir is recorded as an absolute path: evaluate from another folder finds it."""
  monkeypatch.chdir(os.path.dirname(tiny_data_dir))
  config = tiny_config(os.path.basename(tiny_data_dir), total_steps=1, mesh=dict(data=-1, fsdp=1, tensor=1))
  train(config, str(tmp_path / "w"))
  saved = json.loads((tmp_path / "w" / "config.json").read_text())
  assert saved["data"]["data_dir"] == tiny_data_dir


def test_two_trainings_on_one_workdir(trained, tiny_data_dir, tmp_path):
  """The second exits 1 at once naming the first (PID, host); the first finishes unharmed."""
  workdir = tmp_path / "w"
  env = dict(os.environ, PYTHONPATH=str(REPO))
  first = subprocess.Popen(
      [sys.executable, "-m", "vlmjax.train", "--config", trained["config"], "--workdir", str(workdir),
       f"--config.data.data_dir={tiny_data_dir}", "--config.data.builder_config=tiny", "--config.total_steps=30",
       "--config.checkpoint.every_steps=10", "--config.log_every_steps=1"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  lock = workdir / workdir_lib.LOCK
  deadline = time.time() + 120
  while not lock.exists() and first.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert lock.exists(), first.communicate()[1][-2000:]
  start = time.time()
  second = run_cli(tiny_data_dir, workdir, config=trained["config"])
  refused_in = time.time() - start  # at once: before any compiling or data reading
  line = one_line_error(second)
  assert second.returncode == 1
  assert f"in use by vlmjax.train (pid {first.pid} on {socket.gethostname()}" in line
  _, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
  assert steps == list(range(1, 31))
  assert not lock.exists()
  assert refused_in < 60


def test_a_stale_lock_is_taken_over(tmp_path):
  """A lock left by a process that is gone (same host) does not block the next command."""
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  lock = tmp_path / workdir_lib.LOCK
  lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "command": "vlmjax.train"}))
  with workdir_lib.lock(str(tmp_path), "train"):
    assert json.loads(lock.read_text())["pid"] == os.getpid()
  assert not lock.exists()
  # A live holder on another host cannot be checked: refused.
  lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "command": "vlmjax.train"}))
  with pytest.raises(workdir_lib.WorkdirBusy, match="pid 1 on elsewhere"):
    with workdir_lib.lock(str(tmp_path), "evaluate"):
      pass
  assert json.loads(lock.read_text())["host"] == "elsewhere"
