"""Parquet and ArrayRecord files as random-access sources (`data.name` 'parquet' / 'array_record').

Both read `data.files[split]`: one path, a glob (`/data/train-*.parquet`, its matches sorted) or
several of either joined with '::'; the files are one source in that order. A record is built from
`image_key` (image bytes; left at the CSV default 'image_path' it means 'image'), `caption_key`
('' = no captions), `label_key` ('' = no labels; an integer) and `fields` (more record keys:
record key -> column). Because both are read by index, grain shuffles, slices per host, skips bad
records and resumes exactly as it does for TFDS.

**Parquet** (as Hugging Face datasets and img2dataset write it): the image column is binary, or
HF's image struct `{'bytes': binary, 'path': string}`. Only the footers are read when the source is
made: row-group row counts map a global index to (file, row group, row). A read decodes the whole
row group (of the columns used) and each thread keeps the last CACHED_ROW_GROUPS_PER_THREAD. The
trade-off: a shuffled epoch jumps between row groups, so nearly every read decodes a row group for
one row; the cost of a read grows with the row-group size. Write small row groups (256-1024 rows,
`pyarrow.parquet.write_table(..., row_group_size=512)`), or use ArrayRecord, which reads one record.
A label column of an HF `ClassLabel` gives the class names (unless `class_names` is set).

**ArrayRecord** (TFDS's storage, `array_record` package): each record is one example, a dict
serialized with `flax.serialization.msgpack_serialize`: `{'image': encoded image bytes (or a uint8
[H, W, 3] array), 'caption': str, 'label': int, ...}` (the keys are those the config names).
`write_array_record(path, records)` writes such a file (group size 1: one record per read).

Bad data: a record with no image bytes or no caption is a `BadRecord` ('empty_image' /
'empty_caption') naming the file and row, which the pipeline skips and counts; an ArrayRecord record
that is not a msgpack dict is 'corrupt_image'. A file that is not Parquet / ArrayRecord, or that
lacks a configured column, is a one-line error naming the file, the `data.*_key` and the columns
present.
"""
import bisect
import collections
import dataclasses
import glob
import json
import os
import threading

from flax import serialization
import numpy as np

from vlmjax import registry
from vlmjax.data.pipeline import BadRecord
from vlmjax.data.sources import DataFileError, class_names_of

# Per thread: enough for reads in order (evaluation) to decode each row group once; a shuffled
# epoch misses almost always whatever the size, and each entry holds a whole row group's images.
CACHED_ROW_GROUPS_PER_THREAD = 2
FIRST_RECORDS_CHECKED = 8  # ArrayRecord: records whose keys are checked against the config's
CSV_IMAGE_KEY = "image_path"  # the base config's image_key: a CSV column of paths, never bytes


def expand_files(spec: str, split: str) -> list[str]:
  """'a.parquet::/data/train-*.parquet' -> the files, each glob's matches sorted; every piece must
  name at least one file."""
  if not spec:
    raise KeyError(f"config: 'data.files.{split}' is not set (a file, a glob, or several joined with '::', "
                   f"e.g. --config.data.files.{split}='/data/{split}-*.parquet')")
  paths = []
  for piece in spec.split("::"):
    piece = os.path.expanduser(piece.strip())
    pattern = any(c in piece for c in "*?[")
    matches = sorted(glob.glob(piece)) if pattern else [piece]
    if not matches or not os.path.isfile(matches[0]):
      what = "matches no file" if pattern else "does not exist"
      raise FileNotFoundError(f"data: '{piece}' (data.files.{split}) {what}")
    paths.extend(matches)
  return paths


def _keys(data_config) -> dict:
  """Record key -> column/key in the files: image, caption and label by their `*_key`, then `fields`."""
  image_key = data_config.get("image_key", CSV_IMAGE_KEY)
  keys = {"image": "image" if image_key == CSV_IMAGE_KEY else image_key}
  if data_config.get("caption_key", "caption"):
    keys["caption"] = data_config.get("caption_key", "caption")
  if data_config.get("label_key", ""):
    keys["label"] = data_config.label_key
  keys.update(dict(data_config.get("fields") or {}))
  return keys


def _config_key(record_key: str) -> str:
  """The config key that names the column of `record_key`, for error messages."""
  return f"data.{record_key}_key" if record_key in ("image", "caption", "label") else f"data.fields.{record_key}"


def _check_columns(path: str, keys: dict, present: list):
  for record_key, column in keys.items():
    if column not in present:
      raise DataFileError(f"data: '{path}' has no column '{column}' ({_config_key(record_key)}; columns: "
                          f"{', '.join(map(str, present))})")


