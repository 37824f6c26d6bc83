"""On a CPU-only run, keep the memory XLA frees for the next step (glibc's malloc).

XLA:CPU allocates a step's temporaries as one block (1.46 GB for `configs/bench_vits16.py`'s step)
and frees it when the step ends. glibc serves a block that large with mmap and gives it back to the
kernel on free, so every step page-faults its temporaries in again: 360k page faults and ~0.8 CPU-s
of kernel time per step there, about a sixth of the step's CPU time. With one malloc arena (a
worker thread's own arena would still mmap a block this size), no mmap'd chunks and no trimming,
freed blocks stay in the heap and the next step reuses them, as tcmalloc and jemalloc do by default.
The process's resident memory stays at its peak instead of dropping between steps.

The settings only reach threads that have not allocated yet, so entry points call
`retain_freed_memory()` before JAX starts its backends: the benchmarks do, and `vlmjax.train` does
when its data is made in worker processes (`data.workers`). With the data made by threads of the
training process it does not: the kernel time the setting saves, those threads lose contending for
the one arena (benchmarks/README.md). Runs that use an accelerator are left as they are (host
threads then feed data, and one arena would serialise their allocations).
"""
import ctypes
import ctypes.util
import importlib.metadata
import os

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
ACCELERATOR_PLUGINS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")
retained = False  # whether retain_freed_memory() set glibc's malloc in this process (benchmark reports)


def cpu_only(environ=os.environ) -> bool:
  """Whether JAX will run on the CPU alone: JAX_PLATFORMS says only 'cpu', or, unset, no GPU or TPU
  plugin is installed. Decided without starting JAX's backends."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return {p.strip() for p in platforms.split(",")} == {"cpu"}
  names = (dist.metadata["Name"] or "" for dist in importlib.metadata.distributions())
  return not any(name.lower().startswith(ACCELERATOR_PLUGINS) for name in names)


def retain_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory (see the module docstring) when the run is CPU-only.
  -> whether it did (False: an accelerator run, or a C library without glibc's mallopt)."""
  if not cpu_only():
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl without mallopt)
    return False
  global retained
  # -1 as M_TRIM_THRESHOLD is SIZE_MAX: never trim.
  retained = all(mallopt(param, value) == 1 for param, value in
             ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))
  return retained
