"""Random-access sources of (image, caption) records, selected by `config.data.name`.

- `vlmjax_shapes`: the built-in dataset (built locally on first use, see `vlmjax.data.shapes`);
  `vlmjax_shapes_vqa`: the same scenes as visual question answering (no caption: a decoder answers
  one of each scene's questions); `vlmjax_shapes_cir`, its composed-retrieval triplets;
  `vlmjax_shapes_video`, clips of moving shapes stored as filmstrips (`VideoClips`).
- `tfds`: any TFDS dataset prepared in `data_dir` (array_record), with `fields` mapping our record
  keys to its feature paths, e.g. `{'image': 'image', 'caption': 'captions/text'}`.
- `csv` / `jsonl`: a file of `image_path,caption` rows (open_clip's convention), paths relative to
  `image_root` (default: the file's folder), opened lazily: one binary pass keeps each row's byte
  offset (8 bytes a row; a CSV row is a line unless the line has an odd number of '"', when the csv
  module says how many lines its quoted fields span), and a row is parsed, and its image read, only
  when it is read. A missing header column is an error naming the file; a row that does not parse,
  has no image path or names a missing image is a `BadRecord` naming the line (counted and skipped
  like a corrupt image). With `label_key`, a column of class labels (an integer or a class name) is
  read in the same construction, against `class_names` (a list, or `class_names_file`: one per
  line), and kept as an int array; with `caption_key=''` the file has no captions (a
  classification set). Several rows may name one image (several captions per image:
  `caption_groups` reads every row to give the retrieval evaluator each image's).

A source has `__len__` and `__getitem__(i) -> {'image': uint8 [H, W, 3] array or encoded bytes,
'caption': str, 'label': int, ...}`; grain reads it by index. It may have `class_names` (what its
labels name) and `caption_groups(limit) -> (record indices [N], captions per image)`. Text is decoded with 'surrogateescape' and a record
TFDS cannot decode comes back as a `pipeline.BadRecord`, so bad records reach the pipeline, which
skips and counts them (`vlmjax.data.pipeline`), rather than stopping the run here.
"""
import csv
import io
import itertools
import json
import os

import numpy as np
from PIL import Image

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


class DatasetNotPrepared(FileNotFoundError):
  """A TFDS dataset not prepared (as array_record) in the data folder: the message says how to."""


def prepare_command(name: str, data_dir: str) -> str:
  """The one command that prepares TFDS dataset `name` for random access in `data_dir`."""
  folder = f" --data_dir {data_dir}" if data_dir else ""
  manual = " --manual_dir DIR_WITH_THE_DOWNLOADED_FILES" if name.split("/")[0].startswith("imagenet") else ""
  return f"tfds build {name}{folder} --file_format array_record{manual}"


