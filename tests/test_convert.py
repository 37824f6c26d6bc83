"""`python -m vlmjax.data.convert`: a CSV of images becomes ArrayRecord files and tar shards that the
array_record and webdataset sources read back (captions, labels, resized JPEGs), bad records are
dropped and reported by reason, a rerun redoes only the missing shard, and bad input or a foreign
--out is a one-line error that leaves the folder as it was."""
import io
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from vlmjax.data import convert
from vlmjax.data.pipeline import BadRecord
from vlmjax.data.sources import make_source

RECORDS = 60
SHARD_SIZE = 20  # 3 shards
CORRUPT = (7, 44)  # rows whose image file is not an image
EMPTY_CAPTION = 31
IMAGE_SIZE = 16


def _png(index: int) -> bytes:
  # Landscape and portrait images of different sizes: the shorter side becomes IMAGE_SIZE.
  w, h = (40 + index % 5, 24) if index % 2 else (24, 36 + index % 3)
  pixels = np.full((h, w, 3), (index * 4 % 256, 100, 200), np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="PNG")
  return out.getvalue()


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
  """A CSV of RECORDS tiny PNGs with captions and labels: two images corrupt, one caption empty."""
  root = tmp_path_factory.mktemp("convert_input")
  lines = ["image_path,caption,label"]
  for i in range(RECORDS):
    name = f"img{i:03d}.png"
    (root / name).write_bytes(b"this is not an image" if i in CORRUPT else _png(i))
    lines.append(f"{name},{'' if i == EMPTY_CAPTION else f'a picture number {i}'},{i % 3}")
  path = root / "pairs.csv"
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def _good_rows():
  return [i for i in range(RECORDS) if i not in CORRUPT and i != EMPTY_CAPTION]


def _run(*args):
  return subprocess.run([sys.executable, "-m", "vlmjax.data.convert", *args, "--noprogress"],
                        capture_output=True, text=True, cwd=REPO, timeout=120, check=False)


def _check_records(source, label_key="label"):
  good = _good_rows()
  assert len(source) == len(good)
  for position, row in enumerate(good):
    record = source[position]
    assert not isinstance(record, BadRecord), record
    assert record["caption"] == f"a picture number {row}"
    assert record[label_key] == row % 3
    image = Image.open(io.BytesIO(record["image"]))
    assert image.format == "JPEG" and min(image.size) == IMAGE_SIZE


def test_csv_to_array_record_and_a_rerun_redoes_only_the_missing_shard(csv_file, tmp_path):
  out = tmp_path / "ar"
  args = ["--name", "csv", "--files", csv_file, "--label_key", "label", "--out", str(out),
          "--format", "array_record", "--shard_size", str(SHARD_SIZE), "--image_size", str(IMAGE_SIZE),
          "--workers", "2"]
  proc = _run(*args)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip().splitlines()[-1] == (
      f"Wrote 57 records in 3 ArrayRecord files to {out} (3 written now, 0 already complete); "
      "dropped 3 bad records: 2 corrupt image, 1 empty caption")
  shards = [out / f"{k:05d}.array_record" for k in range(3)]
  assert sorted(os.listdir(out)) == sorted([s.name for s in shards] + ["convert.json"])
  config = ml_collections.ConfigDict({"name": "array_record", "files": {"train": str(out / "*.array_record")},
                                      "label_key": "label"})
  _check_records(make_source(config, "train"))

  report = json.loads((out / "convert.json").read_text())
  assert report["complete"] and report["records_written"] == 57
  assert report["bad_records"] == {"corrupt_image": 2, "empty_caption": 1}
  assert report["shards"]["00001.array_record"]["input"] == [20, 40]
  assert report["shards"]["00000.array_record"]["records"] == 19  # row 7 is corrupt
  assert report["arguments"]["shard_size"] == SHARD_SIZE and report["arguments"]["files"] == csv_file

  before = {s.name: s.stat().st_mtime_ns for s in shards}
  shards[1].unlink()
  proc = _run(*args)
  assert proc.returncode == 0, proc.stderr
  assert "(1 written now, 2 already complete)" in proc.stdout
  assert "dropped 3 bad records: 2 corrupt image, 1 empty caption" in proc.stdout
  assert shards[1].exists()
  assert {s.name: s.stat().st_mtime_ns for s in (shards[0], shards[2])} == \
      {name: before[name] for name in (shards[0].name, shards[2].name)}
  _check_records(make_source(config, "train"))


