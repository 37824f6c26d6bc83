"""Tokenizer, grain input pipeline (determinism, per-process shards, resumable state) and file-list
sources (CSV / JSONL of image paths + captions)."""
import csv
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from vlmjax.config import base_config
from vlmjax.data import pipeline, sources
from vlmjax.data.tokenizer import BOS, EOS, PAD, Tokenizer

# --- tokenizer ------------------------------------------------------------------------------------


def test_tokenizer_layout(tiny_tokenizer):
  texts = ["a red circle.", "a small blue triangle in the top left corner."]
  ids = tiny_tokenizer.encode(texts, 24)
  assert ids.shape == (2, 24) and ids.dtype == np.int32
  for row in ids:
    assert row[0] == BOS
    eos = list(row).index(EOS)
    assert eos >= 2  # at least one piece between BOS and EOS
    assert np.all(row[1:eos] > EOS)  # real pieces: no pad/unk/bos/eos inside
    assert np.all(row[eos + 1:] == PAD)
  assert list(ids[0]).index(EOS) < list(ids[1]).index(EOS)  # the longer caption has more pieces


def test_tokenizer_uses_the_requested_vocabulary(tiny_tokenizer, tiny_source):
  """On the templated captions the tokenizer must not collapse to a few dozen pieces (the unigram
  model did): it gets (close to) the requested 128."""
  assert 100 <= tiny_tokenizer.vocab_size <= 128


def test_tokenizer_round_trip(tiny_tokenizer, tiny_source):
  texts = [tiny_source[i]["caption"] for i in range(20)]
  assert tiny_tokenizer.decode(tiny_tokenizer.encode(texts, 64)) == texts


def test_tokenizer_truncation_keeps_eos(tiny_tokenizer):
  long = "a red circle, " * 20 + "and a blue square."
  ids = tiny_tokenizer.encode([long, "a red circle."], 6)
  assert ids.shape == (2, 6)
  assert ids[0, 0] == BOS and ids[0, -1] == EOS
  assert np.all(ids[0] != PAD)
  full = tiny_tokenizer.encode([long], 200)[0]
  np.testing.assert_array_equal(ids[0, :5], full[:5])  # truncation keeps the beginning
  assert tiny_tokenizer.decode(ids[:1])[0] == tiny_tokenizer.decode(full[None, :5])[0]


def test_tokenizer_save_load(tiny_tokenizer, tmp_path):
  path = str(tmp_path / "tok.model")
  tiny_tokenizer.save(path)
  loaded = Tokenizer.load(path)
  assert loaded.vocab_size == tiny_tokenizer.vocab_size
  texts = ["a green star in the center.", "three objects."]
  np.testing.assert_array_equal(loaded.encode(texts, 16), tiny_tokenizer.encode(texts, 16))
  with pytest.raises(FileNotFoundError, match="nope.model"):
    Tokenizer.load(str(tmp_path / "nope.model"))


# --- pipeline -------------------------------------------------------------------------------------


