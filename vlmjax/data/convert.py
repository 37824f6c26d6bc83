"""Converts any data vlmjax reads into sharded ArrayRecord files or webdataset tar shards.

  python -m vlmjax.data.convert --name csv --files /data/pairs.csv --out /data/pairs_ar \\
      --format array_record --shard_size 10000 --image_size 256 --workers 8
  python -m vlmjax.data.convert --folder photos/ --out /data/photos_wds --format webdataset

The input is a data spec as a config's `data` section gives it (`--name` csv, jsonl, webdataset,
parquet, array_record, tfds with `--files` and the `--*_key` flags; `--split` names the split the
files are), or `--folder DIR`: the images of DIR (and its subfolders) with the same-named `.txt`
files as captions. Each record's image is decoded, resized so that its shorter side is
`--image_size` (0: kept as it is; the aspect ratio always is) and encoded as JPEG (`--quality`);
its caption, label and other fields are carried over.

The output (`--out DIR`): shard k (`DIR/00000.array_record`, ... or `DIR/00000.tar`, ...) holds what
is good of input records [k·S, (k+1)·S) for S = `--shard_size`, so a shard's content depends only
on k and the input. An ArrayRecord record is the msgpack dict `vlmjax.data.columnar` reads
(`image`: JPEG bytes, `caption`, `label`, ..., `key`); a tar sample is `KEY.jpg`, `KEY.txt` (the
caption) and `KEY.json` (the caption, the label and the other fields) as img2dataset writes it,
with KEY the input record's index. Read them back with `data.name='array_record'`,
`files.train='DIR/*.array_record'`, or `data.name='webdataset'`, `files.train='DIR/{00000..0000N}.tar'`
(`fields={'label': 'label'}` for labels). Class names, when the input has them, go to
`DIR/class_names.txt` (`data.class_names_file`).

`--workers N` processes each write whole shards. A shard is written under a temporary name
(`00000.tar.tmp`) and renamed when complete, and `DIR/convert.json` (the arguments, and each
complete shard's counts and size) is rewritten after each one, so a rerun of the same command skips
the complete shards and redoes the rest. Bad records (a corrupt or empty image, an empty caption,
text that is not UTF-8, an image that cannot be read) are dropped and counted by reason; the final
line reports them with the records written.

`--out` must be a new folder, an empty one, or a previous output of this command with the same input
and settings; anything else (a folder holding other files, another conversion) is a one-line error,
and nothing the command did not write is ever deleted or overwritten.
"""
import io
import json
import math
import multiprocessing
import os
import queue as queue_lib
import re
import shlex
import sys
import tarfile
import time

from absl import app, flags
import numpy as np
from PIL import Image

from vlmjax import cli
from vlmjax.data.pipeline import BadRecord, decode_image, record_problem

FORMATS = ("array_record", "webdataset")
EXTENSIONS = {"array_record": "array_record", "webdataset": "tar"}
MARKER = "vlmjax-convert-1"  # convert.json's "format": what says a folder is this command's output
REPORT = "convert.json"
CLASS_NAMES = "class_names.txt"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PROGRESS_EVERY = 16  # records between a worker's progress messages: few messages, a smooth bar
# What `--name` and the key flags set in the data spec (only the flags given: each source keeps its
# own defaults for the rest).
SPEC_FLAGS = ("name", "files", "split", "image_root", "image_key", "caption_key", "label_key",
              "class_names_file", "fields", "tfds_name", "data_dir")


class ConvertError(ValueError):
  """A conversion that cannot start: the one-line message names the flag or file."""


# --- The input ----------------------------------------------------------------------------------


