"""Reliability: preemption, crash-safe checkpoints, exact resume, NaN steps, bad data, workdir safety.

The end-to-end chain (marked slow) runs the real command line, `python -m vlmjax.train`, in
subprocesses that share a persistent XLA compilation cache (only the first run of each device count
compiles). A hook script makes the faults land at a chosen step: a real SIGTERM sent to the process
by itself after step 8, a real SIGKILL just before orbax renames the step-10 checkpoint into place.

  A  uninterrupted, 15 steps on 8 devices                    (the reference)
  B  SIGTERM after step 8 -> exit 0, checkpoint 8
     resume, SIGKILL inside the async save of step 10       -> checkpoint 8 still the newest
     resume -> step 15: every loss and the final params equal A's bit for bit
  C  B's step-8 checkpoint resumed on 4 devices and on 1    -> the losses of steps 9..15 match A's
  D  a CSV with 5% bad rows trains 30 steps and reports them; over a 1% threshold it stops in one line
"""
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import FAST_COMPILE_XLA_FLAGS, REPO, tiny_config
from test_resume import _final_params
from vlmjax import config as config_lib, experiment, registry, sharding, trainer, workdir as workdir_lib
from vlmjax.config import ConfigError
from vlmjax.data import pipeline, sources
from vlmjax.data.tokenizer import Tokenizer
from vlmjax.run import RunDir, drop_metrics_after, read_metrics
from vlmjax.objectives.contrastive import ClipObjective
from vlmjax.preemption import Preemption
from vlmjax.train import NonFiniteError, train


def _losses(workdir):
  return {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}


def _restore_states(config, workdir, steps):
  """{step: the full train state of that checkpoint, on the host}."""
  tokenizer = Tokenizer.load(os.path.join(workdir, "tokenizer.model"))
  abstract, _ = experiment.build(config, tokenizer.vocab_size).abstract_state()
  checkpointer = RunDir(workdir).checkpointer(0, 10)
  try:
    return {step: jax.device_get(checkpointer.restore(abstract, step=step)) for step in steps}
  finally:
    checkpointer.close()


def _saved_steps(workdir):
  checkpointer = RunDir(workdir).checkpointer(0, 10)
  try:
    return sorted(checkpointer.manager.all_steps())
  finally:
    checkpointer.close()


# --- bad data: the pipeline ----------------------------------------------------------------------


def _png(value: int, size=8) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


NOT_UTF8 = b"a caf\xe9 circle".decode("utf-8", errors="surrogateescape")  # as the sources decode it
BAD_KINDS = {3: "corrupt_image", 7: "empty_image", 11: "empty_caption", 20: "long_caption", 33: "not_utf8"}


class RecordsWithBadOnes:
  """40 records with an `id`; those in `bad` (id -> reason) are broken in that way."""

  def __init__(self, bad=BAD_KINDS, n=40):
    self.bad, self.n = dict(bad), n

  def __len__(self):
    return self.n

  def __getitem__(self, index):
    index = int(index)
    record = {"image": _png(index), "caption": "a red circle", "id": index}
    kind = self.bad.get(index)
    if kind == "corrupt_image":
      record["image"] = _png(index)[:20] + b"\x00garbage"
    elif kind == "empty_image":
      record["image"] = b""
    elif kind == "empty_caption":
      record["caption"] = "   "
    elif kind == "long_caption":
      record["caption"] = "a red circle " * 100
    elif kind == "not_utf8":
      record["caption"] = NOT_UTF8
    return record


def _preprocess(tokenizer):
  return pipeline.Preprocess(tokenizer, 8, 8, train=True, crop_min=0.7, passthrough=("id",),
                             max_caption_chars=1000)


