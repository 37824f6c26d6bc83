"""New captions for training records: `data.caption_file`.

A tab-separated file of `index<TAB>caption` lines (index: a record of the train split; lines
starting with '#' are comments) gives those records the listed caption in place of their own, as
`python -m vlmjax.gist` writes it for image-specific descriptions. Records not listed keep theirs.
"""
from vlmjax.data.sources import DataFileError, SourceView


class CaptionFileError(DataFileError):
  """A caption file that cannot be used: the one-line message names the file and the line."""


def read_captions(path: str, num_records: int) -> dict:
  """{record index: caption} of `path`; every index in [0, num_records), none twice, no caption empty."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise CaptionFileError(f"config: data.caption_file '{path}' does not exist (write it with "
                           "python -m vlmjax.gist)") from None
  except (OSError, UnicodeDecodeError) as e:
    raise CaptionFileError(f"config: data.caption_file '{path}' cannot be read: {e}") from None
  captions = {}
  for number, line in enumerate(lines, 1):
    if not line.strip() or line.startswith("#"):
      continue
    index, sep, caption = line.partition("\t")
    where = f"data.caption_file '{path}' line {number}"
    if not sep or not caption.strip():
      raise CaptionFileError(f"{where}: expected 'index<TAB>caption'")
    try:
      index = int(index)
    except ValueError:
      raise CaptionFileError(f"{where}: '{index}' is not a record index") from None
    if not 0 <= index < num_records:
      raise CaptionFileError(f"{where}: index {index} is outside the train split's {num_records} records")
    if index in captions:
      raise CaptionFileError(f"{where}: index {index} is listed twice")
    captions[index] = caption.strip()
  return captions


class Recaptioned(SourceView):
  """`source` whose records listed in `captions` ({index: caption}) carry that caption."""

  def __init__(self, source, captions: dict):
    super().__init__(source)
    self.captions = dict(captions)

  def __getitem__(self, index):
    record = self.source[index]
    caption = self.captions.get(int(index))
    if caption is None or not isinstance(record, dict):
      return record
    return {**record, "caption": caption}


def with_captions(source, data_config):
  """The training `source` with `data_config.caption_file`'s captions ('' or unset: itself)."""
  path = data_config.get("caption_file", "")
  return Recaptioned(source, read_captions(path, len(source))) if path else source


def write_captions(path: str, captions: dict, comment: str = ""):
  with open(path, "w", encoding="utf-8") as f:
    for line in comment.splitlines():
      f.write(f"# {line}\n")
    f.writelines(f"{int(i)}\t{c}\n" for i, c in sorted(captions.items()))