class FolderSource:
  """The images of `folder` and its subfolders (sorted by path) with the text of the same-named
  `.txt` file beside each as its caption; an image without one is an 'empty_caption' bad record."""

  def __init__(self, folder: str):
    if not os.path.isdir(folder):
      raise ConvertError(f"convert: --folder '{folder}' is not a folder")
    self.paths = []
    for root, dirs, files in os.walk(folder):
      dirs.sort()
      self.paths.extend(os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not self.paths:
      raise ConvertError(f"convert: --folder '{folder}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    self.class_names = ()

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    path = self.paths[int(index)]
    text_path = os.path.splitext(path)[0] + ".txt"
    if not os.path.isfile(text_path):
      return BadRecord("empty_caption", f"image '{path}' has no caption file '{text_path}'")
    with open(text_path, encoding="utf-8", errors="surrogateescape") as f:  # bad text: a bad record
      caption = f.read().strip()
    with open(path, "rb") as f:
      return {"image": f.read(), "caption": caption}


def data_spec(values: dict) -> dict:
  """Flag values -> the input's spec: {'folder': abs path} or the data section's keys that were
  given, files and folders made absolute (so that a rerun from elsewhere is the same input)."""
  if values.get("folder"):
    if values.get("name"):
      raise ConvertError("convert: give --name (with --files) or --folder, not both")
    return {"folder": os.path.abspath(os.path.expanduser(values["folder"]))}
  if not values.get("name"):
    raise ConvertError("convert: give the input: --name csv|jsonl|webdataset|parquet|array_record|tfds "
                       "with --files, or --folder DIR")
  spec = {key: values[key] for key in SPEC_FLAGS if values.get(key) is not None}
  if spec["name"] not in ("tfds", "vlmjax_shapes") and not spec.get("files"):
    raise ConvertError(f"convert: --name {spec['name']} needs --files (a file, a glob or shard pattern, "
                       "several joined with '::')")
  spec.setdefault("split", "train")
  absolute = lambda path: os.path.abspath(os.path.expanduser(path))
  if spec.get("files"):
    spec["files"] = "::".join(absolute(p) if "://" not in p else p for p in spec["files"].split("::"))
  for key in ("image_root", "class_names_file", "data_dir"):
    if spec.get(key):
      spec[key] = absolute(spec[key])
  if spec.get("fields"):
    try:
      fields = json.loads(spec["fields"])
    except ValueError as e:
      raise ConvertError(f"convert: --fields is not JSON ({e}); give e.g. '{{\"label\": \"label\"}}'") from None
    if not isinstance(fields, dict):
      raise ConvertError("convert: --fields must be a JSON object (record key -> column or key path)")
    spec["fields"] = fields
  return spec


def make_input(spec: dict):
  """The random-access source `spec` (from `data_spec`) names."""
  if "folder" in spec:
    return FolderSource(spec["folder"])
  import ml_collections
  from vlmjax.data.sources import make_source
  config = {key: value for key, value in spec.items() if key not in ("split", "files")}
  if spec.get("files"):
    config["files"] = {spec["split"]: spec["files"]}
  try:
    return make_source(ml_collections.ConfigDict(config), spec["split"])
  except KeyError as e:  # unset keys, unknown names: their message is the first argument
    raise ConvertError(str(e.args[0]) if e.args else repr(e)) from None


# --- One record, one shard ----------------------------------------------------------------------


def _plain(value):
  """A record value as msgpack and JSON take it: numpy scalars and arrays as Python values."""
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (bytes, bytearray)):
    return bytes(value).decode("utf-8", errors="surrogateescape")
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def encode_image(image, image_size: int, quality: int) -> bytes:
  """Encoded bytes or pixels -> JPEG bytes, the shorter side resized to `image_size` (0: kept).
  Raises what PIL raises for bytes that are not an image."""
  image = decode_image(image)
  w, h = image.size
  if min(w, h) == 0:
    raise ValueError(f"the image is {w}x{h}")
  if image_size and min(w, h) != image_size:
    scale = image_size / min(w, h)
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
  out = io.BytesIO()
  image.save(out, format="JPEG", quality=quality)
  return out.getvalue()


def convert_record(source, index: int, image_size: int, quality: int):
  """-> {'image': JPEG bytes, the record's other keys} for input record `index`, or a BadRecord."""
  try:
    record = source[index]
  except OSError as e:  # an image or caption file gone or unreadable since the source was made
    return BadRecord("unreadable", f"record {index}: {type(e).__name__}: {e}")
  if isinstance(record, BadRecord):
    return record
  problem = record_problem(record)
  if problem:
    return BadRecord(problem.reason, f"record {index}: {problem.detail}")
  image = record.get("image")
  if image is None or (len(image) if isinstance(image, (bytes, bytearray)) else np.size(image)) == 0:
    return BadRecord("empty_image", f"record {index} has no image bytes or pixels")
  try:
    jpeg = encode_image(image, image_size, quality)
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many types for bad bytes
    return BadRecord("corrupt_image", f"record {index}: {type(e).__name__}: {e}")
  return {"image": jpeg, **{key: _plain(value) for key, value in record.items() if key != "image"}}


def shard_name(shard: int, fmt: str) -> str:
  return f"{shard:05d}.{EXTENSIONS[fmt]}"


def _tar_member(tar, name: str, data: bytes, mtime: float):
  info = tarfile.TarInfo(name)
  info.size, info.mtime, info.mode = len(data), mtime, 0o644
  tar.addfile(info, io.BytesIO(data))


def write_shard(source, shard: int, start: int, end: int, out: str, fmt: str, image_size: int, quality: int,
                key_width: int, report) -> dict:
  """Converts input records [start, end) into shard `shard` of `out` (a temporary file renamed when
  complete); `report(n)` is told of every n records done. -> the shard's entry of convert.json."""
  from vlmjax.data.columnar import write_array_record
  name = shard_name(shard, fmt)
  path, tmp = os.path.join(out, name), os.path.join(out, name + ".tmp")
  bad, examples, pending = {}, {}, [0]

  def converted():
    """The good records of the range, keyed; bad ones counted (with one example per reason)."""
    for index in range(start, end):
      record = convert_record(source, index, image_size, quality)
      pending[0] += 1
      if pending[0] >= PROGRESS_EVERY:
        report(pending[0])
        pending[0] = 0
      if isinstance(record, BadRecord):
        bad[record.reason] = bad.get(record.reason, 0) + 1
        examples.setdefault(record.reason, record.detail)
        continue
      yield {**record, "key": f"{index:0{key_width}d}"}

  try:
    if fmt == "array_record":
      written = write_array_record(tmp, converted())
    else:
      written, now = 0, time.time()
      with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for record in converted():
          key, caption = record["key"], record.get("caption")
          _tar_member(tar, f"{key}.jpg", record["image"], now)
          if caption is not None:
            _tar_member(tar, f"{key}.txt", caption.encode("utf-8", "surrogateescape"), now)
          meta = {k: v for k, v in record.items() if k != "image"}
          meta = json.dumps(meta, ensure_ascii=False).encode("utf-8", "surrogateescape")
          _tar_member(tar, f"{key}.json", meta, now)
          written += 1
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):  # our own half-written shard
      os.remove(tmp)
    raise
  report(pending[0])
  return {"name": name, "input": [start, end], "records": written, "bad": bad, "bad_examples": examples,
          "bytes": os.path.getsize(path)}