def test_each_kind_of_bad_record_is_named(tiny_tokenizer):
  preprocess = _preprocess(tiny_tokenizer)
  source = RecordsWithBadOnes()
  rng = np.random.default_rng(0)
  for index, reason in BAD_KINDS.items():
    out = preprocess.random_map(source[index], rng)
    assert isinstance(out, pipeline.BadRecord) and out.reason == reason, (index, out)
  good = preprocess.random_map(source[0], rng)
  assert good["image"].shape == (8, 8, 3) and good["text"].shape == (8,)
  zero_pixels = preprocess.random_map({"image": np.zeros((0, 4, 3), np.uint8), "caption": "x"}, rng)
  assert zero_pixels.reason == "empty_image"


def test_bad_records_are_skipped_counted_and_resume_exactly(tiny_tokenizer):
  make = lambda: iter(pipeline.train_dataset(RecordsWithBadOnes(), _preprocess(tiny_tokenizer), 8, seed=0,
                                             num_threads=2))
  it = make()
  batches = [next(it) for _ in range(10)]  # 80 slots: two epochs of 40 records
  ids = np.concatenate([b["id"] for b in batches])
  assert all(len(b["id"]) == 8 for b in batches), "a skipped record leaves no hole in a batch"
  assert not set(ids.tolist()) & set(BAD_KINDS), "no bad record reaches a batch"
  counts = sum(b["bad_records"].sum(0) for b in batches)
  # Each epoch puts every bad record in some slot once; a slot's stand-in may be bad too (rarely).
  assert all(counts[pipeline.BAD_REASONS.index(reason)] >= 2 for reason in BAD_KINDS.values()), counts
  assert pipeline.describe_bad_records(counts).startswith(f"{counts[0]} corrupt image, ")
  # The skips are part of the (checkpointed) position: a restored iterator continues identically.
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(3)]
  resumed = make()
  resumed.set_state(state)
  for a, b in zip(expected, [next(resumed) for _ in range(3)]):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_unreadable_data_fails_with_one_line(tiny_tokenizer):
  source = RecordsWithBadOnes(bad={i: "corrupt_image" for i in range(40)})
  with pytest.raises(pipeline.BadDataError, match=r"^data: 100 records in a row are bad \(100 corrupt image"):
    next(iter(pipeline.train_dataset(source, _preprocess(tiny_tokenizer), 8, seed=0, num_threads=2)))


def test_bad_fraction_threshold():
  counts = np.array([5, 0, 1, 0, 0])
  pipeline.check_bad_records(counts, good_records=10, max_fraction=0.1)  # 16 read: too few to judge
  pipeline.check_bad_records(counts, good_records=200, max_fraction=0.1)  # 3%
  with pytest.raises(pipeline.BadDataError) as error:
    pipeline.check_bad_records(counts, good_records=200, max_fraction=0.02)
  assert str(error.value) == ("data: 6 of the 206 records read so far are bad (5 corrupt image, 1 empty caption), "
                              "over data.max_bad_fraction = 0.02; fix the data or raise the threshold")


def test_evaluation_leaves_bad_records_out(tiny_tokenizer):
  preprocess = pipeline.Preprocess(tiny_tokenizer, 8, 8, passthrough=("id",), max_caption_chars=1000)
  batches = list(pipeline.eval_batches(RecordsWithBadOnes(), preprocess, 16, num_threads=1))
  ids = np.concatenate([b["id"] for b in batches])
  np.testing.assert_array_equal(ids, [i for i in range(40) if i not in BAD_KINDS])


def _write_pairs(folder, records, bad):
  """A CSV of `records` (dicts with a uint8 image and a caption) as PNG files; `bad`: row -> kind."""
  os.makedirs(folder / "images", exist_ok=True)
  lines = [b"image_path,caption\n"]
  for i, record in enumerate(records):
    name = f"images/{i}.png"
    Image.fromarray(np.asarray(record["image"])).save(folder / name)
    caption = record["caption"].replace(",", " ").encode()
    kind = bad.get(i)
    if kind == "corrupt_image":
      (folder / name).write_bytes((folder / name).read_bytes()[:40])  # a truncated PNG
    elif kind == "empty_image":
      (folder / name).write_bytes(b"")
    elif kind == "empty_caption":
      caption = b""
    elif kind == "long_caption":
      caption = b"x" * 1500
    elif kind == "not_utf8":
      caption = b"a caf\xe9 square"  # Latin-1, not UTF-8
    lines.append(name.encode() + b"," + caption + b"\n")
  path = folder / "pairs.csv"
  path.write_bytes(b"".join(lines))
  return str(path)