class TfdsSource:
  """A TFDS array_record split read without TensorFlow; records renamed by `fields`. Nothing is
  downloaded: a dataset that is not prepared in `data_dir` is an error naming the command that
  prepares it. A `label` field that is a `ClassLabel` gives `class_names`; a `captions` field is a
  list of texts per image (COCO-style: `captions/text`)."""

  def __init__(self, name: str, split: str, data_dir: str, fields: dict):
    # The prepared files are read without the dataset's builder code (some builders import
    # TensorFlow) and without ever downloading or preparing anything.
    from tensorflow_datasets.core import read_only_builder, registered
    where = data_dir or "the default TFDS folder"
    try:
      builder = read_only_builder.builder_from_files(name, data_dir=data_dir or None)
    except registered.DatasetNotFoundError:
      raise DatasetNotPrepared(f"data: TFDS dataset '{name}' is not prepared in {where}; prepare it with: "
                               f"{prepare_command(name, data_dir)}") from None
    except Exception as e:  # pylint: disable=broad-except  # tfds raises several types
      raise FileNotFoundError(f"data: cannot open TFDS dataset '{name}' in {where}: "
                              f"{str(e).splitlines()[0]}") from None
    try:
      self.source = builder.as_data_source(split=split)
    except Exception as e:  # pylint: disable=broad-except
      first = str(e).splitlines()[0]
      if isinstance(e, NotImplementedError):  # prepared as tfrecord: no random access
        first = f"it is prepared without random access; prepare it again with: {prepare_command(name, data_dir)}"
      raise FileNotFoundError(f"data: cannot open TFDS dataset '{name}' split '{split}' in {where}: {first}") from None
    self.fields = dict(fields)
    self.translation_languages = ()  # the languages of a `translations` field ({language: text})
    if "translations" in self.fields:
      feature = builder.info.features
      try:
        for key in self.fields["translations"].split("/"):
          feature = feature[key]
        self.translation_languages = tuple(sorted(feature.keys()))
      except (KeyError, TypeError, AttributeError):
        raise ValueError(f"data: TFDS dataset '{name}' has no feature '{self.fields['translations']}' of texts by "
                         "language (data.fields.translations)") from None
    self.class_names = ()
    self.convert = None  # record -> record, applied last (a dataset's own annotations made generic)
    if "label" in self.fields:
      feature = builder.info.features
      try:
        for key in self.fields["label"].split("/"):
          feature = feature[key]
      except (KeyError, TypeError):
        raise ValueError(f"data: TFDS dataset '{name}' has no feature '{self.fields['label']}' (data.fields.label)") \
            from None
      self.class_names = tuple(getattr(feature, "names", None) or ())
    self.question_types = ()
    if "questions" in self.fields:  # a Sequence of {type, question, answer}: the types' names
      feature = builder.info.features
      try:
        for key in self.fields["questions"].split("/"):
          feature = feature[key]
        feature = feature.feature["type"]
      except (KeyError, TypeError, AttributeError):
        raise ValueError(f"data: TFDS dataset '{name}' has no feature '{self.fields['questions']}' with "
                         "type, question and answer (data.fields.questions)") from None
      self.question_types = tuple(getattr(feature, "names", None) or ())

  def caption_groups(self, limit: int = 0):
    """-> (record indices [N], [captions of record i]): every record is one image; its captions are
    the `captions` field when there is one, else its caption."""
    indices = range(min(limit, len(self)) if limit > 0 else len(self))
    key = "captions" if "captions" in self.fields else "caption"
    groups = []
    for i in indices:
      record = self[i]
      if isinstance(record, BadRecord):
        groups.append([])
      else:
        groups.append(list(record[key]) if key == "captions" else [record["caption"]])
    return list(indices), groups

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
    for key in ("negative_captions", "captions"):
      if key in out:
        out[key] = [_as_text([c]) for c in out[key]]
    if "translations" in out:  # {language: caption}
      out["translations"] = {language: _as_text(text) for language, text in out["translations"].items()}
    if "label" in out:
      out["label"] = int(out["label"])
    if "questions" in out:
      out["questions"] = question_list(out["questions"], self.question_types)
    return self.convert(out) if self.convert else out


def question_list(questions, type_names=()) -> list[dict]:
  """A TFDS-decoded Sequence of {type, question, answer} (a dict of arrays) -> [{'type': name,
  'question': str, 'answer': str}]; an integer type is an index into `type_names`."""
  kinds = [type_names[int(t)] if type_names and not isinstance(t, (bytes, str)) else _as_text([t])
           for t in questions["type"]]
  return [dict(type=kind, question=_as_text([q]), answer=_as_text([a]))
          for kind, q, a in zip(kinds, questions["question"], questions["answer"])]


class SourceView:
  """A source seen through a change of its records (a subset, new captions, caption noise):
  everything else it offers (class names, prompts, references) is the wrapped source's own."""

  def __init__(self, source):
    self.source = source

  def __getattr__(self, name):
    if name == "source":  # not set yet (e.g. while unpickling): no recursion
      raise AttributeError(name)
    return getattr(self.source, name)

  def __len__(self):
    return len(self.source)