# --- Workers ------------------------------------------------------------------------------------

_worker = {}  # in each worker process: its source and its progress queue


def _start_worker(spec: dict, progress):
  # Each worker makes its own source from the spec: nothing unpicklable crosses processes, and it
  # works under any start method. A failure is raised by the first task, not here: a pool whose
  # initializer raises starts new workers forever.
  _worker["progress"] = progress
  try:
    _worker["source"] = make_input(spec)
  except Exception as e:  # pylint: disable=broad-except
    _worker["error"] = e


def _worker_write(args: tuple) -> dict:
  if "error" in _worker:
    raise _worker["error"]
  return write_shard(_worker["source"], *args, report=_worker["progress"].put)


# --- The output folder --------------------------------------------------------------------------


def _own_name(name: str, fmt: str) -> bool:
  """Whether `name` is a file this command writes in --out for `fmt` (or a webdataset index of one
  of its shards, which reading them writes beside them)."""
  ext = re.escape(EXTENSIONS[fmt])
  return name in (REPORT, REPORT + ".tmp", CLASS_NAMES) or \
      re.fullmatch(rf"\d{{5,}}\.{ext}(\.tmp|\.idx\.json)?", name) is not None


def read_previous(out: str, fmt: str, settings: dict) -> dict:
  """The shards already complete in `out` ({name: entry}) after checking that `out` is new, empty
  or a previous output of this command with the same `settings`; else a ConvertError."""
  if not os.path.exists(out):
    return {}
  if not os.path.isdir(out):
    raise ConvertError(f"convert: --out '{out}' is a file, not a folder")
  names = sorted(os.listdir(out))
  if not names:
    return {}
  previous = None
  try:
    with open(os.path.join(out, REPORT), encoding="utf-8") as f:
      previous = json.load(f)
  except (OSError, ValueError):
    pass
  if not isinstance(previous, dict) or previous.get("format") != MARKER:
    raise ConvertError(f"convert: --out '{out}' holds files ('{names[0]}', ...) but no {REPORT} of this "
                       "command; give a new or empty folder")
  foreign = next((name for name in names if not _own_name(name, fmt)), None)
  if foreign is not None:
    raise ConvertError(f"convert: --out '{out}' holds '{foreign}', which this command does not write "
                       f"(as --format {fmt}); give a new or empty folder")
  for key, value in settings.items():
    if previous.get("settings", {}).get(key) != value:
      raise ConvertError(f"convert: --out '{out}' holds a conversion with other settings ({key}: "
                         f"{json.dumps(previous.get('settings', {}).get(key))} there, {json.dumps(value)} now); "
                         "rerun it as it was, or give a new folder")
  complete = {}
  for name, entry in (previous.get("shards") or {}).items():
    path = os.path.join(out, name)
    # A shard counts as complete only as convert.json recorded it: a file changed since is redone.
    if os.path.isfile(path) and os.path.getsize(path) == entry.get("bytes"):
      complete[name] = entry
  return complete


