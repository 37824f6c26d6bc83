"""New captions or labels for training records: `data.caption_file`, `data.pseudo_label_file`.

A tab-separated file of `index<TAB>value` lines (index: a record of the train split; lines starting
with '#' are comments) gives those records the listed value in place of their own:

- `data.caption_file`: `index<TAB>caption`, as `python -m vlmjax.gist` writes image-specific
  descriptions;
- `data.pseudo_label_file`: `index<TAB>class index`, as `python -m vlmjax.pseudo_label` writes
  pseudo-labels (the record's `pseudo_label`, apart from any annotated `label`; S3A trains on it).

Records not listed keep theirs.
"""
from vlmjax.data.sources import DataFileError, SourceView


class CaptionFileError(DataFileError):
  """A caption or label file that cannot be used: the one-line message names the file and the line."""


def read_indexed(path: str, num_records: int, key: str = "caption_file", tool: str = "python -m vlmjax.gist",
                 parse=str, value_name: str = "caption") -> dict:
  """{record index: parse(value)} of `path` (the config key `data.<key>`); every index in
  [0, num_records), none twice, no value empty or unparsable."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise CaptionFileError(f"config: data.{key} '{path}' does not exist (write it with {tool})") from None
  except (OSError, UnicodeDecodeError) as e:
    raise CaptionFileError(f"config: data.{key} '{path}' cannot be read: {e}") from None
  values = {}
  for number, line in enumerate(lines, 1):
    if not line.strip() or line.startswith("#"):
      continue
    index, sep, value = line.partition("\t")
    where = f"data.{key} '{path}' line {number}"
    if not sep or not value.strip():
      raise CaptionFileError(f"{where}: expected 'index<TAB>{value_name}'")
    try:
      index = int(index)
    except ValueError:
      raise CaptionFileError(f"{where}: '{index}' is not a record index") from None
    if not 0 <= index < num_records:
      raise CaptionFileError(f"{where}: index {index} is outside the train split's {num_records} records")
    if index in values:
      raise CaptionFileError(f"{where}: index {index} is listed twice")
    try:
      values[index] = parse(value.strip())
    except ValueError:
      raise CaptionFileError(f"{where}: '{value.strip()}' is not a {value_name}") from None
  return values


def read_captions(path: str, num_records: int) -> dict:
  """{record index: caption} of a caption file."""
  return read_indexed(path, num_records)


def read_labels(path: str, num_records: int) -> dict:
  """{record index: class index ≥ 0} of a label file."""
  def label(text):
    if int(text) < 0:
      raise ValueError(text)
    return int(text)
  return read_indexed(path, num_records, "pseudo_label_file", "python -m vlmjax.pseudo_label", label, "class index")


class Recaptioned(SourceView):
  """`source` whose records listed in `values` ({index: value}) carry that value under `key`."""

  def __init__(self, source, values: dict, key: str = "caption"):
    super().__init__(source)
    self.values, self.key = dict(values), key

  def __getitem__(self, index):
    record = self.source[index]
    value = self.values.get(int(index))
    if value is None or not isinstance(record, dict):
      return record
    return {**record, self.key: value}


def with_captions(source, data_config):
  """The training `source` with `data_config.caption_file`'s captions and `data_config.pseudo_label_file`'s
  pseudo-labels ('' or unset: none)."""
  path = data_config.get("caption_file", "")
  source = Recaptioned(source, read_captions(path, len(source))) if path else source
  path = data_config.get("pseudo_label_file", "")
  return Recaptioned(source, read_labels(path, len(source)), "pseudo_label") if path else source


def write_captions(path: str, values: dict, comment: str = ""):
  """Writes {index: caption or label} as a caption (or label) file, `comment` lines first."""
  with open(path, "w", encoding="utf-8") as f:
    for line in comment.splitlines():
      f.write(f"# {line}\n")
    f.writelines(f"{int(i)}\t{c}\n" for i, c in sorted(values.items()))