class DataFileError(ValueError):
  """A CSV/JSONL data file that cannot be read as one: the one-line message names the file and line."""


INDEX_BLOCK_BYTES = 1 << 24  # the index pass reads the file in blocks of this size (cut at a newline)
READ_BLOCK_ROWS = 4096  # passes over every row (labels, caption groups) read this many rows at once
_NEWLINE, _QUOTE = 10, 34


def _scan_lines(path: str, quotes: bool):
  """One binary pass over `path` -> (line starts [L + 1] int64, the file size last; lines with an odd
  number of '"' [L] bool (all False unless `quotes`); blank lines [L] bool). A line ends after '\\n'
  (or at the end of the file). Blank: nothing but '\\r'/'\\n' (a CSV), or only whitespace (JSONL)."""
  starts, odd, blank = [], [], []
  base, carry = 0, b""
  with open(path, "rb") as f:
    while True:
      data = f.read(INDEX_BLOCK_BYTES)
      block = carry + data if carry else data
      if data:  # whole lines only: the tail after the last newline waits for the next block
        cut = block.rfind(b"\n") + 1
        if cut == 0:
          carry = block
          continue
        block, carry = block[:cut], block[cut:]
      elif not block:
        break
      arr = np.frombuffer(block, np.uint8)
      ends = np.flatnonzero(arr == _NEWLINE) + 1
      if not ends.size or ends[-1] != len(block):
        ends = np.append(ends, len(block))
      begins = np.concatenate([[0], ends[:-1]])
      starts.append(begins + base)
      if quotes:
        at = np.flatnonzero(arr == _QUOTE)
        odd.append(np.diff(np.searchsorted(at, np.concatenate([[0], ends]))) % 2 == 1)
      else:
        odd.append(np.zeros(len(ends), bool))
      empty = np.zeros(len(ends), bool)
      # Only short lines can be blank; they are checked one by one (few in any real file).
      for k in np.flatnonzero(ends - begins <= 8):
        line = block[begins[k]:ends[k]]
        empty[k] = not (line.rstrip(b"\r\n") if quotes else line.strip())
      blank.append(empty)
      base += len(block)
      if not data:
        break
  if not starts:
    return np.zeros(1, np.int64), np.zeros(0, bool), np.zeros(0, bool)
  return (np.append(np.concatenate(starts), base).astype(np.int64), np.concatenate(odd), np.concatenate(blank))


def _csv_row_lines(f, line_starts, first: int) -> int:
  """How many lines, from line `first` of binary file `f`, the csv module reads as one row."""
  f.seek(int(line_starts[first]))
  used = 0

  def lines():
    nonlocal used
    for _ in range(first, len(line_starts) - 1):
      used += 1
      yield f.readline().decode("utf-8", errors="surrogateescape")

  try:
    next(csv.reader(lines()), None)
  except csv.Error:
    return 1  # unparseable: the line alone is the row, a bad record when read
  return max(used, 1)