def _write_json(path: str, document: dict):
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(document, f, indent=1, ensure_ascii=False)
  os.replace(path + ".tmp", path)


def _totals(shards: dict) -> tuple[int, dict]:
  written, bad = 0, {}
  for entry in shards.values():
    written += entry["records"]
    for reason, count in entry["bad"].items():
      bad[reason] = bad.get(reason, 0) + count
  return written, dict(sorted(bad.items()))


def describe_bad(bad: dict) -> str:
  """{'corrupt_image': 2, 'empty_caption': 1} -> '2 corrupt image, 1 empty caption' ('none')."""
  return ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in bad.items() if n) or "none"


# --- The conversion -----------------------------------------------------------------------------


def convert(spec: dict, out: str, fmt: str = "array_record", shard_size: int = 10000, image_size: int = 0,
            quality: int = 95, workers: int = 1, arguments: dict | None = None, progress: bool = True) -> dict:
  """Converts the input `spec` (see `data_spec`) into shards in `out` (the module docstring).
  -> convert.json's content: 'records_written', 'bad_records' ({reason: count}), 'shards', ..."""
  if fmt not in FORMATS:
    raise ConvertError(f"convert: --format '{fmt}' is not one of {', '.join(FORMATS)}")
  for flag, value, low in (("shard_size", shard_size, 1), ("image_size", image_size, 0), ("workers", workers, 1)):
    if value < low:
      raise ConvertError(f"convert: --{flag} {value} must be at least {low}")
  if not 1 <= quality <= 100:
    raise ConvertError(f"convert: --quality {quality} must be in 1..100 (JPEG quality; 95 keeps detail)")
  out = os.path.abspath(os.path.expanduser(out))
  if "folder" in spec and (out + os.sep).startswith(spec["folder"].rstrip(os.sep) + os.sep):
    raise ConvertError(f"convert: --out '{out}' is inside the input --folder '{spec['folder']}'")
  source = make_input(spec)
  total = len(source)
  settings = {"input": spec, "input_records": total, "format": fmt, "shard_size": shard_size,
              "image_size": image_size, "quality": quality}
  done = read_previous(out, fmt, settings)
  os.makedirs(out, exist_ok=True)
  shard_count = math.ceil(total / shard_size)
  key_width = max(9, len(str(total - 1)))
  todo = [(k, k * shard_size, min((k + 1) * shard_size, total)) for k in range(shard_count)
          if shard_name(k, fmt) not in done]
  class_names = [str(name) for name in getattr(source, "class_names", ()) or ()]
  document = {"format": MARKER, "settings": settings, "arguments": arguments or {},
              "shard_count": shard_count, "class_names": class_names}

  def save():
    shards = dict(sorted(done.items()))
    written, bad = _totals(shards)
    document.update(shards=shards, records_written=written, bad_records=bad, complete=len(shards) == shard_count)
    _write_json(os.path.join(out, REPORT), document)

  def record(entry: dict):
    """A shard is complete: it goes into convert.json at once, so a stopped run keeps it."""
    done[entry.pop("name")] = entry
    save()

  save()  # first: from here on --out is recognisably this command's, whatever stops the run
  if class_names:
    with open(os.path.join(out, CLASS_NAMES), "w", encoding="utf-8") as f:
      f.write("".join(f"{name}\n" for name in class_names))

  import tqdm
  skipped = sum(entry["input"][1] - entry["input"][0] for entry in done.values())
  bar = tqdm.tqdm(total=total, initial=skipped, unit="record", dynamic_ncols=True, file=sys.stderr,
                  disable=not progress, desc="convert")
  try:
    args = [(k, start, end, out, fmt, image_size, quality, key_width) for k, start, end in todo]
    if workers == 1 or len(todo) <= 1:
      for a in args:
        record(write_shard(source, *a, report=bar.update))
    else:
      context = multiprocessing.get_context()
      messages = context.Queue()
      with context.Pool(min(workers, len(todo)), initializer=_start_worker, initargs=(spec, messages)) as pool:
        results = pool.imap_unordered(_worker_write, args)
        remaining = len(args)
        while remaining:
          try:
            entry = results.next(timeout=0.1)
          except multiprocessing.TimeoutError:
            entry = None
          while True:  # the progress so far, then the shard that finished
            try:
              bar.update(messages.get_nowait())
            except queue_lib.Empty:
              break
          if entry is not None:
            record(entry)
            remaining -= 1
      bar.update(total - bar.n)  # progress messages still in the queue's pipe: every record is done
  finally:
    bar.close()
  document["shards_written"], document["shards_skipped"] = len(todo), shard_count - len(todo)
  return document


