"""Several processes, one job: `launch/local.py` against one process with the same devices.

The reference is this test process itself (1 process × 8 fake devices). The multi-host runs are
2 processes × 4 fake devices started by `launch/local.py`, meeting through `jax.distributed`; each
reads its own slice of every global batch. Both must log the same losses, and a checkpoint written
by either must resume in the other. The data is a mixture of webdataset tar shards and the built-in
shapes set.
"""
import json
import os
import sys

import grain
import numpy as np
import pytest

from conftest import FAST_COMPILE_XLA_FLAGS, REPO, tiny_config
from test_launch import run_process_group
from test_webdataset import _jpg, img2dataset_sample, write_shard
from vlmjax.data import pipeline
from vlmjax.run import RunDir, read_metrics
from vlmjax.train import train

TOTAL = 8
STOP = 4


def _config(data_dir, shards):
  mixture = {"shards": dict(weight=0.5, data=dict(name="webdataset", files=dict(train=shards))),
             "shapes": dict(weight=0.5, data=dict(name="vlmjax_shapes", builder_config="tiny", data_dir=data_dir))}
  return tiny_config(data_dir, total_steps=TOTAL, mesh=dict(data=1, fsdp=-1, tensor=1),
                     **{"input.crop_min": 0.8, "input.brightness": 0.1, "checkpoint.every_steps": 0,
                        "data.mixture": mixture})


def _write_shards(tiny_source, folder, shards=2, per_shard=48) -> str:
  """Tar shards of the tiny train split's first records, as img2dataset writes them -> their pattern."""
  for s in range(shards):
    write_shard(str(folder / f"{s:05d}.tar"), [
        img2dataset_sample(f"{s:05d}{j:04d}", _jpg(r["image"]), r["caption"], int(r["label"]))
        for j, r in ((j, tiny_source[s * per_shard + j]) for j in range(per_shard))])
  return f"{folder}/{{00000..{shards - 1:05d}}}.tar"


def _losses(workdir):
  return {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}


def _launch(config, tmp_path, workdir, *extra):
  """Runs `vlmjax.train` as 2 processes × 4 fake CPU devices; the config travels as JSON."""
  json_path, config_path = tmp_path / "config.json", tmp_path / "config_from_json.py"
  json_path.write_text(config.to_json())
  config_path.write_text(
      "import json\nimport ml_collections\n\n\ndef get_config():\n"
      f"  with open({str(json_path)!r}) as f:\n    return ml_collections.ConfigDict(json.load(f))\n")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env["XLA_FLAGS"] = FAST_COMPILE_XLA_FLAGS  # launch/local.py adds each process's device count
  result = run_process_group(
      [sys.executable, str(REPO / "launch" / "local.py"), "2", "--devices_per_process", "4", "--",
       "--config", str(config_path), "--workdir", str(workdir), *extra], timeout=1800, env=env, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]


class ListSource:
  def __len__(self):
    return 40

  def __getitem__(self, i):
    return {"id": i}


class Recorder(grain.transforms.RandomMap):
  """A stand-in for Preprocess: keeps the record id and one draw of the per-example RNG."""
  def random_map(self, record, rng):
    return {"id": np.int64(record["id"]), "draw": rng.integers(1 << 30)}


def test_process_slices_assemble_the_single_process_batch():
  """Process p's batch k is slice p of global batch k, with the same augmentation RNG draws."""
  def batches(process_index, process_count, n=6):
    it = iter(pipeline.train_dataset(ListSource(), Recorder(), 12 // process_count, seed=3,
                                     process_index=process_index, process_count=process_count, num_threads=1))
    return [next(it) for _ in range(n)]

  single = batches(0, 1)
  for count in (2, 3):
    per_process = [batches(p, count) for p in range(count)]
    for k, expected in enumerate(single):
      for key in ("id", "draw"):
        np.testing.assert_array_equal(np.concatenate([b[k][key] for b in per_process]), expected[key])


def test_data_state_from_disagreeing_processes_is_refused(tmp_path):
  from etils import epath
  from vlmjax.checkpoint import DataIteratorHandler
  (tmp_path / "process_0-of-2.json").write_text(json.dumps({"next_index": 3}))
  (tmp_path / "process_1-of-2.json").write_text(json.dumps({"next_index": 4}))
  with pytest.raises(ValueError, match="not all equal"):
    DataIteratorHandler().restore(epath.Path(tmp_path), item=object())


@pytest.fixture(scope="module")
def runs(tiny_data_dir, tiny_source, tmp_path_factory):
  config = _config(tiny_data_dir, _write_shards(tiny_source, tmp_path_factory.mktemp("shards")))
  reference = tmp_path_factory.mktemp("one_process")
  train(config, str(reference))
  # 2 processes to STOP, then this single process to TOTAL.
  two_then_one = tmp_path_factory.mktemp("two_then_one")
  _launch(config, tmp_path_factory.mktemp("cfg_a"), two_then_one, "--stop_after_steps", str(STOP))
  checkpointer = RunDir(str(two_then_one)).checkpointer(0, 3)
  # (orbax may add its own marker files, e.g. commit_success.txt, beside the per-process states)
  saved_by_two = (checkpointer.latest_step(), sorted(
      p.name for p in (checkpointer.manager.directory / str(STOP) / "data").iterdir() if p.suffix == ".json"))
  checkpointer.close()
  train(config, str(two_then_one))
  # This single process to STOP, then 2 processes to TOTAL.
  one_then_two = tmp_path_factory.mktemp("one_then_two")
  train(config, str(one_then_two), stop_after_steps=STOP)
  _launch(config, tmp_path_factory.mktemp("cfg_b"), one_then_two)
  return dict(reference=_losses(reference), two_then_one=_losses(two_then_one),
              one_then_two=_losses(one_then_two), saved_by_two=saved_by_two)


@pytest.mark.slow
def test_two_processes_log_the_losses_of_one(runs):
  reference, two = runs["reference"], runs["two_then_one"]
  assert sorted(reference) == list(range(1, TOTAL + 1))
  steps = range(1, STOP + 1)  # written by the 2-process run
  np.testing.assert_allclose([two[s] for s in steps], [reference[s] for s in steps], rtol=1e-5, atol=1e-6)
  assert len(set(reference.values())) == TOTAL  # training moves: the comparison is not of constants


@pytest.mark.slow
def test_checkpoint_of_two_processes_resumes_in_one(runs):
  assert runs["saved_by_two"] == (STOP, ["process_0-of-2.json", "process_1-of-2.json"])
  two_then_one, reference = runs["two_then_one"], runs["reference"]
  assert sorted(two_then_one) == list(range(1, TOTAL + 1))
  steps = range(STOP + 1, TOTAL + 1)
  np.testing.assert_allclose([two_then_one[s] for s in steps], [reference[s] for s in steps], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_checkpoint_of_one_process_resumes_in_two(runs):
  one_then_two, reference = runs["one_then_two"], runs["reference"]
  assert sorted(one_then_two) == list(range(1, TOTAL + 1))
  steps = range(STOP + 1, TOTAL + 1)  # written by the 2-process run
  np.testing.assert_allclose([one_then_two[s] for s in steps], [reference[s] for s in steps], rtol=1e-5, atol=1e-6)