class FileListSource:
  """Rows of (image path, caption[, label]) from a CSV (with header) or JSONL file, read lazily.

  Construction reads the file once in binary and keeps the byte offset of every row (int64 [N + 1])
  and, with `label_key`, the labels (int [N]); a row is parsed, and its image read, in `__getitem__`.
  Row boundaries: a JSONL row is a line. A CSV row is a line, unless the line has an odd number of
  '"' bytes: then it may open a quoted field with newlines in it, and the csv module decides how many
  lines the row takes (RFC 4180 quoting: a field with '"', ',' or newlines is quoted and its quotes
  doubled, so a row's lines hold an even number of quotes in all). Blank lines are skipped.

  `label_key`: the column of labels ('' = none), each an integer index into `class_names` or one of
  its names; `class_names` empty: integer labels stand alone, named ones define the classes (sorted).
  `caption_key` '': the file has no captions. A missing or empty header column, or a bad label, is an
  error here; a row that does not parse, has no image path or names a missing image is a
  `BadRecord` when read (the pipeline skips and counts it). Every message names the file and line."""

  def __init__(self, path: str, image_root: str = "", image_key: str = "image_path",
               caption_key: str = "caption", label_key: str = "", class_names: tuple = ()):
    if not os.path.exists(path):
      raise FileNotFoundError(f"data: file '{path}' does not exist")
    csv.field_size_limit(2**31 - 1)  # an over-long caption is a bad record (data.max_caption_chars)
    self.path = path
    self.root = image_root or os.path.dirname(os.path.abspath(path))
    self.image_key, self.caption_key = image_key, caption_key
    self.is_jsonl = path.endswith(".jsonl")
    line_starts, odd, blank = _scan_lines(path, quotes=not self.is_jsonl)
    continued = np.zeros(len(blank), bool)
    if not self.is_jsonl and odd.any():
      with open(path, "rb") as f:
        end = -1
        for k in np.flatnonzero(odd):
          if k <= end:
            continue  # inside the row of an earlier line
          used = _csv_row_lines(f, line_starts, int(k))
          continued[k + 1:k + used] = True
          end = k + used - 1
    row_lines = np.flatnonzero(~continued & ~blank)
    header = None
    if not self.is_jsonl and row_lines.size:
      header, row_lines = row_lines[0], row_lines[1:]
    if not row_lines.size:
      raise DataFileError(f"data: '{path}' has no rows")
    self.offsets = np.append(line_starts[row_lines], line_starts[-1]).astype(np.int64)
    # Line numbers, for messages: row i is on line i + 1 + shift, the shift stepping up only after
    # a header, blank lines or multi-line rows; kept as its steps, not per row.
    shift = row_lines - np.arange(len(row_lines))
    self._shift_rows = np.concatenate([[0], np.flatnonzero(np.diff(shift)) + 1]).astype(np.int64)
    self._shift = shift[self._shift_rows].astype(np.int64)
    if header is not None:
      text = self._read_bytes(int(line_starts[header]), int(self.offsets[0])).decode("utf-8", "surrogateescape")
      try:
        self.columns = next(csv.reader(io.StringIO(text, newline="")), [])
      except csv.Error as e:
        raise DataFileError(f"data: line {int(header) + 1} of '{path}' (the header): {e}") from None
    else:
      first = self._parse(0)
      if isinstance(first, BadRecord):
        raise DataFileError(f"data: {first.detail}")
      self.columns = list(first)
    for key, what in ((image_key, "image_key"), (caption_key, "caption_key"), (label_key, "label_key")):
      if key and key not in self.columns:
        raise DataFileError(f"data: '{path}' has no column '{key}' (data.{what}; columns: "
                            f"{', '.join(map(str, self.columns))})")
    self.has_captions = bool(caption_key)
    self.labels, self.class_names = None, tuple(class_names)
    if label_key:
      # A block of rows at a time, so the labels of a file of any length take one int64 per row. Rows
      # that do not parse get -1: they are bad records when read, never trained on.
      if not self.class_names:
        self.class_names = label_names(path, self._label_values(label_key), self.line)
      self.labels = np.full(len(self), -1, np.int64)
      values = self._label_values(label_key)
      while block := list(itertools.islice(values, READ_BLOCK_ROWS)):
        indices = np.array([i for i, _ in block])
        lines = self.line(indices).tolist()
        self.labels[indices] = read_labels(path, list(zip(lines, (v for _, v in block))), self.class_names)

  def line(self, index):
    """The line of the file row `index` starts on (1-based); an array of indices -> an array of lines."""
    step = np.searchsorted(self._shift_rows, index, side="right") - 1
    lines = np.asarray(index) + 1 + self._shift[step]
    return lines if np.ndim(index) else int(lines)

  def _read_bytes(self, start: int, end: int) -> bytes:
    with open(self.path, "rb") as f:  # opened per read: safe across grain's threads and processes
      f.seek(start)
      return f.read(end - start)

  def _parse(self, index: int, text: bytes | None = None):
    """Row `index` (its bytes `text`, else read) -> {column: value}, or a BadRecord naming the line."""
    if text is None:
      text = self._read_bytes(int(self.offsets[index]), int(self.offsets[index + 1]))
    text = text.decode("utf-8", errors="surrogateescape")  # bad text is a bad record later (not_utf8)
    where = f"line {self.line(index)} of '{self.path}'"
    if self.is_jsonl:
      try:
        row = json.loads(text)
      except ValueError as e:
        return BadRecord("corrupt_image", f"{where} is not valid JSON ({e})")
      return row if isinstance(row, dict) else BadRecord("corrupt_image", f"{where} is not a JSON object")
    try:
      records = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    except csv.Error as e:
      return BadRecord("corrupt_image", f"{where}: {e}")
    if len(records) != 1:
      return BadRecord("corrupt_image", f"{where} is not one CSV row ({len(records)} rows)")
    values = records[0]
    # As csv.DictReader: missing fields are None, extra ones are left out.
    return {key: values[k] if k < len(values) else None for k, key in enumerate(self.columns)}

  def _rows(self, start: int = 0):
    """Yields (index, {column: value} or BadRecord) of every row from `start`, reading blocks of rows."""
    for a in range(start, len(self), READ_BLOCK_ROWS):
      b = min(a + READ_BLOCK_ROWS, len(self))
      base = int(self.offsets[a])
      data = self._read_bytes(base, int(self.offsets[b]))
      for i in range(a, b):
        yield i, self._parse(i, data[int(self.offsets[i]) - base:int(self.offsets[i + 1]) - base])

  def _label_values(self, label_key: str):
    """Yields (index, its `label_key` value) of every row that parses."""
    for i, row in self._rows():
      if not isinstance(row, BadRecord):
        yield i, row.get(label_key)

  def _image_and_caption(self, index: int, row):
    """-> (the image's full path, caption) of a parsed row, or a BadRecord for a row without a path."""
    image = row.get(self.image_key)
    if not isinstance(image, str) or not image:
      return BadRecord("empty_image", f"line {self.line(index)} of '{self.path}' has no image path in "
                                      f"'{self.image_key}' (got {image!r})")
    caption = row.get(self.caption_key) if self.caption_key else None
    return os.path.join(self.root, image), "" if caption is None else str(caption)

  def caption_groups(self, limit: int = 0):
    """-> (indices of each image's first row [N], [captions of that image]): rows naming one image
    are one image with several captions, in first-seen order; `limit` > 0: the first `limit` images.
    Reads every row (a row that is a bad record is in no group)."""
    first, groups = {}, []
    for index, row in self._rows():
      pair = row if isinstance(row, BadRecord) else self._image_and_caption(index, row)
      if isinstance(pair, BadRecord):
        continue
      image_path, caption = pair
      if image_path not in first:
        if 0 < limit <= len(first):
          continue
        first[image_path] = len(groups)
        groups.append((index, []))
      groups[first[image_path]][1].append(caption)
    return [index for index, _ in groups], [captions for _, captions in groups]

  def __len__(self):
    return len(self.offsets) - 1

  def __getitem__(self, index):
    index = int(index)
    row = self._parse(index)
    pair = row if isinstance(row, BadRecord) else self._image_and_caption(index, row)
    if isinstance(pair, BadRecord):
      return pair
    image_path, caption = pair
    try:
      with open(image_path, "rb") as f:
        record = {"image": f.read()}
    except OSError as e:
      # No reason of its own: a new one would change the train state's bad-record counts.
      return BadRecord("corrupt_image", f"image '{image_path}' on line {self.line(index)} of '{self.path}' "
                                        f"cannot be read ({e.strerror or e})")
    if self.has_captions:
      record["caption"] = caption
    if self.labels is not None:
      record["label"] = int(self.labels[index])
    return record