def main(argv):
  if len(argv) > 1:
    cli.fail("data.convert", f"convert: unexpected arguments: {' '.join(argv[1:])}")
  values = {name: FLAGS[name].value for name in FLAGS if name in OUR_FLAGS}
  try:
    spec = data_spec(values)
    result = convert(spec, FLAGS.out, FLAGS.format, FLAGS.shard_size, FLAGS.image_size, FLAGS.quality,
                     FLAGS.workers, arguments={"command": "python -m vlmjax.data.convert " + shlex.join(sys.argv[1:]),
                                               **values}, progress=FLAGS.progress)
  except (OSError, ValueError, KeyError) as e:  # data errors are ValueError/FileNotFoundError subclasses
    cli.fail("data.convert", e.args[0] if isinstance(e, KeyError) and e.args else e)
  kind = "ArrayRecord files" if FLAGS.format == "array_record" else "tar shards"
  print(f"Wrote {result['records_written']} records in {result['shard_count']} {kind} to {FLAGS.out} "
        f"({result['shards_written']} written now, {result['shards_skipped']} already complete); "
        f"dropped {sum(result['bad_records'].values())} bad records: {describe_bad(result['bad_records'])}")


OUR_FLAGS = (*SPEC_FLAGS, "folder", "out", "format", "shard_size", "image_size", "quality", "workers")

if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("name", None, "The input's data.name: csv, jsonl, webdataset, parquet, array_record, tfds.")
  flags.DEFINE_string("files", None, "The input's data.files of --split: a file, a glob or shard pattern, "
                      "several joined with '::'.")
  flags.DEFINE_string("split", None, "The split --files are (default 'train'; for tfds, the split read).")
  flags.DEFINE_string("image_root", None, "csv/jsonl: the folder image paths are relative to.")
  flags.DEFINE_string("image_key", None, "The column or key of the image (path).")
  flags.DEFINE_string("caption_key", None, "The column or key of the caption ('' = no captions).")
  flags.DEFINE_string("label_key", None, "The column or key of class labels.")
  flags.DEFINE_string("class_names_file", None, "The class names of the labels, one per line.")
  flags.DEFINE_string("fields", None, "More record keys, as JSON: record key -> column or key path.")
  flags.DEFINE_string("tfds_name", None, "tfds: the dataset's name.")
  flags.DEFINE_string("data_dir", None, "tfds: the folder the dataset is prepared in.")
  flags.DEFINE_string("folder", None, "Instead of --name: a folder of images with same-named .txt captions.")
  flags.DEFINE_string("out", None, "The folder to write the shards into (new, empty, or this command's "
                      "previous output to resume).", required=True)
  flags.DEFINE_enum("format", "array_record", list(FORMATS), "The shards' format.")
  flags.DEFINE_integer("shard_size", 10000, "Input records per shard (bad ones are dropped).")
  flags.DEFINE_integer("image_size", 0, "The shorter image side after resizing (0: keep the size).")
  flags.DEFINE_integer("quality", 95, "JPEG quality of the re-encoded images.")
  flags.DEFINE_integer("workers", 1, "Processes writing shards in parallel.")
  flags.DEFINE_boolean("progress", True, "Show a progress bar over records on stderr.")
  app.run(main, flags_parser=cli.flags_parser("data.convert"))
