"""Parquet and ArrayRecord sources (`vlmjax.data.columnar`): what was written comes back by index
across files, training runs on each, bad rows are skipped and counted, and bad files and columns are
one-line errors naming them."""
import io
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import tiny_config
from vlmjax.data import columnar, sources
from vlmjax.data.pipeline import BadRecord
from vlmjax.run import read_metrics
from vlmjax.train import train

ROWS = 192  # of the tiny train split, over several files
ROW_GROUP = 16  # small row groups, as recommended: a read decodes a whole one
CLASS_NAMES = [f"class {i}" for i in range(20)]
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _png(pixels) -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.asarray(pixels, np.uint8)).save(out, format="PNG")
  return out.getvalue()


@pytest.fixture(scope="module")
def records(tiny_source):
  return [{"image": _png(r["image"]), "caption": r["caption"], "label": int(r["label"])}
          for r in (tiny_source[i] for i in range(ROWS))]


def _write_parquet(path, records, hf: bool, row_group_size=ROW_GROUP):
  image = [r["image"] for r in records]
  columns = {"image": pa.array([None if b is None else {"bytes": b, "path": None} for b in image], HF_IMAGE)
                      if hf else pa.array(image, pa.binary()),
             "text" if hf else "caption": pa.array([r["caption"] for r in records], pa.string()),
             "label": pa.array([r["label"] for r in records], pa.int64())}
  table = pa.table(columns)
  if hf:  # what Hugging Face datasets stores: the features, with the ClassLabel's names
    features = {"image": {"_type": "Image"}, "text": {"dtype": "string", "_type": "Value"},
                "label": {"names": CLASS_NAMES, "_type": "ClassLabel"}}
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
  pq.write_table(table, str(path), row_group_size=row_group_size)