def _as_int(value) -> int | None:
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  if isinstance(value, str) and value.strip().lstrip("-").isdigit():
    return int(value)
  return None


def _is_empty(value) -> bool:
  return value is None or (isinstance(value, str) and not value.strip())


def label_names(path: str, values, line_of) -> tuple:
  """The class names of a file whose labels come without `class_names`: its named labels, sorted;
  () when every label is an integer. `values`: (row index, label value) pairs, read in one pass;
  `line_of(index)`: the row's line, for the message."""
  names, first_int = set(), None
  for i, value in values:
    if _is_empty(value):
      continue  # reported with its line by read_labels
    if _as_int(value) is None:
      names.add(str(value).strip())
    elif first_int is None:
      first_int = i
  if names and first_int is not None:
    raise DataFileError(f"data: line {line_of(first_int)} of '{path}' has an integer label among class-name labels; "
                        "give data.class_names to say what the integers name")
  return tuple(sorted(names))


def read_labels(path: str, values: list, class_names: tuple) -> list[int]:
  """[(line, label value)] of file `path` -> int labels. A value is an integer (an index into
  `class_names` when given) or a class name; either must be a class of `class_names`."""
  index = {name: i for i, name in enumerate(class_names)}
  labels = []
  for line, value in values:
    if _is_empty(value):
      raise DataFileError(f"data: line {line} of '{path}' has no label")
    label = _as_int(value)
    if label is not None:
      if label < 0 or (class_names and label >= len(class_names)):
        raise DataFileError(f"data: label {label} on line {line} of '{path}' is not a class index (the class "
                            f"names are {len(class_names)}: 0..{len(class_names) - 1})" if class_names else
                            f"data: label {label} on line {line} of '{path}' is negative")
      labels.append(label)
    elif str(value).strip() in index:
      labels.append(index[str(value).strip()])
    else:
      raise DataFileError(f"data: label '{value}' on line {line} of '{path}' is not one of the "
                          f"{len(class_names)} class names")
  return labels


