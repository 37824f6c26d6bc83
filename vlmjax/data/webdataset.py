"""WebDataset tar shards as a random-access source (`data.name='webdataset'`).

The format (webdataset's, as img2dataset writes it and open_clip reads it): each shard is a plain
tar whose members are grouped into samples by key, the member path up to the first dot of its
basename: `00001.jpg`, `00001.txt` and `00001.json` are one sample with the extensions `jpg`, `txt`
and `json` (lower-cased; consecutive members with one key are one sample, as webdataset groups them).
`data.files.SPLIT` names the shards as open_clip does: brace patterns (`/data/{00000..00099}.tar`),
several joined with `::`. Only local, uncompressed tars: random access reads members by offset.

A record is
- `image`: the bytes of the first of the `jpg`, `jpeg`, `png`, `webp` members (decoded in the
  pipeline, so a corrupt one is a bad record there);
- `caption`: with `data.caption_key` 'caption' (the default) or 'txt', the `.txt` member; any other
  value is a key path ('a/b') into the `.json` member; '' means no captions (a classification set);
- each of `data.fields` (record key -> key path into the `.json` member, e.g. `{'label': 'label'}`),
  as the TFDS source's `fields`: `label` becomes an int, `caption`/`long_caption` text,
  `captions`/`negative_captions` lists of text.
A sample without an image member is a `BadRecord('empty_image')`; one whose caption or field is
missing (no member, unreadable JSON, no such key) is a `BadRecord('empty_caption')` whose detail
names the shard, the sample and what is missing. (No new reason: the per-reason counts are part of
the train state, whose shape old checkpoints fix.) The pipeline skips and counts them.

The index: each shard is scanned once with `tarfile` (headers only: the data is seeked over) into,
per sample, each extension's (byte offset of the member's data, size); reads then use `open`, `seek`
and `read`, never `tarfile`. The index is cached as JSON beside the shard (`SHARD.idx.json`) when that
folder is writable, else in `data.index_dir` (default ~/.cache/vlmjax/webdataset) under a name made
from the shard's absolute path, size and mtime; either holds the shard's size and mtime, so a
changed shard is indexed again. Files are written to a temporary name and renamed, so processes that
index one shard at once never read half an index.

Damage: a shard cut short (a failed download: a member's data past the end of the file, or no
end-of-archive marker) or with a damaged header is indexed up to the cut, less the last sample before
it (it may have lost members); a warning names the shard and what was lost, at each open, and the run
goes on. An empty (0-byte) shard is such a shard with no samples. A file that is not a tar at all is
a one-line error naming it: a wrong pattern is likelier than a download that wrote something else.
Missing shards are a one-line error naming the pattern and the first missing path.
"""
import bisect
import concurrent.futures
import hashlib
import json
import logging
import os
import tarfile

import numpy as np

from vlmjax import registry
from vlmjax.data.pipeline import BadRecord

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_CAPTION_KEYS = ("caption", "txt")  # caption_key values that mean the `.txt` member
INDEX_FORMAT = "vlmjax-webdataset-index-1"
INDEX_SUFFIX = ".idx.json"
DEFAULT_INDEX_DIR = os.path.join("~", ".cache", "vlmjax", "webdataset")
BLOCK = tarfile.BLOCKSIZE


class ShardError(ValueError):
  """A shard list or shard that cannot be read: the one-line message names the pattern or file."""


def expand_patterns(text: str) -> list[str]:
  """'a/{0..2}.tar::b.tar' -> ['a/0.tar', 'a/1.tar', 'a/2.tar', 'b.tar'] (open_clip's convention)."""
  import braceexpand
  paths = []
  for pattern in text.split("::"):
    pattern = pattern.strip()
    if not pattern:
      continue
    if "://" in pattern or pattern.startswith("pipe:"):
      raise ShardError(f"data: webdataset shards must be local files (they are read by offset); "
                       f"'{pattern}' is a stream or a URL")
    expanded = list(braceexpand.braceexpand(pattern))
    missing = next((p for p in expanded if not os.path.isfile(p)), None)
    if missing is not None:
      raise ShardError(f"data: shard '{missing}' of pattern '{pattern}' does not exist "
                       f"({sum(not os.path.isfile(p) for p in expanded)} of its {len(expanded)} are missing)")
    paths.extend(expanded)
  return paths


