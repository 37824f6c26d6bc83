"""vlmjax.cpu_memory: a CPU-only run keeps freed memory, so a step's large temporaries are not
page-faulted in again every step."""
import subprocess
import sys

import pytest

from vlmjax import cpu_memory

# Allocates and frees a 256 MB block five times, touching every page, and prints the minor page
# faults of the last round (what each train step pays for XLA's temporaries without the setting).
FAULTS = """
import ctypes, resource, sys
from vlmjax import cpu_memory
applied = cpu_memory.retain_freed_memory() if sys.argv[1] == "retain" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(256 * 2**20)  # plain malloc, as XLA's allocator (numpy asks for huge pages)
  ctypes.memset(block, 1, 256 * 2**20)
  libc.free(block)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(applied, faults)
"""


def _faults(mode, env):
  out = subprocess.run([sys.executable, "-c", FAULTS, mode], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  return out[0] == "True", int(out[1])


def test_cpu_only_reads_jax_platforms():
  assert cpu_memory.cpu_only({"JAX_PLATFORMS": "cpu"})
  assert cpu_memory.cpu_only({"JAX_PLATFORMS": " cpu "})
  assert not cpu_memory.cpu_only({"JAX_PLATFORMS": "cuda,cpu"})
  assert not cpu_memory.cpu_only({"JAX_PLATFORMS": "tpu"})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retained_memory_is_not_faulted_in_again():
  env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
  applied, faults = _faults("retain", env)
  _, faults_default = _faults("default", env)
  assert applied
  assert faults_default > 50_000  # 65,536 pages of 4 KiB: glibc gave the block back to the kernel
  assert faults < 1_000, faults  # the freed block was reused
  # An accelerator run is left as it is.
  applied, _ = _faults("retain", {**env, "JAX_PLATFORMS": "cuda"})
  assert not applied