DEFAULT_SHAPES_DIR = os.path.join("data", "tfds")  # where `make demo` builds vlmjax_shapes


SHAPES_FIELDS = {"image": "image", "caption": "caption", "label": "label", "negative_captions": "negative_captions",
                 "long_caption": "long_caption", "questions": "questions", "objects": "objects",
                 "translations": "translations", "edit": "edit"}


def _shapes_regions(record: dict) -> dict:
  """The scene's `objects` as the dataset-independent `regions` and `triplets` (vlmjax.data.regions)."""
  if "objects" not in record:
    return record
  out = {k: v for k, v in record.items() if k != "objects"}
  from vlmjax.data import shapes
  out["regions"], out["triplets"] = shapes.regions_and_triplets(record["objects"])
  if "edit" in out:
    out["edit"] = {key: _as_text(value) for key, value in out["edit"].items()}
  return out


@registry.register("dataset", "vlmjax_shapes")
def shapes_source(data_config, split: str, default_fields=SHAPES_FIELDS):
  """The built-in dataset: its records carry the caption, the scene's questions and its objects'
  boxes, descriptions and relations (`regions`, `triplets`)."""
  from vlmjax.data import shapes  # registers the builder with TFDS
  data_dir = data_config.get("data_dir") or DEFAULT_SHAPES_DIR
  shapes.build(data_dir, data_config.get("builder_config", "default"))
  name = f"vlmjax_shapes/{data_config.get('builder_config', 'default')}"
  fields = dict(data_config.get("fields") or default_fields)
  source = TfdsSource(name, split, data_dir, fields)
  source.convert = _shapes_regions
  source.class_names, source.prompts = shapes.CLASS_NAMES, shapes.zero_shot_prompts
  # Each language's zero-shot prompts (a function of the English class name) and captioning
  # references, and which language a generated caption is in.
  source.language_prompts = shapes.prompts_in
  source.reference_captions_in = lambda i, language: shapes.reference_captions(source.source[int(i)]["objects"],
                                                                               language)
  source.detect_language = shapes.detect_language
  # Composed image retrieval (version 1.3.0): record i's edit text; record i of '<split>_edited' is its target.
  source.edit_of = lambda i: _as_text(source.source[int(i)]["edit"]["text"])
  # Captioning references: every caption the generator could have written for record i's scene.
  source.reference_captions = lambda i: shapes.reference_captions(source.source[int(i)]["objects"])
  # What is in record i's scene, by name ('red circle'), and every name an object can have.
  source.scene_objects = lambda i: shapes.object_names(source.source[int(i)]["objects"])
  source.object_names = shapes.CLASS_NAMES
  return source


