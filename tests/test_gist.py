"""GIST's description matching and TL;DR's selection on a trained (tiny) run, and caption files."""
import os

import numpy as np
import pytest

from conftest import tiny_config
from vlmjax import gist, select_data
from vlmjax.evals import classes
from vlmjax.data import mixture, recaption, shapes, subset
from vlmjax.train import train


@pytest.fixture(scope="module")
def tiny_run(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tiny_clip"))
  train(tiny_config(tiny_data_dir, total_steps=2, mesh=dict(data=1, fsdp=-1, tensor=1)), workdir)
  return workdir


def test_class_descriptions_add_size_and_place():
  descriptions = classes.class_descriptions("orange cross")
  assert len(descriptions) == len(set(descriptions)) == 30
  assert descriptions[:3] == ["an orange cross", "a small orange cross", "a large orange cross"]
  assert "a large orange cross in the top left" in descriptions


def test_gist_matches_each_labelled_image_to_its_own_classes_descriptions(tiny_run, tiny_source, tmp_path):
  count, size = gist.write(tiny_run, str(tmp_path))
  captions = recaption.read_captions(str(tmp_path / "captions.tsv"), size)
  indices = subset.read_indices(str(tmp_path / "subset.txt"), size)
  labelled = [i for i in range(len(tiny_source)) if tiny_source[i]["label"] >= 0]
  assert size == len(tiny_source) and count == len(labelled) > 0
  assert sorted(captions) == indices.tolist() == labelled
  for index, caption in captions.items():
    assert caption in classes.class_descriptions(shapes.CLASS_NAMES[tiny_source[index]["label"]])


def test_select_data_on_a_run_writes_a_usable_subset(tiny_run, tiny_data_dir, tmp_path):
  for method in ("centroids", "random"):
    kept, size, about = select_data.select(tiny_run, 0.25, method, clusters=8, seed=1)
    assert len(kept) == 128 and size == 512 and len(set(kept.tolist())) == 128, method
    path = tmp_path / f"{method}.txt"
    subset.write_indices(str(path), kept, about)
    source = mixture.train_source(tiny_config(tiny_data_dir, **{"data.subset_file": str(path)}).data, 0)
    assert len(source) == 128


def test_caption_file_replaces_the_listed_captions(tiny_data_dir, tiny_source, tmp_path):
  path = tmp_path / "captions.tsv"
  recaption.write_captions(str(path), {5: "a small red circle on the left", 9: "a blue star"}, "by hand")
  source = mixture.train_source(tiny_config(tiny_data_dir, **{"data.caption_file": str(path)}).data, 0)
  assert source[5]["caption"] == "a small red circle on the left" and source[9]["caption"] == "a blue star"
  assert source[6]["caption"] == tiny_source[6]["caption"]
  np.testing.assert_array_equal(source[5]["image"], tiny_source[5]["image"])


@pytest.mark.parametrize("text,match", [
    ("3 a red circle\n", "line 1: expected 'index<TAB>caption'"),
    ("x\ta red circle\n", "line 1: 'x' is not a record index"),
    ("1\ta\n999\tb\n", "line 2: index 999 is outside the train split's 512 records"),
    ("1\ta\n1\tb\n", "line 2: index 1 is listed twice"),
    ("1\t  \n", "line 1: expected 'index<TAB>caption'"),
])
def test_bad_caption_files_are_one_line_errors(tiny_data_dir, tmp_path, text, match):
  path = tmp_path / "captions.tsv"
  path.write_text(text)
  with pytest.raises(recaption.CaptionFileError, match=match):
    mixture.train_source(tiny_config(tiny_data_dir, **{"data.caption_file": str(path)}).data, 0)


def test_zero_shot_can_prompt_with_the_class_descriptions():
  from vlmjax.evals.zeroshot import ZeroShot
  assert ZeroShot(name="zs", prompts="descriptions").prompts("red circle") == classes.class_descriptions("red circle")


def test_gist_names_writes_the_class_names(tiny_run, tiny_source, tmp_path):
  count, size = gist.write(tiny_run, str(tmp_path), text="names")
  captions = recaption.read_captions(str(tmp_path / "captions.tsv"), size)
  for index, caption in captions.items():
    name = shapes.CLASS_NAMES[tiny_source[index]["label"]]
    assert caption == classes.class_descriptions(name)[0] and caption.endswith(name)
  with pytest.raises(ValueError, match="--text 'labels' must be one of descriptions, names"):
    gist.write(tiny_run, str(tmp_path), text="labels")
