"""File-list sources (CSV / JSONL) that open lazily: a row index at construction, rows parsed and
images read only when a record is read; missing images are bad records the pipeline counts."""
import csv
import json
import time

import numpy as np
import pytest
from PIL import Image

from vlmjax.data import pipeline, sources
from vlmjax.data.tokenizer import Tokenizer

ROWS = 200_000
IMAGES = ["im0.png", "im1.png", "im2.png"]
# Captions a CSV must quote: a comma, embedded newlines (\n and \r\n), doubled quotes, a blank line.
SPECIAL = ['a circle, red and small', 'two\nlines', 'crlf\r\ninside', 'say "hi", then go',
           '"', 'blank\n\nline inside', '5" screen', '']


def _caption(i: int) -> str:
  return SPECIAL[(i // 997) % len(SPECIAL)] if i % 997 == 0 else f"caption number {i}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("lazy")
  for k, name in enumerate(IMAGES):
    Image.new("RGB", (8, 8), (80 * k, 0, 0)).save(root / name)
  rows = [(IMAGES[i % len(IMAGES)], _caption(i)) for i in range(ROWS)]
  with open(root / "big.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["image_path", "caption"])
    writer.writerows(rows)
  with open(root / "big.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"image_path": image, "caption": caption}) + "\n" for image, caption in rows)
  return root


@pytest.mark.parametrize("name", ["big.csv", "big.jsonl"])
def test_a_large_file_opens_lazily_and_reads_rows_by_index(folder, name):
  start = time.perf_counter()
  source = sources.FileListSource(str(folder / name))
  seconds = time.perf_counter() - start
  assert seconds < 5, f"construction took {seconds:.1f} s"
  assert len(source) == ROWS and source.offsets.dtype == np.int64
  rng = np.random.default_rng(0)
  for i in [0, ROWS - 1, *range(0, ROWS, 997), *rng.integers(0, ROWS, 200)]:
    record = source[int(i)]
    assert record["caption"] == _caption(int(i)), i
    assert record["image"] == (folder / IMAGES[int(i) % len(IMAGES)]).read_bytes()


def test_csv_line_numbers_count_the_lines_of_multi_line_rows(tmp_path):
  (tmp_path / "a.png").write_bytes(b"x")
  (tmp_path / "rows.csv").write_text('image_path,caption\n\na.png,"one\ntwo"\nnone.png,ok\na.png,"x,""y"""\n')
  source = sources.FileListSource(str(tmp_path / "rows.csv"))
  assert len(source) == 3 and [source.line(i) for i in range(3)] == [3, 5, 6]
  assert source[0]["caption"] == "one\ntwo" and source[2]["caption"] == 'x,"y"'
  assert "line 5 of" in source[1].detail and "none.png" in source[1].detail


def test_labels_and_caption_groups_read_rows_on_demand(tmp_path):
  (tmp_path / "l.csv").write_text('image_path,caption,label\na.png,"x, 1",cat\nb.png,y,dog\na.png,z,cat\n')
  source = sources.FileListSource(str(tmp_path / "l.csv"), label_key="label")
  assert source.labels.tolist() == [0, 1, 0] and source.class_names == ("cat", "dog")
  assert source.caption_groups() == ([0, 1], [["x, 1", "z"], ["y"]])
  assert source.caption_groups(limit=1) == ([0], [["x, 1", "z"]])


def test_labels_of_many_rows_are_read_a_block_at_a_time(tmp_path, monkeypatch):
  """Labels across several read blocks (shrunk to 7 rows here), a row that does not parse among them: the
  same labels as one pass would give, -1 for that row, and errors naming the line in any block."""
  monkeypatch.setattr(sources, "READ_BLOCK_ROWS", 7)
  names = ["cat", "dog", "emu"]
  label = lambda i: names[(i * 5) % 3]
  rows = [json.dumps({"image_path": f"{i}.png", "caption": f"c {i}", "label": label(i)}) for i in range(30)]
  rows[12] = "{not json"
  (tmp_path / "l.jsonl").write_text("\n".join(rows) + "\n")
  source = sources.FileListSource(str(tmp_path / "l.jsonl"), label_key="label")
  assert source.class_names == ("cat", "dog", "emu") and source.labels.dtype == np.int64
  assert source.labels.tolist() == [-1 if i == 12 else names.index(label(i)) for i in range(30)]
  for value, message in ((7, r"line 22 of .* has an integer label among class-name labels"),
                         ("", r"line 22 of .* has no label"),
                         ("gnu", r"label 'gnu' on line 22 of .* is not one of the 3 class names")):
    bad = list(rows)
    bad[21] = json.dumps({"image_path": "x.png", "caption": "c", "label": value})
    (tmp_path / "bad.jsonl").write_text("\n".join(bad) + "\n")
    with pytest.raises(sources.DataFileError, match=message):
      sources.FileListSource(str(tmp_path / "bad.jsonl"), label_key="label",
                             class_names=tuple(names) if value == "gnu" else ())


@pytest.fixture(scope="module")
def tokenizer():
  return Tokenizer.train([f"a caption number {i} with some words" for i in range(200)], 64)


def _pairs(tmp_path, missing: set, count: int = 40) -> str:
  for i in range(count):
    if i not in missing:
      Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i}.png")
  (tmp_path / "pairs.csv").write_text("image_path,caption\n" + "".join(f"{i}.png,caption {i}\n" for i in range(count)))
  return str(tmp_path / "pairs.csv")


def test_missing_images_are_skipped_and_counted_in_training(tmp_path, tokenizer):
  source = sources.FileListSource(_pairs(tmp_path, missing={3, 17}))
  preprocess = pipeline.Preprocess(tokenizer, 8, 8, train=True)
  it = iter(pipeline.train_dataset(source, preprocess, 8, seed=0, num_threads=1))
  batches = [next(it) for _ in range(10)]  # 80 slots: two epochs
  assert all(len(b["image"]) == 8 for b in batches)
  counts = sum(b["bad_records"].sum(0) for b in batches)
  assert counts[pipeline.BAD_REASONS.index("corrupt_image")] >= 4 and counts.sum() == counts[0], counts


def test_a_mostly_missing_file_list_stops_with_one_line(tmp_path, tokenizer):
  source = sources.FileListSource(_pairs(tmp_path, missing=set(range(39))))
  preprocess = pipeline.Preprocess(tokenizer, 8, 8, train=True)
  it = iter(pipeline.train_dataset(source, preprocess, 8, seed=0, num_threads=1))
  counts, good = 0, 0
  with pytest.raises(pipeline.BadDataError, match=r"^data: \d+ of the \d+ records read so far are bad "
                                                  r"\(\d+ corrupt image\), over data.max_bad_fraction = 0.1;"):
    for _ in range(40):  # what the trainer does with each batch's counts
      counts, good = counts + next(it)["bad_records"].sum(0), good + 8
      pipeline.check_bad_records(counts, good, 0.1)


def test_the_data_startup_benchmark_writes_its_report(tmp_path):
  import os
  import jax
  from vlmjax.bench import data_startup, report
  result = data_startup.bench_data_startup(20_000, folder=str(tmp_path))
  assert result["rows"] == 20_000 and result["first_reads_bad"] == data_startup.READS
  assert result["index_bytes"] == 8 * 20_001 and result["construct_s"] < 5
  result["environment"] = report.environment(jax.devices(), os.getloadavg())
  _, md_path = report.write(str(tmp_path), "data_startup", result, report.data_startup_markdown(result))
  assert "| construction (row index) |" in open(md_path).read()