def _as_text(value) -> str:
  """A caption: str as is, bytes decoded with 'surrogateescape' (the pipeline skips non-UTF-8)."""
  return value.decode("utf-8", errors="surrogateescape") if isinstance(value, (bytes, bytearray)) else value


def _make_record(values: dict, where: str):
  """{record key: value read} -> the source record, or a BadRecord naming `where` (file and row)."""
  image = values["image"]
  if isinstance(image, dict):  # HF's image struct
    image = image.get("bytes")
  if image is None or (len(image) if isinstance(image, (bytes, bytearray)) else np.size(image)) == 0:
    return BadRecord("empty_image", f"{where} has no image bytes")
  record = {**values, "image": image}
  if "caption" in values:
    if values["caption"] is None:
      return BadRecord("empty_caption", f"{where} has no caption")
    record["caption"] = _as_text(values["caption"])
  if record.get("long_caption") is not None:
    record["long_caption"] = _as_text(record["long_caption"])
  for key in ("negative_captions", "captions"):
    if key in record and record[key] is not None:
      record[key] = [_as_text(c) for c in record[key]]
  if "label" in values:
    label = values["label"]
    if label is None or isinstance(label, bool) or not isinstance(label, (int, np.integer)):
      raise DataFileError(f"data: {where} has no integer label ({values['label']!r})")
    record["label"] = int(values["label"])
  return record


class ParquetSource:
  """Rows of one or more Parquet files, read by row group on demand (see the module docstring)."""

  def __init__(self, paths: list[str], keys: dict, class_names: tuple = ()):
    import pyarrow as pa
    import pyarrow.parquet as pq
    self.paths, self.keys = list(paths), dict(keys)
    self.columns = list(dict.fromkeys(self.keys.values()))
    self.metadata, self.groups, self.starts = [], [], []  # per file; per row group: (file, group), first row
    total, hf_features = 0, {}
    for file_index, path in enumerate(self.paths):
      try:
        parquet = pq.ParquetFile(path)
      except (pa.ArrowException, OSError) as e:
        raise DataFileError(f"data: '{path}' is not a Parquet file ({str(e).splitlines()[0]})") from None
      with parquet:
        schema = parquet.schema_arrow
        _check_columns(path, self.keys, schema.names)
        _check_image_type(path, self.keys["image"], schema.field(self.keys["image"]).type)
        if "label" in self.keys and not pa.types.is_integer(schema.field(self.keys["label"]).type):
          raise DataFileError(f"data: column '{self.keys['label']}' of '{path}' (data.label_key) is "
                              f"{schema.field(self.keys['label']).type}, not integer class labels")
        if file_index == 0:
          hf_features = _hf_features(schema.metadata)
        metadata = parquet.metadata
      self.metadata.append(metadata)
      for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        if rows:
          self.groups.append((file_index, group))
          self.starts.append(total)
          total += rows
    if not total:
      raise DataFileError(f"data: '{self.paths[0]}'{' and the other files' if len(paths) > 1 else ''} have no rows")
    self.total = total
    label_feature = hf_features.get(self.keys.get("label"), {}) if "label" in self.keys else {}
    self.class_names = tuple(class_names) or tuple(label_feature.get("names") or ())
    self._local = threading.local()

  def __getstate__(self):  # a thread-local cache does not pickle: each copy starts its own
    return {k: v for k, v in self.__dict__.items() if k != "_local"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def __len__(self):
    return self.total

  def _row_group(self, position: int):
    """-> {column: pyarrow array} of row group `position` (in self.groups), from this thread's cache."""
    cache = getattr(self._local, "cache", None)
    if cache is None:
      cache = self._local.cache = collections.OrderedDict()
    if position in cache:
      cache.move_to_end(position)
      return cache[position]
    import pyarrow.parquet as pq
    file_index, group = self.groups[position]
    # The footer parsed at construction is passed back, so a read opens the file but parses nothing
    # more; opening per read keeps no descriptors open for thousands of files.
    with pq.ParquetFile(self.paths[file_index], metadata=self.metadata[file_index]) as parquet:
      table = parquet.read_row_group(group, columns=self.columns, use_threads=False)
    columns = {name: table.column(name).combine_chunks() for name in self.columns}
    cache[position] = columns
    while len(cache) > CACHED_ROW_GROUPS_PER_THREAD:
      cache.popitem(last=False)
    return columns

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < self.total:
      raise IndexError(f"index {index} out of range for {self.total} rows")
    position = bisect.bisect_right(self.starts, index) - 1
    row = index - self.starts[position]
    columns = self._row_group(position)
    file_index, group = self.groups[position]
    values = {key: columns[column][row].as_py() for key, column in self.keys.items()}
    return _make_record(values, f"row {row} of row group {group} of '{self.paths[file_index]}'")


def _check_image_type(path: str, column: str, arrow_type):
  import pyarrow as pa
  binary = lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)
  if binary(arrow_type) or (pa.types.is_struct(arrow_type) and arrow_type.get_field_index("bytes") >= 0
                            and binary(arrow_type.field("bytes").type)):
    return
  raise DataFileError(f"data: column '{column}' of '{path}' (data.image_key) is {arrow_type}, not image bytes "
                      "(binary, or a struct with binary 'bytes' as Hugging Face's Image feature)")


