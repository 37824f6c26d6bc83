"""The `webdataset` source: tar shards as img2dataset writes them, read by index.

Shards are written here with `tarfile` from the tiny built-in dataset (`key.jpg`, `key.txt`,
`key.json` per sample), then read back in order across `::`-joined brace patterns, with the index
cached beside the shards (or in `data.index_dir`); damaged data (a corrupt image, a missing member,
a shard cut short) is skipped and counted, never fatal; training on shards resumes exactly.
"""
import io
import json
import logging
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import sigterm_after_step, tiny_config
from vlmjax.data import pipeline, sources, webdataset
from vlmjax.run import read_metrics
from vlmjax.train import train

SHARDS, PER_SHARD = 5, 64


def _jpg(pixels) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(pixels)).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def _add(tar, name: str, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_shard(path: str, samples: list):
  """samples: [(key, {ext: bytes})] -> a tar with members key.ext, in order (as img2dataset writes)."""
  with tarfile.open(path, "w") as tar:
    for key, members in samples:
      for ext, data in members.items():
        _add(tar, f"{key}.{ext}", data)


def img2dataset_sample(key: str, image: bytes, caption: str, label: int, long_caption: str = "") -> tuple:
  meta = {"key": key, "caption": caption, "label": label, "long_caption": long_caption, "status": "success"}
  return key, {"jpg": image, "txt": caption.encode("utf-8"), "json": json.dumps(meta).encode("utf-8")}


@pytest.fixture(scope="module")
def written(tiny_source, tmp_path_factory):
  """5 shards of 64 samples from the tiny train split -> (folder, [(jpg bytes, caption, label, long caption)])."""
  folder = str(tmp_path_factory.mktemp("wds"))
  records = []
  for s in range(SHARDS):
    samples = []
    for j in range(PER_SHARD):
      r = tiny_source[s * PER_SHARD + j]
      records.append((_jpg(r["image"]), r["caption"], int(r["label"]), r["long_caption"]))
      samples.append(img2dataset_sample(f"{s:05d}{j:04d}", *records[-1]))
    write_shard(os.path.join(folder, f"{s:05d}.tar"), samples)
  return folder, records


def _count_builds(monkeypatch) -> list:
  built = []
  real = webdataset.build_index
  monkeypatch.setattr(webdataset, "build_index", lambda path: built.append(path) or real(path))
  return built


def test_source_reads_every_sample_in_order_and_caches_the_index(written, monkeypatch, tmp_path):
  folder, records = written
  pattern = f"{folder}/{{00000..00002}}.tar::{folder}/000{{03,04}}.tar"
  built = _count_builds(monkeypatch)
  source = webdataset.WebDatasetSource(pattern, fields={"label": "label", "long_caption": "long_caption"},
                                       index_dir=str(tmp_path / "unused"))
  assert len(source) == SHARDS * PER_SHARD and len(built) == SHARDS
  for i, (image, caption, label, long_caption) in enumerate(records):
    record = source[i]
    assert record == {"image": image, "caption": caption, "label": label, "long_caption": long_caption}, i
  index_files = [os.path.join(folder, f"{s:05d}.tar.idx.json") for s in range(SHARDS)]
  stamps = [os.stat(p).st_mtime_ns for p in index_files]
  again = webdataset.WebDatasetSource(pattern)
  assert len(built) == SHARDS, "the second open reads the cached indices, not the tars"
  assert [os.stat(p).st_mtime_ns for p in index_files] == stamps
  assert not os.path.exists(tmp_path / "unused")
  assert again[PER_SHARD * 3 + 5] == {"image": records[PER_SHARD * 3 + 5][0], "caption": records[PER_SHARD * 3 + 5][1]}
  # The caption from a key of the .json member instead of the .txt one; retrieval's caption groups.
  by_json = webdataset.WebDatasetSource(pattern, caption_key="long_caption")
  assert by_json[7]["caption"] == records[7][3]
  indices, groups = again.caption_groups(limit=4)
  assert indices == [0, 1, 2, 3] and groups == [[r[1]] for r in records[:4]]


def test_relative_patterns_are_made_absolute_part_by_part(written, monkeypatch):
  folder, _ = written
  monkeypatch.chdir(os.path.dirname(folder))
  name = os.path.basename(folder)
  config = tiny_config("", **{"data.name": "webdataset",
                              "data.files": {"train": f"{name}/{{00000..00001}}.tar::{name}/00004.tar"}})
  absolute = sources.with_absolute_paths(config)
  assert absolute.data.files.train == f"{folder}/{{00000..00001}}.tar::{folder}/00004.tar"
  assert len(sources.make_source(absolute.data, "train")) == 3 * PER_SHARD


def test_index_goes_to_index_dir_when_the_folder_is_read_only_and_follows_changes(written, tmp_path, monkeypatch):
  folder, records = written
  shard = tmp_path / "shards" / "00000.tar"
  shard.parent.mkdir()
  shard.write_bytes(open(os.path.join(folder, "00000.tar"), "rb").read())
  monkeypatch.setattr(webdataset, "_folder_writable", lambda folder: False)
  built = _count_builds(monkeypatch)
  index_dir = tmp_path / "cache"
  assert len(webdataset.WebDatasetSource(str(shard), index_dir=str(index_dir))) == PER_SHARD
  assert not os.path.exists(f"{shard}.idx.json") and len(os.listdir(index_dir)) == 1
  webdataset.WebDatasetSource(str(shard), index_dir=str(index_dir))
  assert len(built) == 1
  # Another shard under the same name (size and mtime change): indexed again.
  write_shard(str(shard), [img2dataset_sample(f"k{j}", r[0], r[1], r[2]) for j, r in enumerate(records[:10])])
  changed = webdataset.WebDatasetSource(str(shard), index_dir=str(index_dir))
  assert len(changed) == 10 and len(built) == 2 and changed[9]["caption"] == records[9][1]


def test_missing_shards_and_files_that_are_not_tars_are_one_line_errors(written, tmp_path):
  folder, _ = written
  with pytest.raises(webdataset.ShardError, match=r"^data: shard '.*/00005\.tar' of pattern '.*\{00000\.\.00009\}"
                                                   r"\.tar' does not exist \(5 of its 10 are missing\)$"):
    webdataset.WebDatasetSource(f"{folder}/{{00000..00009}}.tar")
  (tmp_path / "notes.tar").write_text("these are not the shards you are looking for\n" * 40)
  with pytest.raises(webdataset.ShardError, match=r"^data: shard '.*notes\.tar' is not a tar file"):
    webdataset.WebDatasetSource(str(tmp_path / "notes.tar"))
  with tarfile.open(tmp_path / "z.tar.gz", "w:gz") as tar:
    _add(tar, "a.txt", b"x")
  with pytest.raises(webdataset.ShardError, match="gzip-compressed"):
    webdataset.WebDatasetSource(str(tmp_path / "z.tar.gz"))
  with pytest.raises(webdataset.ShardError, match="local files"):
    webdataset.WebDatasetSource("pipe:curl -s http://host/{0..9}.tar")


def damaged_shards(folder: str, records: list) -> tuple[str, dict]:
  """In `folder`: a shard with 3 corrupt images, one sample without a caption and one without an
  image; a shard cut inside a member; one cut between samples (no end marker); an empty one.
  -> (their pattern, {name: samples the source should keep})."""
  os.makedirs(folder, exist_ok=True)
  samples = [img2dataset_sample(f"a{j:03d}", *r) for j, r in enumerate(records[:40])]
  for j in (3, 17, 30):
    samples[j][1]["jpg"] = samples[j][1]["jpg"][:40] + b"\x00 not a jpeg"
  del samples[8][1]["txt"]
  del samples[21][1]["jpg"]
  write_shard(os.path.join(folder, "bad.tar"), samples)
  # Cut inside the image of sample 30 (of 40): samples 0..28 are kept, 29 (before the cut) dropped.
  write_shard(os.path.join(folder, "cut.tar"), [img2dataset_sample(f"c{j:03d}", *r) for j, r in enumerate(records[40:80])])
  index = webdataset.build_index(os.path.join(folder, "cut.tar"))
  cut_at = index["offsets"][30][index["extensions"].index("jpg")] + 100
  with open(os.path.join(folder, "cut.tar"), "r+b") as f:
    f.truncate(cut_at)
  # Cut just after the last member's data: a sample's members may be missing, so the last is dropped.
  write_shard(os.path.join(folder, "ends.tar"), [img2dataset_sample(f"e{j:03d}", *r) for j, r in enumerate(records[80:100])])
  index = webdataset.build_index(os.path.join(folder, "ends.tar"))
  with open(os.path.join(folder, "ends.tar"), "r+b") as f:
    f.truncate(max(o + n for o, n in zip(index["offsets"][-1], index["sizes"][-1])))
  open(os.path.join(folder, "empty.tar"), "wb").close()
  return f"{folder}/{{bad,cut,ends,empty}}.tar", {"bad": 40, "cut": 29, "ends": 19, "empty": 0}


def test_damaged_shards_are_indexed_to_the_cut_and_bad_samples_skipped(written, tmp_path, tiny_tokenizer, caplog):
  _, records = written
  pattern, kept = damaged_shards(str(tmp_path / "damaged"), records)
  with caplog.at_level(logging.WARNING):
    source = webdataset.WebDatasetSource(pattern)
  assert [len(s) for s in source.shards] == list(kept.values())
  warnings = [r.getMessage() for r in caplog.records if "damaged or cut short" in r.getMessage()]
  assert len(warnings) == 3 and "cut.tar" in warnings[0] and "29 samples kept, 1 dropped" in warnings[0], warnings
  assert "ends.tar" in warnings[1] and "19 samples kept, 1 dropped" in warnings[1]
  assert "empty.tar" in warnings[2] and "it is empty" in warnings[2]
  assert source[29]["caption"] == records[29][1] and source[40 + 28]["caption"] == records[40 + 28][1]
  assert isinstance(source[8], pipeline.BadRecord) and source[8].reason == "empty_caption" and "a008" in source[8].detail
  assert isinstance(source[21], pipeline.BadRecord) and source[21].reason == "empty_image"
  preprocess = pipeline.Preprocess(tiny_tokenizer, 16, 16)
  assert [preprocess.map(source[j]).reason for j in (3, 17, 30)] == ["corrupt_image"] * 3
  # Through the train pipeline: every slot filled, the bad ones counted by reason.
  it = iter(pipeline.train_dataset(source, preprocess, 11, seed=0, num_threads=2))
  counts = sum(next(it)["bad_records"].sum(0) for _ in range(len(source) // 11))
  by_reason = dict(zip(pipeline.BAD_REASONS, counts.tolist()))
  assert by_reason["corrupt_image"] >= 3 and by_reason["empty_image"] >= 1 and by_reason["empty_caption"] >= 1


def test_training_on_shards_stopped_by_sigterm_resumes_exactly(written, tmp_path):
  folder, records = written
  pattern, _ = damaged_shards(str(tmp_path / "damaged"), records)
  config = tiny_config("", **{"data.name": "webdataset", "total_steps": 4, "input.crop_min": 0.8, "mesh": dict(data=1, fsdp=-1, tensor=1),
                              "data.files": {"train": f"{folder}/00000.tar::{pattern}"}})
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  assert train(config, a) == {}
  losses = lambda workdir: {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}
  with sigterm_after_step(2):
    train(config, b)
  assert sorted(losses(b)) == [1, 2], "SIGTERM stopped the run after step 2"
  with config.unlocked():  # resumed with the batches made by 2 worker processes (the position is the same)
    config.data.workers = 2
  train(config, b)
  assert sorted(losses(a)) == list(range(1, 5)) and losses(b) == losses(a)
  last = [m for m in read_metrics(a) if "bad_records" in m][-1]
  assert last["bad_records"] > 0, "the damaged samples met in 4 steps are counted"


def test_processes_read_the_slices_of_the_single_process_batches(written, tiny_tokenizer):
  """2 processes × 4 devices read the global batches 1 × 8 reads: process p's batch k is slice p of global batch
  k, decoded and augmented alike (the data side of a multi-host run, without starting processes)."""
  source = webdataset.WebDatasetSource(f"{written[0]}/{{00000..00004}}.tar")
  preprocess = pipeline.Preprocess(tiny_tokenizer, 16, 16, train=True, crop_min=0.7, brightness=0.1)

  def batches(process_index, process_count, n=3):
    it = iter(pipeline.train_dataset(source, preprocess, 16 // process_count, seed=5, process_index=process_index,
                                     process_count=process_count, num_threads=1))
    return [next(it) for _ in range(n)]

  single, halves = batches(0, 1), [batches(p, 2) for p in range(2)]
  for k, expected in enumerate(single):
    for key in ("image", "text"):
      np.testing.assert_array_equal(np.concatenate([h[k][key] for h in halves]), expected[key])