def test_csv_source_reads_bad_rows_and_preprocess_names_them(tmp_path, tiny_source, tiny_tokenizer):
  kinds = dict(enumerate(BAD_KINDS.values()))
  source = sources.FileListSource(_write_pairs(tmp_path, [tiny_source[i] for i in range(8)], kinds))
  assert len(source) == 8
  preprocess = pipeline.Preprocess(tiny_tokenizer, 8, 8, max_caption_chars=1000)
  reasons = [getattr(preprocess.map(source[i]), "reason", "ok") for i in range(8)]
  assert reasons == list(BAD_KINDS.values()) + ["ok"] * 3


def test_tfds_record_that_cannot_be_decoded_is_a_bad_record(tiny_data_dir):
  source = sources.make_source(tiny_config(tiny_data_dir).data, "train")

  class Failing:
    def __getitem__(self, index):
      raise OSError("image file is truncated")

  source.source = Failing()
  record = source[5]
  assert isinstance(record, pipeline.BadRecord) and record.reason == "corrupt_image"
  assert "truncated" in record.detail


# --- workdir safety, preemption flag, metrics after a kill -----------------------------------------


def _fake_run(workdir, config):
  """A workdir as a run leaves it: config.json and a checkpoint (of a stand-in state)."""
  workdir_lib.prepare(config, str(workdir))
  checkpointer = RunDir(str(workdir)).checkpointer(0, 3)
  checkpointer.save(4, {"x": np.zeros(3, np.float32)})
  checkpointer.close()
  (workdir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
  (workdir / "tokenizer.model").write_bytes(b"old")


def test_workdir_of_another_run_is_refused(tmp_path, tiny_data_dir):
  config = tiny_config(tiny_data_dir, total_steps=20)
  _fake_run(tmp_path, config)
  # Keys that may change on resume: the length, the mesh, how often things are written.
  workdir_lib.prepare(tiny_config(tiny_data_dir, total_steps=40, log_every_steps=5,
                                  mesh=dict(data=1, fsdp=-1, tensor=1)), str(tmp_path))
  other = tiny_config(tiny_data_dir, total_steps=20, batch_size=32, mesh=dict(data=1, fsdp=-1, tensor=1),
                      **{"model.embed_dim": 64})
  with pytest.raises(ConfigError) as error:
    train(other, str(tmp_path))  # refused before anything is built
  message = str(error.value)
  assert message.startswith(f"workdir: '{tmp_path}' holds checkpoints (step 4) of a run with another config ")
  assert "batch_size: 16 -> 32" in message and "model.embed_dim: 32 -> 64" in message
  assert "--overwrite" in message and "\n" not in message
  assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 16  # untouched


def test_overwrite_deletes_the_previous_run(tmp_path, tiny_data_dir):
  _fake_run(tmp_path, tiny_config(tiny_data_dir))
  (tmp_path / "notes.txt").write_text("mine")
  other = tiny_config(tiny_data_dir, batch_size=32)
  workdir_lib.prepare(other, str(tmp_path), overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ["config.json", "notes.txt"]
  assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 32


def test_config_differences_ignore_resumable_keys():
  saved = {"total_steps": 10, "mesh": {"fsdp": 1}, "checkpoint": {"keep": 3}, "seed": 0,
           "data": {"num_threads": 1, "name": "csv"}, "optimizer": {"learning_rate": 0.001}}
  new = {"total_steps": 20, "mesh": {"fsdp": -1}, "checkpoint": {"keep": 5}, "seed": 1,
         "data": {"num_threads": 4, "name": "csv", "max_bad_fraction": 0.1}, "optimizer": {"b1": 0.9}}
  assert workdir_lib.config_differences(saved, new) == [
      "optimizer.b1: (unset) -> 0.9", "optimizer.learning_rate: 0.001 -> (unset)", "seed: 0 -> 1"]


def test_a_run_saved_before_keys_were_added_resumes():
  """A config.json written before a key existed reads as that key's default ("off")."""
  new = json.loads(config_lib.base_config().to_json())
  saved = json.loads(json.dumps(new))
  for key in workdir_lib.ADDED_DEFAULTS:
    section, leaf = key.split(".")
    del saved[section][leaf]
  assert workdir_lib.config_differences(saved, new) == []
  new["optimizer"]["ema_decay"] = 0.999  # turned on: a change that is not resumable
  assert workdir_lib.config_differences(saved, new) == ["optimizer.ema_decay: 0.0 -> 0.999"]


def test_sigterm_sets_the_flag_and_handlers_are_restored():
  before = signal.getsignal(signal.SIGTERM)
  with Preemption() as preemption:
    assert not preemption.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
    assert preemption.reached(2) and preemption.signal_name == "SIGTERM"
  assert signal.getsignal(signal.SIGTERM) is before


def test_second_ctrl_c_interrupts_at_once():
  with Preemption() as preemption:
    os.kill(os.getpid(), signal.SIGINT)  # the first asks for a checkpoint...
    assert preemption.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)  # ...the second does not wait for it


def test_checkpoints_and_config_are_read_without_pickle(tmp_path, tiny_data_dir, tiny_tokenizer, monkeypatch):
  config = tiny_config(tiny_data_dir)
  workdir_lib.prepare(config, str(tmp_path))
  make_data = lambda: iter(pipeline.train_dataset(RecordsWithBadOnes(), _preprocess(tiny_tokenizer), 8, seed=0,
                                                  num_threads=1))
  data = make_data()
  next(data)
  state = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "step": np.int32(1)}
  checkpointer = RunDir(str(tmp_path)).checkpointer(0, 3)
  checkpointer.save(1, state, data)
  checkpointer.close()
  expected = next(data)

  def refuse(*args, **kwargs):
    raise AssertionError("a checkpoint or config was unpickled")
  for name in ("load", "loads", "Unpickler"):
    monkeypatch.setattr(pickle, name, refuse)
  workdir_lib.prepare(config, str(tmp_path))  # reads config.json back (JSON)
  replicated = jax.sharding.NamedSharding(sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1)),
                                          jax.sharding.PartitionSpec())
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=replicated),
                          state)
  restored_data = make_data()
  checkpointer = RunDir(str(tmp_path)).checkpointer(0, 3)
  restored = checkpointer.restore(abstract, restored_data)
  checkpointer.close()
  np.testing.assert_array_equal(restored["params"]["w"], state["params"]["w"])
  np.testing.assert_array_equal(next(restored_data)["id"], expected["id"])


