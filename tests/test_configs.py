"""Every config in configs/ loads, validates, and documents how to launch it."""
import ast
import pathlib

import pytest

from vlmjax import config as config_lib

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_validates_and_has_launch_command(path):
  config = config_lib.load_file(str(path))
  config_lib.validate(config, num_devices=1, batch_ways=1)
  doc = ast.get_docstring(ast.parse(path.read_text()))
  assert doc and f"--config configs/{path.name}" in doc, f"{path.name}: docstring lacks its launch command"


def test_method_configs_differ_from_clip_only_where_they_should():
  load = lambda name: config_lib.load_file(str(CONFIGS[0].parent / name))
  clip = load("clip.py")
  for name in ("siglip.py", "filip.py", "dreamlip.py", "negatives.py", "tcl.py", "lit.py", "lit_structure.py",
               "align.py", "svlc.py", "grain.py", "plip.py", "nevlp.py", "tldr.py", "s3a.py"):
    other = load(name)
    assert other.total_steps == clip.total_steps and other.batch_size == clip.batch_size, name
    assert other.model.image == clip.model.image, name
    # The same evaluations as the baseline; a method may add its own (FILIP's token-wise retrieval).
    assert all(other.evals.get(key) == entry for key, entry in clip.evals.items()), name


def test_missing_config_file_is_named():
  with pytest.raises(config_lib.ConfigError, match="no config file .*nope.py"):
    config_lib.load_file("configs/nope.py")