class ListSource:
  """N records with random images, a caption and an integer id."""

  def __init__(self, n, size=20, seed=0):
    rng = np.random.default_rng(seed)
    self.records = [{"image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                     "caption": ["a red circle.", "a blue square.", "two objects."][i % 3], "id": i}
                    for i in range(n)]

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[int(i)]


def _preprocess(tokenizer, train=True):
  # Crop and brightness on, so the per-record RNG is part of what must be deterministic.
  return pipeline.Preprocess(tokenizer, 16, 12, train=train, crop_min=0.6, brightness=0.3, passthrough=("id",))


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_train_batches_shapes(tiny_tokenizer):
  batch = next(iter(pipeline.train_dataset(ListSource(32), _preprocess(tiny_tokenizer), 4, seed=0,
                                           num_threads=1)))
  assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  assert batch["text"].shape == (4, 12) and batch["text"].dtype == np.int32
  assert np.all(batch["text"][:, 0] == BOS)
  assert batch["id"].shape == (4,)


def test_train_pipeline_is_deterministic(tiny_tokenizer):
  source = ListSource(32)
  make = lambda seed, threads=1: iter(pipeline.train_dataset(
      source, _preprocess(tiny_tokenizer), 4, seed=seed, num_threads=threads))
  first = _take(make(7), 3)
  _assert_batches_equal(first, _take(make(7), 3))
  _assert_batches_equal(first, _take(make(7, threads=2), 3))  # threads do not change the result
  other = _take(make(8), 3)
  assert not all(np.array_equal(a["id"], b["id"]) for a, b in zip(first, other)), "seed is ignored"


def test_train_pipeline_shuffles_each_epoch(tiny_tokenizer):
  source = ListSource(16)
  batches = _take(iter(pipeline.train_dataset(source, _preprocess(tiny_tokenizer), 4, seed=0,
                                              num_threads=1)), 8)
  ids = np.concatenate([b["id"] for b in batches])
  epoch1, epoch2 = ids[:16], ids[16:]
  assert sorted(epoch1) == sorted(epoch2) == list(range(16))  # each epoch sees every record once
  assert not np.array_equal(epoch1, np.arange(16))  # shuffled
  assert not np.array_equal(epoch1, epoch2)  # a new order each epoch


def test_train_pipeline_process_shards_are_disjoint(tiny_tokenizer):
  source = ListSource(32)
  ids = []
  for process in range(2):
    it = iter(pipeline.train_dataset(source, _preprocess(tiny_tokenizer), 4, seed=3, process_index=process,
                                     process_count=2, num_threads=1))
    ids.append(np.concatenate([b["id"] for b in _take(it, 4)]))  # one epoch: 32 / 2 / 4 = 4 batches
  assert len(set(ids[0])) == len(set(ids[1])) == 16
  assert not set(ids[0]) & set(ids[1])
  assert set(ids[0]) | set(ids[1]) == set(range(32))


def test_train_iterator_state_resumes_exactly(tiny_tokenizer):
  source = ListSource(24)
  make = lambda: iter(pipeline.train_dataset(source, _preprocess(tiny_tokenizer), 4, seed=1, num_threads=2))
  it = make()
  _take(it, 5)  # past the first epoch (6 batches) boundary below
  state = it.get_state()
  expected = _take(it, 4)
  resumed = make()
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 4), expected)
  # And the state round-trips through JSON (it is checkpointed).
  again = make()
  again.set_state(json.loads(json.dumps(state)))
  _assert_batches_equal(_take(again, 4), expected)


def test_worker_processes_make_the_batches_threads_make_and_share_the_state(tiny_source, tiny_tokenizer):
  """`workers` grain processes (lowered priority) give the same batches as this process's threads, and
  the position is the batch index either way: a state saved by one resumes in the other."""
  preprocess = pipeline.Preprocess(tiny_tokenizer, 8, 8, train=True, crop_min=0.7, brightness=0.1)
  make = lambda workers: pipeline.train_dataset(tiny_source, preprocess, 4, seed=2, process_index=1,
                                                process_count=2, num_threads=1, workers=workers, worker_nice=5)
  threads, workers, resumed = make(0), make(2), make(2)
  try:
    _assert_batches_equal(_take(workers, 5), _take(threads, 5))
    state = json.loads(json.dumps(threads.get_state()))
    assert state == workers.get_state() == {"next_index": 5}
    expected = _take(threads, 3)
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 3), expected)
    threads.set_state(workers.get_state())
    _assert_batches_equal(_take(threads, 3), expected)
  finally:
    workers.close()
    resumed.close()


def test_eval_batches_in_order_with_short_last_batch(tiny_tokenizer):
  source = ListSource(10)
  batches = list(pipeline.eval_batches(source, _preprocess(tiny_tokenizer, train=False), 4, num_threads=1))
  assert [len(b["id"]) for b in batches] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate([b["id"] for b in batches]), np.arange(10))
  subset = list(pipeline.eval_batches(source, _preprocess(tiny_tokenizer, train=False), 4, indices=[7, 2, 5]))
  np.testing.assert_array_equal(np.concatenate([b["id"] for b in subset]), [7, 2, 5])
  # Evaluation preprocessing is deterministic and does no augmentation: a plain resize.
  expected = np.asarray(Image.fromarray(source[7]["image"]).resize((16, 16), Image.BILINEAR),
                        np.float32) / 127.5 - 1.0
  np.testing.assert_allclose(subset[0]["image"][0], expected, atol=1e-6)


# --- file-list sources ----------------------------------------------------------------------------


@pytest.fixture
def image_files(tmp_path):
  rng = np.random.default_rng(0)
  (tmp_path / "imgs").mkdir()
  images = {}
  for i in range(3):
    pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "imgs" / f"im{i}.png")
    images[f"imgs/im{i}.png"] = pixels
  return images