def test_metrics_past_the_resumed_step_are_dropped(tmp_path):
  lines = [json.dumps({"step": s, "loss": float(s)}) for s in (1, 2, 3)] + ['{"step": 4, "lo']  # cut by a kill
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
  drop_metrics_after(str(tmp_path), 2)
  assert [m["step"] for m in read_metrics(str(tmp_path))] == [1, 2]


# --- NaN / Inf steps ---------------------------------------------------------------------------------


@jax.custom_vjp
def _nan_gradient_if(x, bad):
  return x


def _nan_gradient_fwd(x, bad):
  return x, bad


def _nan_gradient_bwd(bad, g):
  return jnp.where(bad, jnp.nan, g), None


_nan_gradient_if.defvjp(_nan_gradient_fwd, _nan_gradient_bwd)


class NanGradientClip(ClipObjective):
  """CLIP whose gradients (not its loss) are NaN at the given 0-based steps: a fault injection."""

  def __init__(self, nan_steps=()):
    super().__init__()
    self.nan_steps = tuple(nan_steps)

  def __call__(self, outputs, batch, step=None):
    bad = jnp.isin(step, jnp.asarray(self.nan_steps, jnp.int32))
    return super().__call__({**outputs, "image_embeds": _nan_gradient_if(outputs["image_embeds"], bad)},
                            batch, step)


