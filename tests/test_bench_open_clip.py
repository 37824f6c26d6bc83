"""The side-by-side benchmark against open_clip's PyTorch train step (vlmjax.bench.open_clip) times
the same model: the same parameters (up to the patch bias CLIP's convolution lacks), the same loss on
the same weights and batch at step 0 and, the optimizer being the same, after a few updates too; its
report holds both rows. Skipped without the `interop` extra (`make test-interop`)."""
import json
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")

from conftest import tiny_config  # noqa: E402
from vlmjax.bench import open_clip as bench_open_clip, report as bench_report  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def report():
  # 2 + 2 steps per row: the last loss is after three AdamW updates at non-zero learning rates.
  return bench_open_clip.bench_against_open_clip(tiny_config("unused"), steps=2, warmup=2, repeats=1,
                                                 torch_compile=False, op_profile=True)


def test_same_model_same_loss(report):
  params = report["params"]
  assert params["open_clip"] == params["vlmjax"] - params["vlmjax_patch_bias"]
  assert report["config"]["clip_architecture_changes"] == ["image.pool: gap -> cls", "image.pre_norm: False -> True"]
  rows = report["rows"]
  assert abs(rows["open_clip eager"]["loss_step0"] - rows["vlmjax"]["loss_step0"]) <= TOL
  assert report["loss_step0_max_abs_diff"] <= TOL
  # Same optimizer and schedule: a wrong learning rate, decay or clipping moves this by ~1e-1.
  assert abs(rows["open_clip eager"]["loss_last"] - rows["vlmjax"]["loss_last"]) <= 2e-3
  assert rows["vlmjax"]["loss_last"] < rows["vlmjax"]["loss_step0"] - 0.1


def test_report_has_both_rows(report, tmp_path):
  json_path, md_path = bench_report.write(str(tmp_path), "oc", report, bench_report.open_clip_markdown("oc", report))
  text = open(md_path, encoding="utf-8").read()
  assert "| vlmjax (`jax.jit`) |" in text and "| open_clip, eager" in text
  assert "not run (--torch_compile=false)" in text and "load average" in text
  saved = json.load(open(json_path, encoding="utf-8"))
  assert set(saved["rows"]) == {"vlmjax", "open_clip eager"}
  for row in saved["rows"].values():
    assert row["examples_per_sec"] > 0 and len(row["step_times_s"]) == 1
  assert saved["environment"]["torch_threads"] >= 1 and "load_average_end" in saved["environment"]


def test_a_failing_torch_compile_is_reported_not_raised(monkeypatch):
  import torch

  def broken(model):
    def call(*args, **kwargs):
      raise RuntimeError("no C++ compiler\nmore detail")
    return call

  monkeypatch.setattr(torch, "compile", broken)
  report = bench_open_clip.bench_against_open_clip(tiny_config("unused"), steps=1, warmup=1, repeats=1)
  assert set(report["rows"]) == {"vlmjax", "open_clip eager"}
  assert report["failed"]["open_clip torch.compile"]["error"] == "RuntimeError: no C++ compiler"
  assert "failed after" in bench_report.open_clip_markdown("oc", report)


def test_missing_extra_is_one_line_naming_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed
  with pytest.raises(ImportError) as error:
    bench_open_clip.import_torch()
  assert "pip install -e '.[interop]'" in str(error.value) and "\n" not in str(error.value)


def test_op_profile_of_both_steps(report, tmp_path):
  """Both steps profiled op by op: the matmuls and the attention core found on each side, the
  categories adding up to each side's op time, and the side-by-side table in the report."""
  from vlmjax.bench.op_profile import CATEGORIES, TORCH_ONLY  # pylint: disable=import-outside-toplevel
  profiles = report["op_profile"]
  assert set(profiles) == {"vlmjax", "open_clip eager"}
  for profile in profiles.values():
    per_step = profile["per_step_ms"]
    assert set(per_step) <= set(CATEGORIES + TORCH_ONLY)
    assert per_step["dense matmuls"] > 0 and per_step["attention core"] > 0 and per_step["optimizer"] > 0
    assert sum(per_step.values()) == pytest.approx(profile["ops_ms"], rel=1e-6)
  text = bench_report.open_clip_markdown("oc", report)
  assert "## Op by op" in text and "| attention core |" in text and "Costliest ops, vlmjax" in text