def test_csv_to_webdataset_shards(csv_file, tmp_path):
  out = tmp_path / "wds"
  proc = _run("--name", "csv", "--files", csv_file, "--label_key", "label", "--out", str(out),
              "--format", "webdataset", "--shard_size", str(SHARD_SIZE), "--image_size", str(IMAGE_SIZE),
              "--workers", "2")
  assert proc.returncode == 0, proc.stderr
  assert "Wrote 57 records in 3 tar shards" in proc.stdout
  config = ml_collections.ConfigDict({"name": "webdataset", "files": {"train": str(out / "{00000..00002}.tar")},
                                      "fields": {"label": "label"}})
  source = make_source(config, "train")
  _check_records(source)
  # img2dataset's layout: KEY.jpg, KEY.txt, KEY.json, KEY the input row.
  shard, row = source.locate(0)
  assert shard.keys[row] == "000000000" and sorted(shard.columns) == ["jpg", "json", "txt"]


def test_a_folder_of_images_with_captions(tmp_path):
  folder = tmp_path / "photos"
  (folder / "sub").mkdir(parents=True)
  for i, where in enumerate(["a", "b", "sub/c"]):
    (folder / f"{where}.png").write_bytes(_png(i))
    if where != "b":  # b has no caption file: an empty caption
      (folder / f"{where}.txt").write_text(f"caption {where}\n", encoding="utf-8")
  out = tmp_path / "out"
  result = convert.convert({"folder": str(folder)}, str(out), "array_record", shard_size=2, progress=False)
  assert result["records_written"] == 2 and result["bad_records"] == {"empty_caption": 1}
  config = ml_collections.ConfigDict({"name": "array_record", "files": {"train": str(out / "*.array_record")}})
  source = make_source(config, "train")
  assert [source[i]["caption"] for i in range(len(source))] == ["caption a", "caption sub/c"]
  assert Image.open(io.BytesIO(source[0]["image"])).size == Image.open(folder / "a.png").size  # 0: kept


def test_bad_input_and_a_foreign_out_are_one_line_errors(csv_file, tmp_path):
  missing = str(tmp_path / "nope.csv")
  proc = _run("--name", "csv", "--files", missing, "--out", str(tmp_path / "o"))
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr.strip() == f"vlmjax.data.convert: error: data: file '{missing}' does not exist"
  assert not (tmp_path / "o").exists()

  spec = convert.data_spec({"name": "csv", "files": csv_file})
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine", encoding="utf-8")
  with pytest.raises(convert.ConvertError, match="no convert.json of this command"):
    convert.convert(spec, str(foreign), progress=False)
  assert os.listdir(foreign) == ["notes.txt"]

  # A previous conversion with other settings is not resumed, and a foreign file among its shards
  # is never overwritten.
  out = tmp_path / "prev"
  convert.convert(spec, str(out), shard_size=30, image_size=8, progress=False)
  with pytest.raises(convert.ConvertError, match=r"other settings \(shard_size: 30 there, 20 now\)"):
    convert.convert(spec, str(out), shard_size=20, image_size=8, progress=False)
  (out / "00000.tar").write_bytes(b"someone's shard")
  with pytest.raises(convert.ConvertError, match="holds '00000.tar', which this command does not write"):
    convert.convert(spec, str(out), shard_size=30, image_size=8, progress=False)
  assert (out / "00000.tar").read_bytes() == b"someone's shard"
  for message, kwargs in (("--shard_size 0 must be at least 1", {"shard_size": 0}),
                          ("--quality 0 must be in 1..100", {"quality": 0}),
                          ("--format 'zip' is not one of", {"fmt": "zip"})):
    with pytest.raises(convert.ConvertError, match=message):
      convert.convert(spec, str(tmp_path / "x"), progress=False, **kwargs)
  with pytest.raises(convert.ConvertError, match="give the input: --name"):
    convert.data_spec({"files": csv_file})
  with pytest.raises(convert.ConvertError, match="--name csv needs --files"):
    convert.data_spec({"name": "csv"})
