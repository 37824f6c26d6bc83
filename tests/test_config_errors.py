"""User errors through the real command line (`python -m vlmjax.train`).

Config keys are validated before anything is compiled: unknown keys, wrong types, batch sizes not
divisible by the mesh, missing files all fail in one line naming the culprit.
Each case runs the CLI in a subprocess (with the 8 fake CPU devices conftest put in the environment)
and checks: non-zero exit, no Python traceback, the last line of stderr names the culprit, and nothing
was set up in the workdir (no checkpoint folder: it failed before building the model).
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import FAST_COMPILE_XLA_FLAGS, REPO
from vlmjax.data import sources
from vlmjax.data.pipeline import BadRecord

CONFIG_HEADER = """from vlmjax.config import base_config


def get_config(arg=None):
  c = base_config()
  c.batch_size = 16
  c.total_steps = 2
  c.input = dict(image_size=32, max_text_len=16, crop_min=1.0, brightness=0.0)
  c.tokenizer.vocab_size = 128
  c.tokenizer.train_examples = 512
  c.model.image = dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2)
  c.model.text = dict(variant="mu", width=32, depth=1, mlp_dim=64, num_heads=2, max_len=16)
  c.model.embed_dim = 32
  c.progress_bar = False
  c.peak_flops_per_device = -1.0
  c.evals = dict()