registry.register("objective", "test_nan_gradient_clip")(NanGradientClip)


def _all_finite(tree):
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree) if np.issubdtype(x.dtype, np.floating))


@pytest.mark.slow  # one training run (its compilation dominates: ~1 min of CPU)
def test_nan_gradients_are_skipped_counted_and_never_saved(tmp_path, tiny_data_dir):
  # NaN gradients (a finite loss) in steps 3-4: skipped, training goes on. Then in every step from 9:
  # the third in a row stops the run. Checkpoints every 2 steps.
  config = tiny_config(tiny_data_dir, total_steps=14, max_consecutive_nonfinite=3,
                       mesh=dict(data=1, fsdp=-1, tensor=1),
                       objectives=dict(test_nan_gradient_clip=dict(weight=1.0, nan_steps=(2, 3, *range(8, 14)))),
                       **{"checkpoint.every_steps": 2, "checkpoint.keep": 10})
  with pytest.raises(NonFiniteError, match=r"^train: the loss or gradients were NaN/Inf in 3 steps in a row "
                                           r"\(steps 9\.\.11, .*max_consecutive_nonfinite = 3"):
    train(config, str(tmp_path))
  metrics = {m["step"]: m for m in read_metrics(str(tmp_path))}
  assert sorted(metrics) == list(range(1, 12))
  assert [s for s in sorted(metrics) if not np.isfinite(metrics[s]["grad_norm"])] == [3, 4, 9, 10, 11]
  assert all(np.isfinite(metrics[s]["loss"]) for s in metrics)  # the loss itself was fine
  assert [metrics[s]["nonfinite_steps"] for s in (2, 3, 4, 5, 8, 11)] == [0, 1, 2, 2, 2, 5]
  assert [metrics[s]["nonfinite_streak"] for s in (3, 4, 5, 11)] == [1, 2, 0, 3]
  assert _saved_steps(str(tmp_path)) == [2, 4, 6, 8, 10]
  states = _restore_states(config, str(tmp_path), (2, 4, 8, 10))
  for step, state in states.items():
    assert _all_finite(state["params"]) and _all_finite(state["opt_state"]), f"NaN in checkpoint {step}"
  assert int(states[10]["extras"]["nonfinite_steps"]) == 4
  for before, after in ((2, 4), (8, 10)):  # the skipped steps changed neither the params nor Adam's moments
    for a, b in zip(jax.tree.leaves(states[before]), jax.tree.leaves(states[after])):
      if np.issubdtype(a.dtype, np.floating):
        np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(states[4]["params"]),
                                                      jax.tree.leaves(states[8]["params"]))), \
      "the finite steps 5..8 did train"


# --- the command line (slow): preemption, SIGKILL in a save, other device counts, bad data ------------

HOOK = """\
import os, runpy, signal, sys
kind, at = sys.argv[1], int(sys.argv[2])
sys.argv = [sys.argv[0]] + sys.argv[3:]
if kind == "sigterm_after_step":  # from inside, so that it lands after exactly this step
  from vlmjax import metrics
  write = metrics.MetricWriter.write
  def write_then_signal(self, step, values):
    write(self, step, values)
    if step == at and "loss" in values:
      os.kill(os.getpid(), signal.SIGTERM)
  metrics.MetricWriter.write = write_then_signal
elif kind == "sigkill_in_save":  # the step's files are written, the rename that completes it is not
  from orbax.checkpoint._src.path import atomicity
  finalize = atomicity.AtomicRenameTemporaryPath.finalize
  async def killed_finalize(self, *args, **kwargs):
    if self.get_final().name == str(at):
      os.kill(os.getpid(), signal.SIGKILL)
    return await finalize(self, *args, **kwargs)
  atomicity.AtomicRenameTemporaryPath.finalize = killed_finalize
runpy.run_module("vlmjax.train", run_name="__main__", alter_sys=True)
"""

CONFIG_FILE = """\
import json
import ml_collections
def get_config():
  return ml_collections.ConfigDict(json.loads({text!r}))
"""

