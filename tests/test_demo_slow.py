"""The demo config, trained for a quarter of its steps, already learns the built-in dataset.

`make demo` trains the full schedule and its figures are in README.md; this shorter run checks a
lower bar: zero-shot top-1 far above chance (1/36) on `test` and `test_unseen`.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_short_demo_run_learns(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, like `make demo`
  workdir = tmp_path / "demo"
  result = subprocess.run(
      [sys.executable, "-m", "vlmjax.train", "--config", str(REPO / "configs" / "demo.py"),
       "--workdir", str(workdir), f"--config.data.data_dir={tmp_path / 'tfds'}",
       "--config.total_steps=150", "--config.progress_bar=False",
       "--config.evals.retrieval.num_examples=500"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stderr[-2000:]
  results = json.loads((workdir / "eval_results.json").read_text())
  chance = 1 / 36
  assert results["zeroshot/top1"] > 5 * chance, results
  assert results["zeroshot/top5"] > 0.5, results
  assert results["zeroshot_unseen/top1"] > 2 * chance, results
  assert results["retrieval/image_to_text_R@10"] > 10 / 500 * 5, results