@pytest.fixture(scope="module")
def files(records, tmp_path_factory):
  """Each kind in 3 files of 64 rows: plain Parquet (a glob), HF Parquet ('::'), ArrayRecord (a glob)."""
  root = tmp_path_factory.mktemp("columnar")
  thirds = [records[i:i + ROWS // 3] for i in range(0, ROWS, ROWS // 3)]
  hf = []
  for k, part in enumerate(thirds):
    _write_parquet(root / f"plain-{k}.parquet", part, hf=False)
    _write_parquet(root / f"hf-{k}.parquet", part, hf=True)
    hf.append(str(root / f"hf-{k}.parquet"))
    assert columnar.write_array_record(str(root / f"shard-{k}.array_record"), part) == len(part)
  return dict(root=root, plain=str(root / "plain-*.parquet"), hf="::".join(hf),
              array_record=str(root / "shard-*.array_record"))


def _data(name, path, **more):
  """A data config for `name` reading `path` as its train split."""
  c = tiny_config("", **{"data.name": name, "data.files": {"train": path}, **{f"data.{k}": v for k, v in more.items()}})
  return c.data


HF_KEYS = dict(caption_key="text", label_key="label")


@pytest.mark.parametrize("kind,name,keys", [("plain", "parquet", {"label_key": "label"}),
                                            ("hf", "parquet", HF_KEYS),
                                            ("array_record", "array_record", {"label_key": "label"})])
def test_source_returns_what_was_written_by_index(files, records, kind, name, keys):
  source = sources.make_source(_data(name, files[kind], **keys), "train")
  assert len(source) == ROWS
  for i in [0, 1, 63, 64, 100, 127, 128, ROWS - 1, 5, 70]:  # across files, out of order
    record = source[i]
    assert record["image"] == records[i]["image"], i
    assert record["caption"] == records[i]["caption"] and record["label"] == records[i]["label"], i
  with pytest.raises(IndexError):
    source[ROWS]
  if kind == "hf":
    assert source.class_names == tuple(CLASS_NAMES)  # from the ClassLabel feature


def test_parquet_decodes_each_row_group_once_in_order(files, records, monkeypatch):
  source = sources.make_source(_data("parquet", files["plain"]), "train")
  assert len(source.groups) == ROWS // ROW_GROUP
  reads = []
  read_row_group = pq.ParquetFile.read_row_group
  monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, i, **kw: reads.append(i) or
                      read_row_group(self, i, **kw))
  for i in list(range(ROWS)) + [ROWS - 1, ROWS - ROW_GROUP - 1]:  # the last two groups are cached
    assert source[i]["caption"] == records[i]["caption"]
  assert len(reads) == ROWS // ROW_GROUP
  source[0]
  assert len(reads) == ROWS // ROW_GROUP + 1
  copy = pickle.loads(pickle.dumps(source))  # grain may pickle a source
  assert copy[7]["image"] == records[7]["image"]


def _bad_rows(records):
  """Good rows with 8 bad ones among them: 2 of each kind."""
  rows = [dict(r) for r in records[:24]]
  for i in (1, 9):
    rows[i]["image"] = None
  for i in (3, 11):
    rows[i]["image"] = b""
  for i in (5, 13):
    rows[i]["caption"] = None
  for i in (7, 15):
    rows[i]["caption"] = "  "
  return rows


@pytest.fixture(scope="module")
def bad_files(records, files):
  root = files["root"]
  rows = _bad_rows(records)
  _write_parquet(root / "bad-hf.parquet", rows, hf=True, row_group_size=8)
  _write_parquet(root / "bad-plain.parquet", rows, hf=False, row_group_size=8)
  columnar.write_array_record(str(root / "bad.array_record"), [{k: v for k, v in r.items() if v is not None}
                                                               for r in rows])
  # A record that is not a msgpack dict, written beside good ones.
  from array_record.python import array_record_module
  writer = array_record_module.ArrayRecordWriter(str(root / "garbage.array_record"), "group_size:1")
  for data in (b"\xc1 not msgpack", b"\x93\x01\x02\x03"):  # invalid; a list, not a dict
    writer.write(data)
  writer.close()
  return dict(hf=str(root / "bad-hf.parquet"), plain=str(root / "bad-plain.parquet"),
              array_record=str(root / "bad.array_record"), garbage=str(root / "garbage.array_record"))


def test_bad_rows_are_bad_records_naming_the_file_and_row(files, bad_files):
  source = sources.make_source(_data("parquet", bad_files["hf"], **HF_KEYS), "train")
  reasons = {i: source[i].reason for i in range(len(source)) if isinstance(source[i], BadRecord)}
  assert reasons == {1: "empty_image", 9: "empty_image", 3: "empty_image", 11: "empty_image",
                     5: "empty_caption", 13: "empty_caption"}  # '  ': the pipeline's record_problem
  assert source[9].detail == f"row 1 of row group 1 of '{bad_files['hf']}' has no image bytes"
  source = sources.make_source(_data("array_record", bad_files["array_record"] + "::" + bad_files["garbage"]), "train")
  assert source[5] == BadRecord("empty_caption", f"record 5 of '{bad_files['array_record']}' has no caption")
  assert source[1].reason == "empty_image"
  assert [source[24 + i].reason for i in range(2)] == ["corrupt_image"] * 2
  assert bad_files["garbage"] in source[25].detail and "not a dict" in source[25].detail


def _one_line_error(error, data, *pieces):
  with pytest.raises(error) as info:
    sources.make_source(data, "train")
  message = str(info.value)
  assert "\n" not in message and message.startswith(("data: ", "config: ")), message
  for piece in pieces:
    assert piece in message, message
  return message


def test_bad_files_and_columns_are_one_line_errors(files, tmp_path):
  not_parquet = tmp_path / "notes.parquet"
  not_parquet.write_text("hello\n")
  _one_line_error(sources.DataFileError, _data("parquet", files["plain"] + "::" + str(not_parquet)),
                  f"'{not_parquet}' is not a Parquet file")
  _one_line_error(sources.DataFileError, _data("array_record", str(not_parquet)),
                  f"'{not_parquet}' is not an ArrayRecord file")
  plain0 = str(files["root"] / "plain-0.parquet")
  _one_line_error(sources.DataFileError, _data("parquet", plain0, caption_key="text"),
                  f"'{plain0}' has no column 'text' (data.caption_key; columns: image, caption, label)")
  _one_line_error(sources.DataFileError, _data("parquet", plain0, image_key="caption"),
                  "column 'caption'", "(data.image_key) is string, not image bytes")
  _one_line_error(sources.DataFileError, _data("parquet", plain0, fields={"long_caption": "long"}),
                  "no column 'long' (data.fields.long_caption")
  shard0 = str(files["root"] / "shard-0.array_record")
  _one_line_error(sources.DataFileError, _data("array_record", shard0, label_key="class"),
                  f"'{shard0}' has no column 'class' (data.label_key; columns: caption, image, label)")
  _one_line_error(FileNotFoundError, _data("parquet", str(tmp_path / "none-*.parquet")),
                  "none-*.parquet' (data.files.train) matches no file")
  _one_line_error(FileNotFoundError, _data("array_record", str(tmp_path / "missing.array_record")),
                  "missing.array_record' (data.files.train) does not exist")
  with pytest.raises(KeyError, match="data.files.train"):
    sources.make_source(_data("parquet", ""), "train")


def test_absolute_paths_of_joined_files(files, monkeypatch):
  monkeypatch.chdir(files["root"])
  config = tiny_config("", **{"data.name": "parquet", "data.files": {"train": "hf-0.parquet::plain-*.parquet"}})
  assert sources.with_absolute_paths(config).data.files.train == \
      f"{files['root']}/hf-0.parquet::{files['root']}/plain-*.parquet"


# --- Training --------------------------------------------------------------------------------------

TOTAL = 4


def _train_config(tiny_data_dir, name, path, **keys):
  return tiny_config(tiny_data_dir, **{
      "data.name": name, "data.files": {"train": path}, "total_steps": TOTAL,  # checkpoints: the stop's, the end's
      "input.crop_min": 0.8, "input.brightness": 0.1, "mesh": dict(data=1, fsdp=-1, tensor=1),  # 8 fake devices
      **{f"data.{k}": v for k, v in keys.items()}})


def _losses(workdir):
  return {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}


def test_parquet_training_skips_and_counts_bad_rows(tiny_data_dir, files, bad_files, tmp_path):
  # Bad rows among the good. Resuming exactly is the index-based pipeline's, whatever the source
  # (tests/test_webdataset.py, tests/test_mixture.py, tests/test_resume.py check it).
  config = _train_config(tiny_data_dir, "parquet", bad_files["plain"] + "::" + files["plain"])
  assert train(config, str(tmp_path)) == {}
  losses = _losses(str(tmp_path))
  assert sorted(losses) == list(range(1, TOTAL + 1)) and all(np.isfinite(v) for v in losses.values())
  last = [m for m in read_metrics(str(tmp_path)) if "loss" in m][-1]
  assert last["bad_records"] > 0, last


def test_array_record_training_skips_and_counts_bad_rows(tiny_data_dir, bad_files, tmp_path):
  # 24 rows, 8 of them bad (4 without an image, 4 without a caption): 2 epochs, so every slot of the
  # first epoch is filled and each of its bad records counted.
  config = _train_config(tiny_data_dir, "array_record", bad_files["array_record"])
  config.total_steps = 2 * 24 // config.batch_size
  assert train(config, str(tmp_path)) == {}
  last = [m for m in read_metrics(str(tmp_path)) if "loss" in m][-1]
  assert last["step"] == config.total_steps and np.isfinite(last["loss"])
  assert last["bad_records/empty_image"] >= 4 and last["bad_records/empty_caption"] >= 4, last


def test_array_record_holds_uint8_arrays(tmp_path):
  pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
  path = str(tmp_path / "arrays.array_record")
  columnar.write_array_record(path, [{"image": pixels, "caption": "a grey square"}])
  record = sources.make_source(_data("array_record", path), "train")[0]
  np.testing.assert_array_equal(record["image"], pixels)
  assert record["caption"] == "a grey square"
