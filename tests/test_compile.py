"""`python -m vlmjax.bench.compile`: slice names to TPU topologies, and (where libtpu is installed: `make
libtpu`) the real train step compiled for a TPU slice on this CPU machine, its report, and the
one-line failure when it does not fit."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, tiny_config
from vlmjax.bench import compile as compile_lib


@pytest.mark.parametrize("name, shape, chips, hosts, libtpu", [
    ("v5p-8", (2, 2, 1), 4, 1, "v5p:2x2x1"),
    ("v5p-64", (2, 4, 4), 32, 8, "v5p:2x4x4"),
    ("v5p-256", (4, 4, 8), 128, 32, "v5p:4x4x8"),
    ("v4-32", (2, 2, 4), 16, 4, "v4:2x2x4"),
    ("v5litepod-16", (4, 4), 16, 4, "v5e:4x4"),
    ("v6e-256", (16, 16), 256, 64, "v6e:16x16"),
    ("v5p:4x4x12", (4, 4, 12), 192, 48, "v5p:4x4x12"),
])
def test_slice_names(name, shape, chips, hosts, libtpu):
  topology = compile_lib.parse_topology(name)
  assert (topology.shape, topology.num_chips, topology.num_hosts, topology.libtpu_topology) == (
      shape, chips, hosts, libtpu)


def test_wrap_around_links():
  assert compile_lib.parse_topology("v5p-128").wrap == (True, True, True)   # 4x4x4: a full torus
  assert compile_lib.parse_topology("v5p-64").wrap == (False, False, False)
  assert compile_lib.parse_topology("v6e-256").wrap == (True, True, False)


@pytest.mark.parametrize("name, message", [
    ("v5p-63", "not a standard slice"), ("v9-8", "unknown TPU 'v9'"), ("v5p", "expected e.g. v5p-64"),
    ("v5p:4x4", "v5p slices have 3 dimensions"), ("v5p:4xAx4", "expected e.g. v5p:4x4x4")])
def test_bad_slice_names(name, message):
  with pytest.raises(compile_lib.CompileError, match=message):
    compile_lib.parse_topology(name)


def _has_libtpu() -> bool:
  try:
    compile_lib.find_libtpu()
    return True
  except compile_lib.CompileError:
    return False


needs_libtpu = pytest.mark.skipif(not _has_libtpu(), reason="libtpu is not installed (make libtpu)")


def _compile(tmp_path, config, topology):
  json_path, config_path = tmp_path / "config.json", tmp_path / "config_from_json.py"
  json_path.write_text(config.to_json())
  config_path.write_text("import json\nimport ml_collections\n\n\ndef get_config():\n"
                         f"  with open({str(json_path)!r}) as f:\n    return ml_collections.ConfigDict(json.load(f))\n")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  return subprocess.run([sys.executable, "-m", "vlmjax.bench.compile", "--config", str(config_path), "--topology",
                         topology, "--json", str(tmp_path / "report.json")],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=1200)


@needs_libtpu
def test_compiles_the_train_step_for_a_tpu_slice(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, batch_size=64, mesh=dict(data=1, fsdp=-1, tensor=1),
                       **{"precision.compute_dtype": "bfloat16", "model.image.remat": "full"})
  result = _compile(tmp_path, config, "v5p-8")
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["chips"] == 4 and report["device_kind"].startswith("TPU v5")
  assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and report["per_chip_batch"] == 16
  memory = report["memory"]
  assert 0 < memory["arguments"] < memory["total"] < memory["hbm"] and report["fits"]
  # The compiled step does more FLOPs than the model (remat recomputes the image tower's forward).
  assert 0 < report["model_flops_per_step"] < report["flops_per_step"]
  assert 0 < report["mfu"] < 1 and report["step_time_s"] > 0
  assert "memory per chip: total" in result.stdout and "estimated MFU" in result.stdout


@needs_libtpu
def test_a_step_that_does_not_fit_fails_in_one_line(tiny_data_dir, tmp_path):
  # A 2-billion-row token embedding: 64 B params, ~770 GB of params and Adam state over 4 chips.
  config = tiny_config(tiny_data_dir, **{"tokenizer.vocab_size": 2_000_000_000,
                                         "mesh": dict(data=1, fsdp=-1, tensor=1)})
  result = _compile(tmp_path, config, "v5p-8")
  assert result.returncode == 1, result.stderr[-2000:]
  # libtpu may log its own warnings first; vlmjax's error is the last line, and a single one.
  ours = [line for line in result.stderr.splitlines() if line.startswith("vlmjax.bench.compile")]
  assert len(ours) == 1 and ours[0].startswith("vlmjax.bench.compile: error: does not fit on v5p-8"), \
      result.stderr[-2000:]
  assert result.stderr.splitlines()[-1] == ours[0]


@needs_libtpu
def test_compiled_flops_are_counted_completely_on_a_large_slice(tiny_data_dir, tmp_path):
  """On v5p-64 (32 chips) the TPU partitioner turns FSDP matmuls into loops whose bodies XLA's cost
  analysis counts once (29% of this model's FLOPs went uncounted); the count is taken from a program
  without them. No remat: the compiled count is the model's own, which `vlmjax.flops` counts by hand
  (every matmul, 2 FLOPs per multiply-add, a train step 3 × forward)."""
  config = tiny_config(tiny_data_dir, batch_size=256, mesh=dict(data=1, fsdp=-1, tensor=1), **{
      "input.image_size": 64, "precision.compute_dtype": "bfloat16",
      "model.image": dict(variant="S/16", depth=2, pool="cls"), "model.text": dict(variant="S", depth=2, max_len=16)})
  result = _compile(tmp_path, config, "v5p-64")
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["loops_in_counted_program"] == 0 and report["chips"] == 32
  assert 1.0 <= report["flops_per_step"] / report["model_flops_per_step"] <= 1.02  # measured: 1.006
  assert f"{report['flops_per_step'] / report['model_flops_per_step']:.2f} × the model's" in result.stdout
