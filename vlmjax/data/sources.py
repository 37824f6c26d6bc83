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


class FileListSource:
  """Rows of (image path, caption) from a CSV (with header) or JSONL file."""

  def __init__(self, path: str, image_root: str = "", image_key: str = "image_path",
               caption_key: str = "caption"):
    if not os.path.exists(path):
      raise FileNotFoundError(f"data: file '{path}' does not exist")
    self.path = path
    self.root = image_root or os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8", errors="surrogateescape") as f:  # bad rows are skipped later
      if path.endswith(".jsonl"):
        rows = [json.loads(line) for line in f if line.strip()]
      else:
        rows = list(csv.DictReader(f))
    if not rows:
      raise ValueError(f"data: '{path}' has no rows")
    for key in (image_key, caption_key):
      if key not in rows[0]:
        raise KeyError(f"data: '{path}' has no column '{key}' (columns: {', '.join(rows[0])})")
    self.rows = [(os.path.join(self.root, r[image_key]), "" if r[caption_key] is None else str(r[caption_key]))
                 for r in rows]
    for line, (image_path, _) in enumerate(self.rows, start=2 if path.endswith(".csv") else 1):
      if not os.path.isfile(image_path):
        raise FileNotFoundError(f"data: image '{image_path}' on line {line} of '{path}' does not exist")

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, index):
    image_path, caption = self.rows[int(index)]
    with open(image_path, "rb") as f:
      return {"image": f.read(), "caption": caption}


@registry.register("dataset", "vlmjax_shapes")
def shapes_source(data_config, split: str):
  from vlmjax.data import shapes  # registers the builder with TFDS
  data_dir = data_config.get("data_dir") or os.path.join("data", "tfds")
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
    raise KeyError(f"config.data.files has no '{split}' entry (a CSV/JSONL path per split)")
  return FileListSource(path, data_config.get("image_root", ""), data_config.get("image_key", "image_path"),
                        data_config.get("caption_key", "caption"))


def make_source(data_config, split: str):
  return registry.get("dataset", data_config.name)(data_config, split)