@registry.register("dataset", "vlmjax_shapes_vqa")
def shapes_vqa_source(data_config, split: str):
  """The built-in dataset as visual question answering: records without the caption, so a decoder
  trains on one of each scene's questions (`pipeline.Preprocess`), answering it."""
  return shapes_source(data_config, split, {k: v for k, v in SHAPES_FIELDS.items() if k != "caption"})


class ComposedTriplets(SourceView):
  """Composed image retrieval triplets as records: record i of `source` with its edit text as the
  caption and the image of record i of `targets` (the scene after the edit) as `target_image`. A
  target that is missing or unreadable makes the record a bad record (counted, skipped)."""

  def __init__(self, source, targets):
    super().__init__(source)
    self.targets = targets

  def __getitem__(self, index):
    record = self.source[index]
    if isinstance(record, BadRecord):
      return record
    target = self.targets[index] if int(index) < len(self.targets) else BadRecord("corrupt_image", "no target")
    if isinstance(target, BadRecord):
      return BadRecord("corrupt_image", f"the target of record {int(index)}: {target.detail or target.reason}")
    return {**record, "caption": record["edit"]["text"], "target_image": target["image"]}


@registry.register("dataset", "vlmjax_shapes_cir")
def shapes_cir_source(data_config, split: str):
  """The built-in dataset's composed-retrieval triplets (version 1.3.0) as training records: the
  reference scene's image, its edit text as the caption, and the edited scene's image as
  `target_image` (`ComposedTriplets`)."""
  return ComposedTriplets(shapes_source(data_config, split), shapes_source(data_config, f"{split}_edited"))


class VideoClips(SourceView):
  """Clips stored as filmstrips (`image` [S, T·S, 3], the frames side by side): a record whose strip
  is not exactly `num_frames` frames of `frame_size` pixels (a frame missing, or an unreadable
  strip) is a bad record, counted and skipped as a corrupt image, never a clip of other length."""

  def __init__(self, source, num_frames: int, frame_size: int):
    super().__init__(source)
    self.num_frames, self.frame_size = num_frames, frame_size

  def __getitem__(self, index):
    record = self.source[index]
    if isinstance(record, BadRecord):
      return record
    image = record["image"]
    try:  # an array's shape, or an encoded image's header (nothing decoded twice)
      height, width = np.shape(image)[:2] if not isinstance(image, (bytes, bytearray)) else \
          Image.open(io.BytesIO(image)).size[::-1]
    except Exception as e:  # pylint: disable=broad-except  # PIL raises many types for bad bytes
      return BadRecord("corrupt_image", f"clip {int(index)}: {type(e).__name__}: {e}")
    if height != self.frame_size or width != self.num_frames * self.frame_size:
      return BadRecord("corrupt_image", f"clip {int(index)} is a {width}x{height} strip, not {self.num_frames} "
                                        f"frames of {self.frame_size}x{self.frame_size} (a missing frame)")
    return record


