"""How long a CSV file list takes to open, and the memory it keeps: `make_source` on a generated
file of `rows` rows (image paths that need not exist), then the first 100 `__getitem__`.

Memory is this process's resident set (psutil when installed, else /proc/self/status VmRSS): before
construction, after it, and the highest of samples taken every 5 ms while it runs.
"""
import csv
import os
import tempfile
import threading
import time

SPECIAL_EVERY = 100  # every 100th caption needs CSV quoting: a comma, quotes and a newline
READS = 100


def rss_bytes() -> int:
  """This process's resident memory, bytes."""
  try:
    import psutil  # pylint: disable=import-outside-toplevel
    return psutil.Process().memory_info().rss
  except ImportError:
    with open("/proc/self/status", encoding="ascii") as f:
      return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


class PeakRss:
  """Samples `rss_bytes()` on a thread while in the `with` block; `.peak` is the highest seen."""

  def __init__(self, every_s: float = 0.005):
    self.every_s, self.peak, self._stop = every_s, rss_bytes(), threading.Event()

  def _sample(self):
    while not self._stop.wait(self.every_s):
      self.peak = max(self.peak, rss_bytes())

  def __enter__(self):
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, rss_bytes())


def write_rows(path: str, rows: int):
  """A CSV of `rows` (image_path, caption) rows, written a block at a time."""
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["image_path", "caption"])
    for start in range(0, rows, 100_000):
      writer.writerows((f"images/{i // 1000:05d}/{i:08d}.jpg",
                        f'a "quoted", two-line\ncaption {i}' if i % SPECIAL_EVERY == 0 else
                        f"a photo of object number {i} on a plain background")
                       for i in range(start, min(start + 100_000, rows)))


def bench_data_startup(rows: int, folder: str = "") -> dict:
  """-> the timings and memory of opening a generated `rows`-row CSV with `sources.make_source`."""
  from vlmjax import config as config_lib  # pylint: disable=import-outside-toplevel
  from vlmjax.data import pipeline, sources  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory(dir=folder or None) as tmp:
    path = os.path.join(tmp, "pairs.csv")
    start = time.perf_counter()
    write_rows(path, rows)
    write_s = time.perf_counter() - start
    data = config_lib.base_config().data
    data.name, data.files = "csv", {"train": path}
    before = rss_bytes()
    with PeakRss() as peak:
      start = time.perf_counter()
      source = sources.make_source(data, "train")
      construct_s = time.perf_counter() - start
    after = rss_bytes()
    start = time.perf_counter()
    records = [source[i] for i in range(READS)]
    reads_s = time.perf_counter() - start
    assert len(source) == rows, (len(source), rows)
    return {"rows": rows, "file_bytes": os.path.getsize(path), "multi_line_rows": -(-rows // SPECIAL_EVERY),
            "write_s": write_s, "construct_s": construct_s, "first_reads": READS, "first_reads_s": reads_s,
            "first_reads_bad": sum(isinstance(r, pipeline.BadRecord) for r in records),
            "rss_before_bytes": before, "rss_after_bytes": after, "rss_peak_bytes": peak.peak,
            "extra_after_bytes": after - before, "extra_peak_bytes": peak.peak - before,
            "index_bytes": int(source.offsets.nbytes),
            "memory_from": "psutil" if _has_psutil() else "/proc/self/status VmRSS",
            "targets": {"construct_s": 10.0, "extra_bytes": 2**30}}


def _has_psutil() -> bool:
  try:
    import psutil  # pylint: disable=import-outside-toplevel,unused-import
    return True
  except ImportError:
    return False
