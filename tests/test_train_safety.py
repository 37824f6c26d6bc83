"""`vlmjax.train` never deletes or corrupts what it did not write.

Every bad invocation below is refused with one line on stderr, no traceback, and leaves every file
of the workdir byte-identical; two trainings on one workdir are refused by the workdir lock; and
values that used to fail late (or train to NaN) are refused before anything is touched.
"""
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, tiny_config
from test_config_errors import run_cli, write_config
from test_output_safety import check_refused, run_clis
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


@pytest.mark.parametrize("key,value,culprit", [
    ("checkpoint.keep", -1, "'checkpoint.keep' -1 must be"),
    ("optimizer.learning_rate", -0.1, "'optimizer.learning_rate' -0.1 must be"),
    ("optimizer.weight_decay", float("inf"), "'optimizer.weight_decay' inf must be a finite number"),
    ("log_every_steps", 0, "'log_every_steps' 0 must be"),
    ("seed", -1, "'seed' -1 must be"),
    ("input.image_size", 0, "'input.image_size' 0"),
    ("input.image_size", 4, "smaller than the image tower's patch_size 8"),
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


def test_refused_invocations_change_nothing(trained, tiny_data_dir, tmp_path):
  """Through the real command line (all in one pre-imported process, `run_clis`): one line, no
  traceback, and every file of every folder involved unchanged, nothing created."""
  def copy(name):
    folder = str(tmp_path / name)
    shutil.copytree(trained["workdir"], folder)
    return folder

  workdir, no_config = copy("run"), copy("no_config")
  os.remove(os.path.join(no_config, "config.json"))
  bundle = export.export(trained["workdir"], str(tmp_path / "bundle"))
  hf = tmp_path / "hf"  # an HF export's folder has a config.json of its own
  hf.mkdir()
  (hf / "config.json").write_text(json.dumps({"model_type": "clip", "projection_dim": 32}))
  (hf / "model.safetensors").write_bytes(b"weights")
  files = tmp_path / "files"
  files.mkdir()
  (files / "tokenizer.model").write_bytes(b"not a sentencepiece model")
  from PIL import Image
  Image.new("RGB", (32, 32), "red").save(files / "a.png")
  (files / "train.csv").write_text("image_path,caption\n" + "a.png,a red square\n" * 8)
  (files / "test.csv").write_text("image,caption\na.png,a red square\n")  # not the image_key column
  with_evals = write_config(files, BODY + 'c.evals = dict(retrieval=dict(type="retrieval", split="test"))\n',
                            name="with_evals.py")
  fresh = str(tmp_path / "fresh")  # a workdir a refused command must not create anything in
  cases = [  # (--workdir, args, what the error line says)
      (workdir, ["--config.checkpoint.keep=0"], "'checkpoint.keep' 0 must be"),
      (workdir, ["--config.optimizer.learning_rate=nan"], "'optimizer.learning_rate' nan must be a finite number"),
      (workdir, ["--config.input.max_text_len=64"], "'input.max_text_len' 64 exceeds the text tower's max_len 16"),
      # --overwrite checks the data before it deletes anything.
      (workdir, ["--overwrite", "--config.data.name=csv"], "'data.files.train' is not set"),
      # Resuming with another config is refused (and --overwrite is the way out).
      (workdir, ["--config.batch_size=8"], "holds checkpoints (step 4) of a run with another config"),
      (workdir, ["--dry_run", "--config.batch_size=8"], "holds checkpoints (step 4) of a run with another config"),
      # An objective or evaluator the config does not hold cannot be added by an override.
      (workdir, ["--config.objectives.nope.weight=1.0"], "--config.objectives.nope.weight: the config has no "
       "objectives entry 'nope' (objectives: clip); add it in the config file (registered objectives: cgvlm, clip, "),
      (workdir, ["--config.evals.new.type=retrieval"], "--config.evals.new.type: the config has no evals entry "
       "'new' (evals: none); add it in the config file (registered evaluators: "),
      (workdir, ["--config.objectives.clip.type=nope"], "unknown key 'objectives.clip.type'"),
      (bundle, [], "is an inference bundle"),
      (bundle, ["--overwrite"], "is an inference bundle"),
      (str(hf), [], "is not a vlmjax run's config"),
      (str(hf), ["--overwrite"], "is not a vlmjax run's config"),
      (no_config, [], "holds checkpoints (step 4) but no config.json"),
      (fresh, [f"--config.tokenizer.path={files}/tokenizer.model"], f"{files}/tokenizer.model"),
      # A test split that cannot be read is found before the first step, not after training.
      (fresh, ["--config", with_evals, "--config.data.name=csv", f"--config.data.files.train={files}/train.csv",
               f"--config.data.files.test={files}/test.csv"], "test.csv' has no column 'image_path'"),
  ]
  data = [f"--config.data.data_dir={tiny_data_dir}", "--config.data.builder_config=tiny"]

  def command(folder, args):
    config = args[1] if args[:1] == ["--config"] else trained["config"]
    return ["--config", config, "--workdir", folder, *data, *(args[2:] if args[:1] == ["--config"] else args)]
  before, results = run_clis([("train", command(folder, args)) for folder, args, _ in cases],
                             watch=[workdir, no_config, bundle, str(hf), str(files)])
  for (_, args, culprit), result in zip(cases, results):
    check_refused(result, "train", culprit)
    assert result.files == before, (args, set(result.files.items()) ^ set(before.items()))
  assert not os.path.exists(os.path.join(fresh, "checkpoints"))
  # The same command with --dry_run: what would run, exit 0, nothing written.
  before, (result,) = run_clis([("train", ["--config", trained["config"], "--workdir", workdir, *data, "--dry_run"])],
                               watch=[workdir])
  assert result.rc == 0 and result.files == before, result.stderr[-2000:]
  assert "global batch 16 (2 per device) on a mesh data=8 × fsdp=1 × tensor=1 of 8 devices" in result.stdout
  assert "steps 4..4" in result.stdout and "Nothing was written" in result.stdout


def test_a_garbage_tokenizer_file_is_named(tmp_path):
  garbage = tmp_path / "tokenizer.model"
  garbage.write_bytes(b"not a sentencepiece model")
  with pytest.raises(TokenizerError, match="not a SentencePiece model"):
    Tokenizer.load(str(garbage))


def test_a_corrected_data_path_is_a_resumable_change():
  saved = {"data": {"files": {"test": "/old/test.csv"}, "name": "csv"}, "batch_size": 8}
  new = {"data": {"files": {"test": "/new/test.csv"}, "name": "csv"}, "batch_size": 8}
  assert workdir_lib.config_differences(saved, new) == []


@pytest.mark.parametrize("name,content,message", [
    ("header_only.csv", "image_path,caption\n", "has no rows"),
    ("blank.csv", "\n\r\n", "has no rows"),
    ("no_column.csv", "path,caption\na.png,x\n", r"has no column 'image_path' \(data.image_key; columns: path, caption\)"),
    ("bad_first.jsonl", '{not json\n{"image_path": "a.png", "caption": "ok"}\n', "line 1 of .* is not valid JSON"),
])
def test_file_list_errors_are_one_line(tmp_path, name, content, message):
  (tmp_path / name).write_text(content)
  with pytest.raises((sources.DataFileError, KeyError), match=message):
    sources.FileListSource(str(tmp_path / name))


@pytest.mark.parametrize("name,content,reason,message", [
    ("short_row.csv", "caption,image_path\nok,a.png\njust a caption\n", "empty_image", "line 3 of .* has no image path"),
    ("no_path.csv", "image_path,caption\na.png,ok\n,caption without an image\n", "empty_image", "has no image path"),
    ("bad.jsonl", '{"image_path": "a.png", "caption": "ok"}\n{not json\n', "corrupt_image", "line 2 of .* not valid JSON"),
    ("number.jsonl", '{"image_path": "a.png", "caption": "ok"}\n{"image_path": 7, "caption": "ok"}\n', "empty_image",
     r"has no image path in 'image_path' \(got 7\)"),
])
def test_a_file_list_row_that_cannot_be_used_is_a_bad_record(tmp_path, name, content, reason, message):
  """Rows are parsed when read: a bad one is a one-line bad record the pipeline skips, not an error."""
  from PIL import Image
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  (tmp_path / name).write_text(content)
  source = sources.FileListSource(str(tmp_path / name))
  assert len(source) == 2 and "image" in source[0]
  bad = source[1]
  assert bad.reason == reason and re.search(message, bad.detail) and "\n" not in bad.detail


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
