"""Dataset reduction (TL;DR): subset files and the k-means selection that writes them."""
import numpy as np
import pytest

from conftest import tiny_config
from vlmjax.data import mixture, subset
from vlmjax.select_data import cluster_quotas, kmeans, nearest_to_centroids, select


def test_training_reads_only_the_listed_records(tiny_data_dir, tiny_source, tmp_path):
  path = tmp_path / "subset.txt"
  subset.write_indices(str(path), [7, 3, 100], comment="made by hand\nthree records")
  config = tiny_config(tiny_data_dir, **{"data.subset_file": str(path)})
  source = mixture.train_source(config.data, 0)
  assert len(source) == 3
  assert [source[i]["caption"] for i in range(3)] == [tiny_source[i]["caption"] for i in (7, 3, 100)]
  assert source.class_names == tiny_source.class_names


@pytest.mark.parametrize("text,match", [
    ("1\n2\nx\n", "line 3: 'x' is not a record index"),
    ("1\n5000\n", "line 2: index 5000 is outside the train split's 512 records"),
    ("# c\n4\n4\n", "line 3: index 4 is listed twice"),
    ("# only a comment\n", "lists no record"),
])
def test_bad_subset_files_are_one_line_errors(tiny_data_dir, tmp_path, text, match):
  path = tmp_path / "subset.txt"
  path.write_text(text)
  config = tiny_config(tiny_data_dir, **{"data.subset_file": str(path)})
  with pytest.raises(subset.SubsetError, match=f"data.subset_file '{path}' {match}"):
    mixture.train_source(config.data, 0)


def test_cluster_quotas_are_proportional_and_sum_to_the_total():
  quotas = cluster_quotas([10, 30, 60, 1], 31)
  assert quotas.sum() == 31
  assert np.all(quotas <= [10, 30, 60, 1])
  np.testing.assert_allclose(quotas, np.array([10, 30, 60, 1]) * 31 / 101, atol=1)


def test_centroid_selection_keeps_each_clusters_core():
  rng = np.random.default_rng(0)
  centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  sizes = [100, 200, 300]
  points = np.concatenate([c + rng.normal(size=(n, 2)) for c, n in zip(centres, sizes)])
  found, assignment = kmeans(points, 3, seed=1)
  assert sorted(np.bincount(assignment).tolist()) == sizes
  kept = nearest_to_centroids(points, 0.2, 3, seed=1)
  assert len(kept) == 120 and len(set(kept.tolist())) == 120
  owner = np.repeat([0, 1, 2], sizes)
  assert np.bincount(owner[kept]).tolist() == [20, 40, 60]  # each mode in proportion
  for k in range(3):  # and within a mode, the points closest to its centre
    member = np.flatnonzero(owner == k)
    distance = np.linalg.norm(points[member] - points[member].mean(0), axis=1)
    chosen = np.isin(member, kept)
    assert distance[chosen].max() <= np.sort(distance)[len(kept[owner[kept] == k]) + 2]


def test_select_data_errors_name_the_flag(tmp_path):
  with pytest.raises(ValueError, match="--fraction 1.5 must be in"):
    select(str(tmp_path), 1.5)
  with pytest.raises(ValueError, match="--method 'best' must be one of centroids, random"):
    select(str(tmp_path), 0.5, "best")
  with pytest.raises(FileNotFoundError, match="--workdir '.*nope' does not exist"):
    select(str(tmp_path / "nope"), 0.5)