CAPTIONS = ["a red circle.", "a square, blue and large.", 'a "quoted" star.']


def _check_source(source, images):
  assert len(source) == 3
  for i, pixels in enumerate(images.values()):
    record = source[i]
    assert record["caption"] == CAPTIONS[i]
    decoded = np.asarray(pipeline.decode_image(record["image"]))
    np.testing.assert_array_equal(decoded, pixels)


def test_csv_source(tmp_path, image_files):
  path = tmp_path / "pairs.csv"
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["image_path", "caption"])
    for rel, caption in zip(image_files, CAPTIONS):
      writer.writerow([rel, caption])
  _check_source(sources.FileListSource(str(path)), image_files)


def test_jsonl_source_with_custom_keys(tmp_path, image_files):
  path = tmp_path / "pairs.jsonl"
  with open(path, "w", encoding="utf-8") as f:
    for rel, caption in zip(image_files, CAPTIONS):
      f.write(json.dumps({"file": rel, "text": caption}) + "\n")
    f.write("\n")  # a trailing blank line is fine
  _check_source(sources.FileListSource(str(path), image_key="file", caption_key="text"), image_files)


def test_file_list_source_image_root(tmp_path, image_files):
  """Paths are relative to `image_root` when given (else to the file's folder)."""
  (tmp_path / "lists").mkdir()
  path = tmp_path / "lists" / "pairs.csv"
  path.write_text("image_path,caption\n" + "".join(
      f'{rel.split("/")[1]},"{c}"\n' for rel, c in zip(image_files, ["x", "y", "z"])))
  source = sources.FileListSource(str(path), image_root=str(tmp_path / "imgs"))
  assert [source[i]["caption"] for i in range(3)] == ["x", "y", "z"]
  missing = sources.FileListSource(str(path))[0]  # lists/im0.png does not exist: a bad record
  assert isinstance(missing, pipeline.BadRecord) and missing.reason == "corrupt_image"
  assert re.search(r"lists/im0\.png' on line 2 of .*pairs\.csv", missing.detail)


def test_file_list_source_errors(tmp_path, image_files):
  missing = tmp_path / "missing.csv"
  with pytest.raises(FileNotFoundError, match="missing.csv"):
    sources.FileListSource(str(missing))
  bad_column = tmp_path / "bad.csv"
  bad_column.write_text("path,caption\nimgs/im0.png,x\n")
  with pytest.raises(sources.DataFileError, match=r"has no column .image_path. \(data.image_key; columns: path, caption\)"):
    sources.FileListSource(str(bad_column))
  missing_image = tmp_path / "gap.jsonl"
  missing_image.write_text(json.dumps({"image_path": "imgs/im0.png", "caption": "x"}) + "\n" +
                           json.dumps({"image_path": "imgs/none.png", "caption": "y"}) + "\n")
  source = sources.FileListSource(str(missing_image))  # images are looked for only when read
  assert "image" in source[0]
  assert source[1].reason == "corrupt_image" and re.search(r"none\.png.*line 2.*gap\.jsonl", source[1].detail)


def test_csv_dataset_through_registry_and_preprocess(tmp_path, image_files, tiny_tokenizer):
  path = tmp_path / "pairs.csv"
  path.write_text("image_path,caption\n" + "".join(f"{rel},{c}\n" for rel, c in zip(image_files, "abc")))
  data = base_config().data
  data.name = "csv"
  data.files = {"train": str(path)}
  source = sources.make_source(data, "train")
  assert len(source) == 3
  with pytest.raises(KeyError, match="validation"):
    sources.make_source(data, "validation")
  batches = list(pipeline.eval_batches(source, pipeline.Preprocess(tiny_tokenizer, 8, 8), 2, num_threads=1))
  assert [b["image"].shape for b in batches] == [(2, 8, 8, 3), (1, 8, 8, 3)]


def test_decode_image_accepts_bytes_grayscale_and_arrays():
  rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="PNG")
  np.testing.assert_array_equal(np.asarray(pipeline.decode_image(buf.getvalue())), rgb)
  np.testing.assert_array_equal(np.asarray(pipeline.decode_image(rgb)), rgb)
  gray = rgb[..., :1]
  out = np.asarray(pipeline.decode_image(gray))
  assert out.shape == (5, 6, 3)
  np.testing.assert_array_equal(out[..., 0], gray[..., 0])