TOTAL, SIGTERM_AT, SIGKILL_AT = 15, 8, 10
BAD_TOTAL = 30  # the bad-data runs: 4.8 epochs of 100 rows
BAD_ROWS = {10: "corrupt_image", 30: "empty_image", 50: "empty_caption", 70: "long_caption", 90: "not_utf8"}


def _chain_config(data_dir, **overrides):
  # Crop and brightness on, so the data RNG must be restored too; FSDP over however many devices.
  return tiny_config(data_dir, **{
      "total_steps": TOTAL, "mesh": dict(data=1, fsdp=-1, tensor=1), "log_every_steps": 1,
      "checkpoint.every_steps": 5, "checkpoint.async_save": True, "input.crop_min": 0.8,
      "input.brightness": 0.1, "optimizer.warmup_steps": 5, **overrides})


class Cli:
  """`python -m vlmjax.train` through the hook script; runs share a persistent compilation cache."""

  def __init__(self, folder):
    self.folder = folder
    (folder / "hook.py").write_text(HOOK)

  def config(self, name, config):
    path = self.folder / f"{name}.py"
    path.write_text(CONFIG_FILE.format(text=config.to_json()))
    return path

  def run(self, config_path, workdir, *args, devices=8, hook=("none", 0)):
    env = dict(os.environ, XLA_FLAGS=f"{FAST_COMPILE_XLA_FLAGS} --xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(self.folder / "xla_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    cmd = [sys.executable, str(self.folder / "hook.py"), hook[0], str(hook[1]), "--config", str(config_path),
           "--workdir", str(workdir), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def chain(tiny_data_dir, tiny_source, tmp_path_factory):
  folder = tmp_path_factory.mktemp("chain")
  cli = Cli(folder)
  config = _chain_config(tiny_data_dir)
  main = cli.config("main", config)
  out = {"config": config, "a": folder / "a", "b": folder / "b"}
  out["run_a"] = cli.run(main, out["a"])
  out["sigterm"] = cli.run(main, out["b"], hook=("sigterm_after_step", SIGTERM_AT))
  out["after_sigterm"] = dict(steps=_saved_steps(str(out["b"])), losses=_losses(str(out["b"])))
  for devices in (1,):  # C: a copy of B's workdir at step SIGTERM_AT, resumed on one device
    out[f"c{devices}"] = folder / f"c{devices}"
    shutil.copytree(out["b"], out[f"c{devices}"])
    out[f"run_c{devices}"] = cli.run(main, out[f"c{devices}"], devices=devices)
  out["sigkill"] = cli.run(main, out["b"], hook=("sigkill_in_save", SIGKILL_AT))
  out["after_sigkill"] = dict(steps=_saved_steps(str(out["b"])),
                              folders=sorted(os.listdir(out["b"] / "checkpoints")))
  out["resume"] = cli.run(main, out["b"])
  out["folders_after_resume"] = sorted(os.listdir(out["b"] / "checkpoints"))
  # Bad data: 5 of 100 CSV rows broken, one of each kind; then the same data over a 1% threshold.
  csv_path = _write_pairs(folder / "data", [tiny_source[i] for i in range(100)], BAD_ROWS)
  csv = {"data.name": "csv", "data.files": {"train": csv_path}, "total_steps": BAD_TOTAL}
  out["bad"] = folder / "bad"
  out["run_bad"] = cli.run(cli.config("bad", _chain_config(tiny_data_dir, **csv)), out["bad"])
  strict = cli.config("strict", _chain_config(tiny_data_dir, **csv, **{"data.max_bad_fraction": 0.01}))
  out["run_strict"] = cli.run(strict, folder / "strict")
  return out


def _ok(result):
  assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
  return result


def _error_line(result):
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
  return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_and_exits_0(chain):
  _ok(chain["run_a"])
  result = _ok(chain["sigterm"])
  assert f"vlmjax.train: SIGTERM: saved a checkpoint at step {SIGTERM_AT}" in result.stdout
  assert "run the same command to resume" in result.stdout
  assert chain["after_sigterm"]["steps"] == [5, SIGTERM_AT]
  assert sorted(chain["after_sigterm"]["losses"]) == list(range(1, SIGTERM_AT + 1))


@pytest.mark.slow
def test_sigkill_during_async_save_leaves_the_previous_checkpoint(chain):
  assert chain["sigkill"].returncode == -signal.SIGKILL
  assert chain["after_sigkill"]["steps"] == [5, SIGTERM_AT], f"the half-written step {SIGKILL_AT} is not listed"
  assert any(name.startswith(f"{SIGKILL_AT}.") for name in chain["after_sigkill"]["folders"]), \
      chain["after_sigkill"]["folders"]  # its temporary folder is there...
  result = _ok(chain["resume"])
  assert f"Resuming from step {SIGTERM_AT}" in result.stdout
  assert chain["folders_after_resume"] == sorted(str(s) for s in (SIGTERM_AT, SIGKILL_AT, TOTAL)), \
      "...and gone after the restart"


@pytest.mark.slow
def test_preempted_and_killed_run_equals_uninterrupted_exactly(chain):
  _ok(chain["resume"])
  a, b = _losses(str(chain["a"])), _losses(str(chain["b"]))
  assert sorted(a) == sorted(b) == list(range(1, TOTAL + 1)), "each step logged once, none twice"
  assert len(set(a.values())) > 10
  for step in range(1, TOTAL + 1):
    assert b[step] == a[step], f"step {step}: interrupted run {b[step]!r} != uninterrupted {a[step]!r}"
  pa = _final_params(chain["config"], str(chain["a"]), TOTAL)
  pb = _final_params(chain["config"], str(chain["b"]), TOTAL)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(y, x, err_msg=trainer.path_str(path))


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1])
def test_resume_on_fewer_devices_continues_the_run(chain, devices):
  result = _ok(chain[f"run_c{devices}"])
  assert f"Resuming from step {SIGTERM_AT}" in result.stdout
  a, c = _losses(str(chain["a"])), _losses(str(chain[f"c{devices}"]))
  assert sorted(c) == list(range(1, TOTAL + 1))
  for step in range(SIGTERM_AT + 1, TOTAL + 1):  # same batches, same state; only summation order differs
    np.testing.assert_allclose(c[step], a[step], rtol=1e-5, err_msg=f"step {step}")  # measured: 9e-8
  pa = _final_params(chain["config"], str(chain["a"]), TOTAL)
  pc = _final_params(chain["config"], str(chain[f"c{devices}"]), TOTAL)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(pa), jax.tree.leaves(pc)):
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5, err_msg=trainer.path_str(path))  # measured: 4e-7