@registry.register("dataset", "vlmjax_shapes_video")
def shapes_video_source(data_config, split: str):
  """The built-in video dataset (`vlmjax.data.shapes_video`): clips as filmstrips with their captions;
  `class_names` are '<colour> <shape> moving <direction>', `num_frames` and `frame_size` its clips'."""
  from vlmjax.data import shapes_video  # registers the builder with TFDS
  data_dir = data_config.get("data_dir") or DEFAULT_SHAPES_DIR
  config = data_config.get("builder_config", "default")
  shapes_video.build(data_dir, config)
  clip = shapes_video.config_of(config)
  source = TfdsSource(f"vlmjax_shapes_video/{config}", split, data_dir,
                      {"image": "image", "caption": "caption", "label": "label",
                       "negative_captions": "negative_captions"})
  source.class_names, source.prompts = shapes_video.CLASS_NAMES, shapes_video.zero_shot_prompts
  return VideoClips(source, clip.num_frames, clip.image_size)


@registry.register("dataset", "tfds")
def tfds_source(data_config, split: str):
  return TfdsSource(data_config.tfds_name, split, data_config.get("data_dir", ""),
                    dict(data_config.get("fields") or {"image": "image", "caption": "caption"}))


def split_files(data_config, split: str, what: str, example: str) -> str:
  """`data.files[split]`; a KeyError naming the key, `what` it holds and an `example` value when unset."""
  path = data_config.get("files", {}).get(split) if "files" in data_config else None
  if not path:
    raise KeyError(f"config: 'data.files.{split}' is not set ({what} per split, e.g. "
                   f"--config.data.files.{split}={example})")
  return path


@registry.register("dataset", "csv")
@registry.register("dataset", "jsonl")
def file_list_source(data_config, split: str):
  path = split_files(data_config, split, "a CSV/JSONL path", f"/data/{split}.csv")
  return FileListSource(path, data_config.get("image_root", ""), data_config.get("image_key", "image_path"),
                        data_config.get("caption_key", "caption"), data_config.get("label_key", ""),
                        class_names_of(data_config))


def class_names_of(data_config) -> tuple:
  """The class names a data config gives: `class_names` (a list, or the name of a shipped set such
  as 'imagenet') or `class_names_file` (one per line), else ()."""
  from vlmjax.evals import classes
  names, path = data_config.get("class_names", ()), data_config.get("class_names_file", "")
  if names and path:
    raise ValueError("config: give data.class_names or data.class_names_file, not both")
  try:
    if path:
      return classes.read_class_names_file(path)
    return classes.class_names(names) if names else ()
  except ValueError as e:
    raise DataFileError(f"data: {e}") from None


def with_absolute_paths(config):
  """A copy of `config` whose data folders and files are absolute paths (the built-in dataset's
  default folder made explicit), so that a run's config.json finds its data from any folder."""
  config = config.copy_and_resolve_references()
  data = config.data
  if data.name == "vlmjax_shapes" and not data.data_dir:
    data.data_dir = DEFAULT_SHAPES_DIR
  absolute = lambda path: os.path.abspath(os.path.expanduser(path)) if path else path
  parts = [entry.data for entry in (data.get("mixture") or {}).values()  # before validation: any shape
           if hasattr(entry, "get") and hasattr(entry.get("data"), "get")]
  for data in [data] + [cfg.data for cfg in config.get("evals", {}).values() if cfg.get("data")] + parts:
    for key in ("data_dir", "image_root", "class_names_file", "subset_file", "caption_file", "pseudo_label_file"):  # only those set
      if data.get(key):  # (a locked config takes no new keys)
        data[key] = absolute(data[key])
    for split in list(data.get("files", {}).keys()):
      # Several files joined with '::' (parquet, array_record): each made absolute.
      data.files[split] = "::".join(absolute(path) for path in data.files[split].split("::"))
  return config


def make_source(data_config, split: str):
  """The split's source; its `caption_language` is the data config's (the language of its captions)."""
  source = registry.get("dataset", data_config.name)(data_config, split)
  source.caption_language = data_config.get("caption_language", "en")
  return source
