"""Random-access sources of (image, caption) records, selected by `config.data.name`.

- `vlmjax_shapes`: the built-in dataset (built locally on first use, see `vlmjax.data.shapes`).
- `tfds`: any TFDS dataset prepared in `data_dir` (array_record), with `fields` mapping our record
  keys to its feature paths, e.g. `{'image': 'image', 'caption': 'captions/text'}`.
- `csv` / `jsonl`: a file of `image_path,caption` rows (open_clip's convention), paths relative to
  `image_root` (default: the file's folder). Every listed image must exist; a missing one is reported
  with its row before anything is compiled.

A source has `__len__` and `__getitem__(i) -> {'image': uint8 [H, W, 3] array or encoded bytes,
'caption': str, ...}`; grain reads it by index. Text is decoded with 'surrogateescape' and a record
TFDS cannot decode comes back as a `pipeline.BadRecord`, so bad records reach the pipeline, which
skips and counts them (`vlmjax.data.pipeline`), rather than stopping the run here.
"""
import csv
import json
import os

import numpy as np

from vlmjax import registry
from vlmjax.data.pipeline import BadRecord


def _get_path(record, path: str):
  for key in path.split("/"):
    record = record[key]
  return record


def _as_text(value) -> str:
  if isinstance(value, (list, tuple, np.ndarray)) and not isinstance(value, (str, bytes)):
    value = value[0] if len(value) else b""
  return value.decode("utf-8", errors="surrogateescape") if isinstance(value, bytes) else str(value)


class TfdsSource:
  """A TFDS array_record split read without TensorFlow; records renamed by `fields`."""

  def __init__(self, name: str, split: str, data_dir: str, fields: dict):
    import tensorflow_datasets as tfds
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir or None)
    except Exception as e:  # tfds raises several types; the user needs the name, split and folder
      raise FileNotFoundError(
          f"data: cannot open TFDS dataset '{name}' split '{split}' in '{data_dir}': "
          f"{str(e).splitlines()[0]}") from None
    self.fields = dict(fields)

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    try:
      record = self.source[int(index)]
    except Exception as e:  # pylint: disable=broad-except  # TFDS decodes images with PIL: many types
      return BadRecord("corrupt_image", f"TFDS record {int(index)}: {type(e).__name__}: {e}")
    out = {key: _get_path(record, path) for key, path in self.fields.items()}
    for key in ("caption", "long_caption"):
      if key in out:
        out[key] = _as_text(out[key])
    if "negative_captions" in out:
      out["negative_captions"] = [_as_text([c]) for c in out["negative_captions"]]
    return out


class DataFileError(ValueError):
  """A CSV/JSONL data file that cannot be read as one: the one-line message names the file and line."""


class FileListSource:
  """Rows of (image path, caption) from a CSV (with header) or JSONL file."""

  def __init__(self, path: str, image_root: str = "", image_key: str = "image_path",
               caption_key: str = "caption"):
    if not os.path.exists(path):
      raise FileNotFoundError(f"data: file '{path}' does not exist")
    self.path = path
    self.root = image_root or os.path.dirname(os.path.abspath(path))
    rows = self._read_rows(path)
    if not rows:
      raise DataFileError(f"data: '{path}' has no rows")
    for key in (image_key, caption_key):
      if key not in rows[0][1]:
        raise KeyError(f"data: '{path}' has no column '{key}' (columns: {', '.join(map(str, rows[0][1]))})")
    self.rows = []
    for line, row in rows:
      image = row.get(image_key)
      if not isinstance(image, str) or not image:
        raise DataFileError(f"data: line {line} of '{path}' has no image path in '{image_key}' (got {image!r})")
      caption = row.get(caption_key)
      self.rows.append((os.path.join(self.root, image), "" if caption is None else str(caption)))
    for line, (image_path, _) in zip((line for line, _ in rows), self.rows):
      if not os.path.isfile(image_path):
        raise FileNotFoundError(f"data: image '{image_path}' on line {line} of '{path}' does not exist")

  @staticmethod
  def _read_rows(path: str) -> list:
    """-> [(line number, {column: value})]. Captions of any length are read (an over-long one is a
    bad record the pipeline skips, by `data.max_caption_chars`, not an unreadable file)."""
    csv.field_size_limit(2**31 - 1)
    out = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:  # bad text is skipped later
      if path.endswith(".jsonl"):
        for line, text in enumerate(f, start=1):
          if not text.strip():
            continue
          try:
            row = json.loads(text)
          except ValueError as e:
            raise DataFileError(f"data: line {line} of '{path}' is not valid JSON ({e})") from None
          if not isinstance(row, dict):
            raise DataFileError(f"data: line {line} of '{path}' is not a JSON object")
          out.append((line, row))
      else:
        reader = csv.DictReader(f)
        try:
          out = [(reader.line_num, row) for row in reader]
        except csv.Error as e:
          raise DataFileError(f"data: line {reader.line_num} of '{path}': {e}") from None
    return out

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, index):
    image_path, caption = self.rows[int(index)]
    with open(image_path, "rb") as f:
      return {"image": f.read(), "caption": caption}


DEFAULT_SHAPES_DIR = os.path.join("data", "tfds")  # where `make demo` builds vlmjax_shapes


@registry.register("dataset", "vlmjax_shapes")
def shapes_source(data_config, split: str):
  from vlmjax.data import shapes  # registers the builder with TFDS
  data_dir = data_config.get("data_dir") or DEFAULT_SHAPES_DIR
  shapes.build(data_dir, data_config.get("builder_config", "default"))
  name = f"vlmjax_shapes/{data_config.get('builder_config', 'default')}"
  fields = dict(data_config.get("fields") or {"image": "image", "caption": "caption", "label": "label",
                                              "negative_captions": "negative_captions",
                                              "long_caption": "long_caption"})
  source = TfdsSource(name, split, data_dir, fields)
  source.class_names, source.prompts = shapes.CLASS_NAMES, shapes.zero_shot_prompts
  # Captioning references: every caption the generator could have written for record i's scene.
  source.reference_captions = lambda i: shapes.reference_captions(source.source[int(i)]["objects"])
  return source


@registry.register("dataset", "tfds")
def tfds_source(data_config, split: str):
  return TfdsSource(data_config.tfds_name, split, data_config.get("data_dir", ""),
                    dict(data_config.get("fields") or {"image": "image", "caption": "caption"}))


@registry.register("dataset", "csv")
@registry.register("dataset", "jsonl")
def file_list_source(data_config, split: str):
  path = data_config.get("files", {}).get(split) if "files" in data_config else None
  if not path:
    raise KeyError(f"config: 'data.files.{split}' is not set (a CSV/JSONL path per split, e.g. "
                   f"--config.data.files.{split}=/data/{split}.csv)")
  return FileListSource(path, data_config.get("image_root", ""), data_config.get("image_key", "image_path"),
                        data_config.get("caption_key", "caption"))


def with_absolute_paths(config):
  """A copy of `config` whose data folders and files are absolute paths (the built-in dataset's
  default folder made explicit), so that a run's config.json finds its data from any folder."""
  config = config.copy_and_resolve_references()
  data = config.data
  if data.name == "vlmjax_shapes" and not data.data_dir:
    data.data_dir = DEFAULT_SHAPES_DIR
  absolute = lambda path: os.path.abspath(os.path.expanduser(path)) if path else path
  data.data_dir, data.image_root = absolute(data.data_dir), absolute(data.image_root)
  for split in list(data.files.keys()):
    data.files[split] = absolute(data.files[split])
  return config


def make_source(data_config, split: str):
  return registry.get("dataset", data_config.name)(data_config, split)