def _hf_features(metadata) -> dict:
  """The features Hugging Face datasets stores in a Parquet schema's metadata ({} if none)."""
  try:
    return json.loads((metadata or {})[b"huggingface"])["info"]["features"] or {}
  except (KeyError, TypeError, ValueError):
    return {}


@dataclasses.dataclass(frozen=True)
class _FileInstruction:
  """What `ArrayRecordDataSource` takes for a whole file whose length is already known."""
  filename: str
  skip: int
  take: int
  examples_in_shard: int


class ArrayRecordSource:
  """Records of one or more ArrayRecord files, each a msgpack-serialized dict (module docstring)."""

  def __init__(self, paths: list[str], keys: dict, class_names: tuple = ()):
    from array_record.python import array_record_data_source, array_record_module
    self.paths, self.keys, self.class_names = list(paths), dict(keys), tuple(class_names)
    instructions, self.starts, total = [], [], 0
    for path in self.paths:
      try:
        reader = array_record_module.ArrayRecordReader(path)
        count = reader.num_records()
        reader.close()
      except (RuntimeError, OSError, ValueError) as e:
        raise DataFileError(f"data: '{path}' is not an ArrayRecord file ({str(e).splitlines()[0]})") from None
      if count:
        instructions.append(_FileInstruction(path, 0, count, count))
        self.starts.append(total)
        total += count
    if not total:
      raise DataFileError(f"data: '{self.paths[0]}'{' and the other files' if len(paths) > 1 else ''} have no records")
    self.total = total
    self.source = array_record_data_source.ArrayRecordDataSource(instructions)
    self.file_of = [instruction.filename for instruction in instructions]
    # The keys of the first records stand for the columns: a key none of them has is a config error,
    # not a run of bad records (one record without a caption is only a bad record).
    present = {}
    for index in range(min(FIRST_RECORDS_CHECKED, self.starts[1] if len(self.starts) > 1 else total)):
      record = self._decode(self.source[index])
      present.update(dict.fromkeys(record if isinstance(record, dict) else ()))
    if present:
      _check_columns(self.file_of[0], self.keys, list(present))

  def __len__(self):
    return self.total

  @staticmethod
  def _decode(data: bytes):
    try:
      record = serialization.msgpack_restore(data)
    except Exception as e:  # pylint: disable=broad-except  # msgpack raises many types for bad bytes
      return f"{type(e).__name__}: {e}"
    return record if isinstance(record, dict) else f"a {type(record).__name__}, not a dict"

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < self.total:
      raise IndexError(f"index {index} out of range for {self.total} records")
    position = bisect.bisect_right(self.starts, index) - 1
    where = f"record {index - self.starts[position]} of '{self.file_of[position]}'"
    record = self._decode(self.source[index])
    if not isinstance(record, dict):
      return BadRecord("corrupt_image", f"{where} is not a msgpack dict ({record})")
    values = {key: record.get(column) for key, column in self.keys.items()}
    return _make_record(values, where)


def write_array_record(path: str, records) -> int:
  """Writes dicts (`{'image': bytes, 'caption': str, ...}`) as an ArrayRecord file of
  msgpack-serialized records, one record per group so each is read alone. -> records written."""
  from array_record.python import array_record_module
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  count = 0
  try:
    for record in records:
      writer.write(serialization.msgpack_serialize(dict(record)))
      count += 1
  finally:
    writer.close()
  return count


@registry.register("dataset", "parquet")
def parquet_source(data_config, split: str):
  paths = expand_files(data_config.get("files", {}).get(split, "") if "files" in data_config else "", split)
  return ParquetSource(paths, _keys(data_config), class_names_of(data_config))


@registry.register("dataset", "array_record")
def array_record_source(data_config, split: str):
  paths = expand_files(data_config.get("files", {}).get(split, "") if "files" in data_config else "", split)
  return ArrayRecordSource(paths, _keys(data_config), class_names_of(data_config))
