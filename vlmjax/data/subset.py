"""A training split reduced to a subset of its records: `data.subset_file`.

The file lists record indices of the train split, one per line (lines starting with '#' are
comments), as `python -m vlmjax.select_data` writes it. Training then reads only those records, in
the file's order before shuffling, and an epoch is the subset.
"""
import numpy as np

from vlmjax.data.sources import DataFileError, SourceView


class SubsetError(DataFileError):
  """A subset file that cannot be used: the one-line message names the file and the line."""


def read_indices(path: str, num_records: int) -> np.ndarray:
  """The indices in `path`, int64 [n]: every one in [0, num_records), none twice, at least one."""
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise SubsetError(f"config: data.subset_file '{path}' does not exist (write it with "
                      "python -m vlmjax.select_data)") from None
  except OSError as e:
    raise SubsetError(f"config: data.subset_file '{path}' cannot be read: {e.strerror}") from None
  indices, seen = [], set()
  for number, line in enumerate(lines, 1):
    text = line.strip()
    if not text or text.startswith("#"):
      continue
    try:
      index = int(text)
    except ValueError:
      raise SubsetError(f"data.subset_file '{path}' line {number}: '{text}' is not a record index") from None
    if not 0 <= index < num_records:
      raise SubsetError(f"data.subset_file '{path}' line {number}: index {index} is outside the train split's "
                        f"{num_records} records")
    if index in seen:
      raise SubsetError(f"data.subset_file '{path}' line {number}: index {index} is listed twice")
    seen.add(index)
    indices.append(index)
  if not indices:
    raise SubsetError(f"data.subset_file '{path}' lists no record")
  return np.asarray(indices, np.int64)


class Subset(SourceView):
  """`source` seen through `indices`: record i is source[indices[i]]."""

  def __init__(self, source, indices):
    super().__init__(source)
    self.indices = np.asarray(indices, np.int64)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, index):
    return self.source[int(self.indices[int(index)])]


def with_subset(source, data_config):
  """The training `source` reduced to `data_config.subset_file`'s records ('' or unset: itself)."""
  path = data_config.get("subset_file", "")
  return Subset(source, read_indices(path, len(source))) if path else source


def write_indices(path: str, indices, comment: str = ""):
  """Writes `indices` one per line, after `comment` lines prefixed with '# '."""
  with open(path, "w") as f:
    for line in comment.splitlines():
      f.write(f"# {line}\n")
    f.writelines(f"{int(i)}\n" for i in indices)