def split_name(name: str) -> tuple[str, str]:
  """'dir/00001.seg.png' -> ('dir/00001', 'seg.png'): the key is the path up to the basename's first dot."""
  folder, base = os.path.split(name)
  stem, dot, ext = base.partition(".")
  return os.path.join(folder, stem) if folder else stem, ext.lower() if dot else ""


def _stat(path: str) -> dict:
  st = os.stat(path)
  return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def build_index(path: str) -> dict:
  """Scans the tar at `path` (headers only) -> the index (see the module docstring)."""
  stat = _stat(path)
  size = stat["size"]
  members, damaged = [], ""
  with open(path, "rb") as f:
    if f.read(2) == b"\x1f\x8b":
      raise ShardError(f"data: shard '{path}' is gzip-compressed; webdataset shards are read by offset, "
                       "so they must be plain tars (gunzip them)")
    f.seek(0)
    if size < BLOCK:  # empty or cut inside the first header: a failed download
      damaged = "it is empty" if size == 0 else f"it ends at byte {size}, inside the first header"
    else:
      try:
        tar = tarfile.open(fileobj=f, mode="r:")
      except tarfile.TarError as e:
        raise ShardError(f"data: shard '{path}' is not a tar file ({e})") from None
      try:
        for info in tar:
          if info.isfile():
            members.append((info.name, info.offset_data, info.size))
      except (tarfile.TarError, EOFError, OSError) as e:
        damaged = f"its headers stop after {len(members)} members ({e})"
      # A member whose data runs past the end: the file was cut inside it.
      complete = [m for m in members if m[1] + m[2] <= size]
      if len(complete) < len(members):
        damaged = damaged or f"member '{members[len(complete)][0]}' runs past its end"
        members = complete
      if not damaged:
        end = members[-1][1] + -(-members[-1][2] // BLOCK) * BLOCK if members else 0
        f.seek(end)
        if f.read(BLOCK) != bytes(BLOCK):  # a whole tar ends with zero blocks
          damaged = "it has no end-of-archive marker"
  samples = []  # [(key, {ext: [offset, size]})], consecutive members with one key are one sample
  for name, offset, length in members:
    key, ext = split_name(name)
    if not ext:
      continue  # webdataset skips members without an extension
    if not samples or samples[-1][0] != key:
      samples.append((key, {}))
    samples[-1][1].setdefault(ext, [offset, length])
  lost = {}
  if damaged:
    dropped = 1 if samples else 0
    samples = samples[:-1]  # the last sample before the cut may have lost members
    kept_end = max(o + n for o, n in samples[-1][1].values()) if samples else 0
    lost = {"reason": damaged, "samples_dropped": dropped, "bytes_lost": size - kept_end}
  extensions = sorted({ext for _, exts in samples for ext in exts})
  column = {ext: i for i, ext in enumerate(extensions)}
  offsets = [[-1] * len(extensions) for _ in samples]
  sizes = [[-1] * len(extensions) for _ in samples]
  for row, (_, exts) in enumerate(samples):
    for ext, (offset, length) in exts.items():
      offsets[row][column[ext]], sizes[row][column[ext]] = offset, length
  return {"format": INDEX_FORMAT, "shard": os.path.abspath(path), **stat, "keys": [k for k, _ in samples],
          "extensions": extensions, "offsets": offsets, "sizes": sizes, "lost": lost}


def _cache_path(path: str, stat: dict, index_dir: str) -> str:
  token = f"{os.path.abspath(path)}\0{stat['size']}\0{stat['mtime_ns']}".encode("utf-8", "surrogateescape")
  digest = hashlib.sha256(token).hexdigest()[:20]
  return os.path.join(os.path.expanduser(index_dir or DEFAULT_INDEX_DIR),
                      f"{os.path.basename(path)}.{digest}{INDEX_SUFFIX}")


def _read_index(index_path: str, stat: dict) -> dict | None:
  """The index at `index_path` if it is one for a shard of this size and mtime, else None."""
  try:
    with open(index_path, encoding="utf-8") as f:
      index = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or \
      index.get("size") != stat["size"] or index.get("mtime_ns") != stat["mtime_ns"]:
    return None
  return index


def _folder_writable(folder: str) -> bool:
  return os.access(folder, os.W_OK)


def _write_index(index: dict, index_path: str) -> bool:
  """Writes atomically (temporary file, then rename); False where the folder refuses."""
  tmp = f"{index_path}.tmp{os.getpid()}.{id(index)}"
  try:
    os.makedirs(os.path.dirname(index_path), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(index, f, separators=(",", ":"))
    os.replace(tmp, index_path)
    return True
  except OSError:
    try:
      os.remove(tmp)
    except OSError:
      pass
    return False


def load_index(path: str, index_dir: str = "") -> dict:
  """The cached index of the shard at `path` (beside it, else in `index_dir`), built and cached if
  there is none for its current size and mtime."""
  stat = _stat(path)
  beside, cached = path + INDEX_SUFFIX, _cache_path(path, stat, index_dir)
  for candidate in (beside, cached):
    index = _read_index(candidate, stat)
    if index is not None:
      return index
  index = build_index(path)
  if not (_folder_writable(os.path.dirname(os.path.abspath(path))) and _write_index(index, beside)):
    if not _write_index(index, cached):
      logging.warning("webdataset: cannot cache the index of '%s' (beside it or in '%s')", path, os.path.dirname(cached))
  return index


class Shard:
  """One shard's index in arrays: `offsets`/`sizes` int64 [samples, extensions], -1 where absent."""

  def __init__(self, path: str, index: dict):
    self.path = path
    self.keys = index["keys"]
    self.columns = {ext: i for i, ext in enumerate(index["extensions"])}
    shape = (len(self.keys), len(self.columns))
    self.offsets = np.asarray(index["offsets"], np.int64).reshape(shape)
    self.sizes = np.asarray(index["sizes"], np.int64).reshape(shape)
    self.lost = index.get("lost") or {}

  def __len__(self):
    return len(self.keys)

  def member(self, row: int, ext: str) -> tuple[int, int] | None:
    column = self.columns.get(ext)
    if column is None or self.offsets[row, column] < 0:
      return None
    return int(self.offsets[row, column]), int(self.sizes[row, column])


def _text(data: bytes) -> str:
  return data.decode("utf-8", errors="surrogateescape")  # bad UTF-8 is a bad record in the pipeline


def _json_path(document, path: str):
  for key in path.split("/"):
    document = document[key]
  return document


def _field_value(key: str, value):
  if key == "label":
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
      raise ValueError(f"label {value!r} is not an integer")
    return int(value)
  if key in ("captions", "negative_captions"):
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]
  return str(value) if key in ("caption", "long_caption") else value


class WebDatasetSource:
  """Samples of the shards `pattern` names, in shard order then tar order; see the module docstring."""

  def __init__(self, pattern: str, caption_key: str = "caption", fields: dict | None = None,
               index_dir: str = "", class_names: tuple = (), num_threads: int = 8):
    self.pattern = pattern
    paths = expand_patterns(pattern)
    if not paths:
      raise ShardError(f"data: the webdataset pattern '{pattern}' names no shard")
    self.fields = dict(fields or {})
    for key in ("image", "caption"):
      if key in self.fields:
        raise ShardError(f"data: webdataset takes its {key} from the sample's members, not data.fields.{key}"
                         + (" (set data.caption_key)" if key == "caption" else ""))
    self.caption_key = caption_key
    self.class_names = tuple(class_names)
    # Indexing is file-system bound (headers, seeks): shards are scanned in parallel.
    with concurrent.futures.ThreadPoolExecutor(max(1, min(num_threads, len(paths)))) as pool:
      indices = list(pool.map(lambda p: load_index(p, index_dir), paths))
    self.shards = [Shard(p, index) for p, index in zip(paths, indices)]
    for shard in self.shards:
      if shard.lost:
        logging.warning("webdataset: shard '%s' is damaged or cut short (%s): %d samples kept, %d dropped "
                        "before the cut, %d bytes lost", shard.path, shard.lost["reason"], len(shard),
                        shard.lost["samples_dropped"], shard.lost["bytes_lost"])
    self.starts = np.cumsum([0] + [len(s) for s in self.shards]).tolist()  # sample i is in shard bisect(starts, i) - 1
    if self.starts[-1] == 0:
      raise ShardError(f"data: the {len(paths)} shards of '{pattern}' hold no sample")

  def __len__(self):
    return self.starts[-1]

  def locate(self, index: int) -> tuple[Shard, int]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"webdataset: sample {index} of {len(self)}")
    s = bisect.bisect_right(self.starts, index) - 1
    return self.shards[s], index - self.starts[s]

  def _caption_from_json(self) -> bool:
    return bool(self.caption_key) and self.caption_key not in TEXT_CAPTION_KEYS

  def read(self, index: int, with_image: bool = True):
    """-> the record of sample `index`, or a BadRecord naming the shard and sample."""
    shard, row = self.locate(index)
    where = f"sample '{shard.keys[row]}' of shard '{shard.path}'"
    image_member = next((m for m in (shard.member(row, e) for e in IMAGE_EXTENSIONS) if m), None)
    if with_image and image_member is None:
      return BadRecord("empty_image", f"{where} has no {'/'.join(IMAGE_EXTENSIONS)} member")
    wants_json = self._caption_from_json() or bool(self.fields)
    record, document = {}, None
    # One open per read: no handles to share between grain's threads, none left open.
    with open(shard.path, "rb", buffering=0) as f:
      def member_bytes(member):
        f.seek(member[0])
        data = f.read(member[1])
        return data if len(data) == member[1] else None

      if with_image:
        record["image"] = member_bytes(image_member)
        if record["image"] is None:
          return BadRecord("corrupt_image", f"{where}: its image ends early (the shard changed since it was indexed?)")
      if self.caption_key in TEXT_CAPTION_KEYS:
        txt = shard.member(row, "txt")
        data = member_bytes(txt) if txt else None
        if data is None:
          return BadRecord("empty_caption", f"{where} has no txt member")
        record["caption"] = _text(data)
      if wants_json:
        member = shard.member(row, "json")
        data = member_bytes(member) if member else None
        if data is None:
          return BadRecord("empty_caption", f"{where} has no json member")
        try:
          document = json.loads(_text(data))
        except ValueError as e:
          return BadRecord("empty_caption", f"{where}: its json member is not JSON ({e})")
    wanted = dict(self.fields)
    if self._caption_from_json():
      wanted = {"caption": self.caption_key, **wanted}
    for key, path in wanted.items():
      try:
        record[key] = _field_value(key, _json_path(document, path))
      except (KeyError, TypeError, IndexError):
        what = "data.caption_key" if key == "caption" else f"data.fields.{key}"
        return BadRecord("empty_caption", f"{where}: its json has no '{path}' ({what})")
      except ValueError as e:
        return BadRecord("empty_caption", f"{where}: its json '{path}': {e} (data.fields.{key})")
    return record

  def __getitem__(self, index):
    return self.read(index)

  def caption_groups(self, limit: int = 0):
    """-> (sample indices [N], [captions of sample i]): each sample is one image with its caption
    (`captions` when data.fields has it); a bad sample has none. Images are not read."""
    indices = list(range(min(limit, len(self)) if limit > 0 else len(self)))
    key = "captions" if "captions" in self.fields else "caption"
    groups = []
    for i in indices:
      record = self.read(i, with_image=False)
      groups.append([] if isinstance(record, BadRecord) else
                    list(record[key]) if key == "captions" else [record["caption"]])
    return indices, groups


@registry.register("dataset", "webdataset")
def webdataset_source(data_config, split: str):
  from vlmjax.data.sources import class_names_of, split_files
  pattern = split_files(data_config, split, "webdataset shards", "'/data/{00000..00099}.tar'")
  return WebDatasetSource(pattern, data_config.get("caption_key", "caption"), dict(data_config.get("fields") or {}),
                          data_config.get("index_dir", ""), class_names_of(data_config))