@pytest.mark.slow
def test_run_with_five_percent_bad_records_trains_to_the_end(chain):
  result = _ok(chain["run_bad"])
  last = [m for m in read_metrics(str(chain["bad"])) if "loss" in m][-1]
  assert last["step"] == BAD_TOTAL and np.isfinite(last["loss"])
  bad = int(last["bad_records"])
  assert 20 <= bad <= 40, bad  # 480 slots = 4.8 epochs, each meeting the 5 bad rows once (+ stand-ins)
  assert all(last[f"bad_records/{reason}"] >= 4 for reason in BAD_ROWS.values()), last
  report = [line for line in result.stdout.splitlines() if line.startswith("data: skipped")]
  assert report == [f"data: skipped {bad} bad records of {bad + BAD_TOTAL * 16} read "
                    f"({100 * bad / (bad + BAD_TOTAL * 16):.2f}%): " + ", ".join(
                        f"{int(last[f'bad_records/{r}'])} {r.replace('_', ' ')}" for r in BAD_ROWS.values())]


@pytest.mark.slow
def test_flood_of_bad_records_stops_with_one_line(chain):
  line = _error_line(chain["run_strict"])
  assert re.fullmatch(r"vlmjax\.train: error: data: \d+ of the \d+ records read so far are bad \(.*\), "
                      r"over data\.max_bad_fraction = 0\.01; fix the data or raise the threshold", line), line