"""


def write_config(tmp_path, body: str, name="config.py") -> str:
  path = tmp_path / name
  lines = "".join(f"  {line}\n" for line in body.strip().splitlines())
  path.write_text(CONFIG_HEADER + lines + "  return c\n")
  return str(path)


def run_cli(tiny_data_dir, workdir, *args, config="configs/demo.py", timeout=300, data_overrides=True):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"{FAST_COMPILE_XLA_FLAGS} --xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
  cmd = [sys.executable, "-m", "vlmjax.train", "--config", str(config), "--workdir", str(workdir)]
  if data_overrides:  # never let a test build the default-size dataset
    cmd += [f"--config.data.data_dir={tiny_data_dir}", "--config.data.builder_config=tiny"]
  cmd += list(args)
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def error_line(result, workdir) -> str:
  """Asserts a clean failure and returns its one-line message."""
  assert result.returncode != 0, f"expected a failure\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
  if "Traceback" in result.stderr:
    pytest.fail(f"a traceback instead of a one-line error:\n{result.stderr[-4000:]}", pytrace=False)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines, "no error message on stderr"
  assert "error" in lines[-1].lower(), f"last line of stderr is not the error:\n{result.stderr}"
  assert not (pathlib.Path(workdir) / "checkpoints").exists(), "it got as far as setting up the run"
  return lines[-1]


@pytest.mark.parametrize("override,culprits", [
    ("--config.batch_sise=64", ("batch_sise", "batch_size")),  # names the key and suggests the right one
    ("--config.optimizer.learning_rat=0.1", ("learning_rat",)),
    # A split the base config does not list under the open `files` dict cannot be added from the
    # command line with ml_collections; it must still be a clean one-line error.
    ("--config.data.files.holdout=/tmp/x.csv", ("files.holdout",)),
    ("--config.batch_size=abc", ("batch_size", "abc")),  # wrong type
    ("--config.model.image.variant=Q/16", ("Q/16",)),
])
def test_bad_override(tiny_data_dir, tmp_path, override, culprits):
  workdir = tmp_path / "w"
  line = error_line(run_cli(tiny_data_dir, workdir, override), workdir)
  assert all(culprit in line for culprit in culprits), line


def test_data_files_from_the_command_line(tiny_data_dir, tmp_path):
  """The documented way to point a config at CSV data: the split's key exists, so the override is
  accepted and the missing file is what gets named."""
  workdir = tmp_path / "w"
  line = error_line(run_cli(tiny_data_dir, workdir, "--config.data.name=csv",
                            f"--config.data.files.train={tmp_path}/train.csv"), workdir)
  assert f"data: file '{tmp_path}/train.csv' does not exist" in line


def test_batch_size_not_divisible_by_devices(tiny_data_dir, tmp_path):
  workdir = tmp_path / "w"
  line = error_line(run_cli(tiny_data_dir, workdir, "--config.batch_size=30"), workdir)
  assert "batch_size" in line and "30" in line
  assert "divisible" in line and "8" in line


def test_mesh_that_does_not_fit_the_devices(tiny_data_dir, tmp_path):
  workdir = tmp_path / "w"
  line = error_line(run_cli(tiny_data_dir, workdir, "--config.mesh.data=3"), workdir)
  assert "mesh" in line and "8" in line


def test_unknown_dataset_name(tiny_data_dir, tmp_path):
  workdir = tmp_path / "w"
  line = error_line(run_cli(tiny_data_dir, workdir, "--config.data.name=nosuch"), workdir)
  assert "nosuch" in line and "vlmjax_shapes" in line  # names the known ones


def test_missing_tokenizer_file(tiny_data_dir, tmp_path):
  workdir = tmp_path / "w"
  missing = tmp_path / "nope.model"
  line = error_line(run_cli(tiny_data_dir, workdir, f"--config.tokenizer.path={missing}"), workdir)
  assert str(missing) in line


@pytest.mark.parametrize("with_overrides", [True, False])
def test_missing_config_file(tiny_data_dir, tmp_path, with_overrides):
  """ml_collections reports a missing file while parsing `--config.*` overrides, but without any
  it defers the error until the config is first read: both must end in the same one-line error."""
  workdir = tmp_path / "w"
  missing = tmp_path / "no_such_config.py"
  line = error_line(run_cli(tiny_data_dir, workdir, config=missing, data_overrides=with_overrides), workdir)
  assert "no_such_config.py" in line


def test_csv_row_with_missing_image_is_a_bad_record_naming_it(tmp_path):
  """File lists open without reading their images; a row whose image is missing is skipped and counted by the
  pipeline, its record naming the image, the file and the line."""
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "present.png")
  csv_path = tmp_path / "pairs.csv"
  csv_path.write_text("image_path,caption\npresent.png,a black square\nabsent.png,a red circle\n")
  source = sources.FileListSource(str(csv_path))
  assert source[0]["caption"] == "a black square"
  record = source[1]
  assert isinstance(record, BadRecord)
  assert "absent.png" in record.detail and str(csv_path) in record.detail and "line 3" in record.detail  # header: 1


def test_unknown_key_in_config_file(tiny_data_dir, tmp_path):
  config = write_config(tmp_path, "c.optimizer.lr = 1.0")
  workdir = tmp_path / "w"
  line = error_line(run_cli(tiny_data_dir, workdir, config=config), workdir)
  assert "optimizer.lr" in line


def test_wrong_type_in_config_file(tiny_data_dir, tmp_path):
  config = write_config(tmp_path, 'c.optimizer.weight_decay = "lots"')
  workdir = tmp_path / "w"
  line = error_line(run_cli(tiny_data_dir, workdir, config=config), workdir)
  assert "weight_decay" in line


def test_unknown_objective_in_config_file(tiny_data_dir, tmp_path):
  config = write_config(tmp_path, "c.objectives = dict(clipp=dict(weight=1.0))")
  workdir = tmp_path / "w"
  line = error_line(run_cli(tiny_data_dir, workdir, config=config), workdir)
  assert "clipp" in line and "clip" in line


@pytest.mark.parametrize("body,culprit", [
    ("c.model.image.patch_sise = 8", "patch_sise"),
    ("c.model.text.widht = 64", "widht"),
])
def test_unknown_tower_key_in_config_file(tiny_data_dir, tmp_path, body, culprit):
  """Keys inside model.image / model.text go to ViT / TextTransformer: a typo there must be caught
  by validation too, not by a TypeError from deep inside model init after the data is set up."""
  config = write_config(tmp_path, body)
  workdir = tmp_path / "w"
  line = error_line(run_cli(tiny_data_dir, workdir, config=config), workdir)
  assert culprit in line


@pytest.mark.parametrize("body,culprit", [
    ("c.model.image.unroll = 0", "'model.image.unroll' 0 must be a positive integer"),
    ("c.model.text.remat = 'dot'", "'model.text.remat' 'dot' is not a remat policy"),
])
def test_bad_layer_stack_setting_in_config_file(tiny_data_dir, tmp_path, body, culprit):
  """A stack's `unroll` and `remat` values are checked with the config, not when the model is built."""
  config = write_config(tmp_path, body)
  workdir = tmp_path / "w"
  line = error_line(run_cli(tiny_data_dir, workdir, config=config), workdir)
  assert culprit in line


def test_valid_config_runs(tiny_data_dir, tmp_path):
  """The positive control: the same CLI with a valid tiny config trains, evaluates and exits 0."""
  config = write_config(tmp_path, """
c.mesh = dict(data=2, fsdp=-1, tensor=1)
c.evals = dict(retrieval=dict(type="retrieval", split="test", num_examples=32))
""")
  workdir = tmp_path / "w"
  result = run_cli(tiny_data_dir, workdir, config=config)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert "retrieval/image_to_text_R@1" in result.stdout
  assert (workdir / "checkpoints").is_dir()
  trained = json.loads((workdir / "eval_results.json").read_text())
  assert set(trained) == {"step", "retrieval/images", "retrieval/texts"} | {
      f"retrieval/{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
  # Evaluating the saved checkpoint later (python -m vlmjax.evaluate) reproduces the final results.
  from vlmjax import evaluate
  assert evaluate.evaluate_workdir(str(workdir)) == pytest.approx(trained, abs=1e-6)
