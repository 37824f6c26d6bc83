"""`config.init`: start a run from another run's tower (LiT: a trained image tower, then locked)."""
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from vlmjax.config import ConfigError
from vlmjax.init_from import inherited_tokenizer
from vlmjax.train import train

ALL_DEVICES = {"mesh": dict(data=1, fsdp=-1, tensor=1)}


def _params(workdir):
  directory = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  return ocp.PyTreeCheckpointer().restore(os.path.join(directory, str(step), "state"))["params"]


def _leaves(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, f"{prefix}{key}/")
    else:
      yield f"{prefix}{key}", np.asarray(value)


@pytest.fixture(scope="module")
def source_run(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("source"))
  train(tiny_config(tiny_data_dir, total_steps=3, **ALL_DEVICES), workdir)
  return workdir


def test_locked_image_tower_starts_from_source_and_stays(tiny_data_dir, tmp_path, source_run):
  config = tiny_config(tiny_data_dir, total_steps=3, seed=1, **ALL_DEVICES, **{
      "init.workdir": source_run, "init.params": "^image/", "optimizer.frozen": "^image/",
      "tokenizer.path": os.path.join(source_run, "tokenizer.model")})
  train(config, str(tmp_path / "lit"))
  source, lit = dict(_leaves(_params(source_run))), dict(_leaves(_params(str(tmp_path / "lit"))))
  image = [k for k in source if k.startswith("image/")]
  assert image and all(np.array_equal(source[k], lit[k]) for k in image)
  text = [k for k in source if k.startswith("text/")]
  assert text and not all(np.array_equal(source[k], lit[k]) for k in text)


def test_init_errors_name_the_key(tiny_data_dir, tmp_path, source_run):
  with pytest.raises(ConfigError, match="init.params: 'nothing/' matches no parameter"):
    train(tiny_config(tiny_data_dir, **ALL_DEVICES, **{"init.workdir": source_run, "init.params": "nothing/"}),
          str(tmp_path / "a"))
  with pytest.raises(ConfigError, match="init.workdir: no checkpoint"):
    train(tiny_config(tiny_data_dir, **ALL_DEVICES, **{"init.workdir": str(tmp_path / "empty")}), str(tmp_path / "b"))
  wider = dict(variant="mu/8", width=48, depth=1, mlp_dim=64, num_heads=2, pool="gap")
  with pytest.raises(ConfigError, match="init.workdir: .* does not hold params matching"):
    train(tiny_config(tiny_data_dir, **ALL_DEVICES, **{"init.workdir": source_run, "init.params": "^image/",
                                        "model.image": wider}), str(tmp_path / "c"))
  # A param the pattern matches that the source does not have (a new module under a loaded tower):
  # named, never trained from a placeholder.
  with pytest.raises(ConfigError, match="has no param 'image/encoder/blocks/message_attn/.*matching init.params"):
    train(tiny_config(tiny_data_dir, **ALL_DEVICES, **{"init.workdir": source_run, "init.params": "^image/",
                                        "model.image": dict(variant="mu/8", width=32, depth=1, mlp_dim=64,
                                                            num_heads=2, pool="gap", frames=1)}),
          str(tmp_path / "d"))


def test_init_also_loads_each_tower_from_its_own_run(tiny_data_dir, tmp_path, source_run):
  """`init.also`: the image tower from one run and the text tower from another (big_vision's
  per-tower model_init; a VLM's decoder from an LM run and its image tower from a CLIP run)."""
  other_run = str(tmp_path / "other")
  train(tiny_config(tiny_data_dir, total_steps=3, seed=7, **ALL_DEVICES,
                    **{"tokenizer.path": os.path.join(source_run, "tokenizer.model")}), other_run)
  config = tiny_config(tiny_data_dir, total_steps=1, seed=1, **ALL_DEVICES, **{
      "init.workdir": source_run, "init.params": "^image/",
      "init.also": {"text": dict(workdir=other_run, params="^text/")},
      "optimizer.frozen": "^(image|text)/", "tokenizer.path": os.path.join(source_run, "tokenizer.model")})
  files = lambda run: {name: open(os.path.join(run, name), "rb").read() for name in sorted(os.listdir(run))
                       if os.path.isfile(os.path.join(run, name))}
  before = [files(source_run), files(other_run)]
  train(config, str(tmp_path / "both"))
  # The run writes its own workdir only: its sources' files are untouched.
  assert [files(source_run), files(other_run)] == before
  assert "metrics.jsonl" in files(str(tmp_path / "both"))
  source, other = dict(_leaves(_params(source_run))), dict(_leaves(_params(other_run)))
  both = dict(_leaves(_params(str(tmp_path / "both"))))
  for tower, origin in (("image/", source), ("text/", other)):
    keys = [k for k in origin if k.startswith(tower)]
    assert keys and all(np.array_equal(origin[k], both[k]) for k in keys), tower
  assert not all(np.array_equal(source[k], other[k]) for k in source if k.startswith("text/"))


def test_init_also_entry_must_be_workdir_and_params(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, **ALL_DEVICES, **{"init.also": {"image": dict(path="x", params="^image/")}})
  with pytest.raises(ConfigError, match=r"'init.also.image' must be dict\(workdir=str, params=str\[, "
                                         r"into=dict\(str=str\)\]\), got \{'params': '\^image/', 'path': 'x'\}$"):
    train(config, str(tmp_path / "a"))


def test_starting_from_a_source_s_token_embeddings_takes_its_tokenizer(tiny_data_dir, tmp_path, source_run):
  """The source's token embedding rows mean its tokenizer's ids: a run starting from them writes its texts with
  that tokenizer (copied into the run), not one trained anew. Starting from the image tower alone does not."""
  with open(os.path.join(source_run, "tokenizer.model"), "rb") as f:
    source_tokenizer = f.read()
  overrides = {"init.workdir": source_run, "tokenizer.vocab_size": 96}  # a retrained one would not fit the rows
  train(tiny_config(tiny_data_dir, total_steps=1, **ALL_DEVICES, **overrides), str(tmp_path / "full"))
  with open(tmp_path / "full" / "tokenizer.model", "rb") as f:
    assert f.read() == source_tokenizer
  image_only = tiny_config(tiny_data_dir, **overrides, **{"init.params": "^image/"})
  assert inherited_tokenizer(image_only.init) is None
  assert inherited_tokenizer(tiny_config(tiny_data_dir, **overrides).init) == os.path.join(source_run,
                                                                                          "tokenizer.model")
