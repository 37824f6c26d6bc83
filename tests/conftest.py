"""Shared fixtures. Every test sees 8 fake CPU devices (set before jax is imported anywhere)."""
import os

# For this process and the training processes tests start: the tests' programs are tiny, so XLA's
# compiling is most of their time, and its LLVM passes are most of that. Level 0 skips them: about a
# third less CPU time for the suite; the same operations run, only less optimised code computes them.
FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0"

os.environ["XLA_FLAGS"] = " ".join(
    f for f in (os.environ.get("XLA_FLAGS", ""), FAST_COMPILE_XLA_FLAGS,
                "--xla_force_host_platform_device_count=8") if f)
os.environ["JAX_PLATFORMS"] = "cpu"

import atexit  # noqa: E402
import contextlib  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
from unittest import mock  # noqa: E402

# One persistent compilation cache for the whole session, this process and the training processes
# tests start: many tests compile the same tiny train step, and on 2 cores compiling is most of
# their time. A fresh directory per session, so no run reads another's executables.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="vlmjax-test-xla-cache-")
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  """A TFDS data_dir holding the `tiny` builder config of the built-in dataset (~1 s to build)."""
  from vlmjax.data import shapes
  data_dir = tmp_path_factory.mktemp("tfds")
  shapes.build(str(data_dir), "tiny")
  return str(data_dir)


def tiny_config(data_dir: str, **overrides):
  """base_config() shrunk to a model and data that train in well under a second per step on CPU."""
  from vlmjax.config import base_config, set_dotted
  c = base_config()
  c.seed = 0
  c.batch_size = 16
  c.total_steps = 10
  c.data.data_dir = data_dir
  c.data.builder_config = "tiny"
  c.data.num_threads = 1
  c.input = dict(image_size=32, max_text_len=16, crop_min=1.0, brightness=0.0)
  c.tokenizer.vocab_size = 128
  c.tokenizer.train_examples = 512
  c.model.image = dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2, pool="gap")
  c.model.text = dict(variant="mu", width=32, depth=1, mlp_dim=64, num_heads=2, max_len=16)
  c.model.embed_dim = 32
  c.objectives = dict(clip=dict(weight=1.0))
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 2
  c.mesh = dict(data=1, fsdp=1, tensor=1)
  c.checkpoint = dict(every_steps=0, keep=3, async_save=False)
  c.log_every_steps = 1
  c.progress_bar = False
  c.peak_flops_per_device = -1.0  # no MFU: measuring the matmul peak costs seconds per training process
  c.evals = dict()
  for key, value in overrides.items():
    set_dotted(c, key, value)
  return c


@pytest.fixture
def make_tiny_config(tiny_data_dir):
  return lambda **overrides: tiny_config(tiny_data_dir, **overrides)


@contextlib.contextmanager
def sigterm_after_step(step: int):
  """Inside the block, a training run in this process gets a real SIGTERM right after it logs `step`'s
  loss (sent by the process to itself, so it lands between exactly that step and the next, as a
  preemption notice arriving then would). Needs `log_every_steps` to divide `step`."""
  from vlmjax import metrics
  write = metrics.MetricWriter.write

  def write_then_signal(self, at, values):
    write(self, at, values)
    if at == step and "loss" in values:
      os.kill(os.getpid(), signal.SIGTERM)

  with mock.patch.object(metrics.MetricWriter, "write", write_then_signal):
    yield


def single_device_mesh():
  import jax
  from vlmjax import sharding
  return sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])


@pytest.fixture(scope="session")
def tiny_source(tiny_data_dir):
  """The tiny train split through the registered `vlmjax_shapes` source."""
  from vlmjax.data import sources
  return sources.make_source(tiny_config(tiny_data_dir).data, "train")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_source):
  from vlmjax.data.tokenizer import Tokenizer
  return Tokenizer.train((tiny_source[i]["caption"] for i in range(len(tiny_source))), 128)


@pytest.fixture
def no_compilation_cache():
  """For tests that time compilation: the session's persistent cache would answer instead."""
  import jax
  jax.config.update("jax_enable_compilation_cache", False)
  yield
  jax.config.update("jax_enable_compilation_cache", True)


# The files whose module fixtures run for a minute or more, first: `make test` hands whole files to its
# two workers in collection order, so a long file collected last would leave one worker idle at the end.
LONG_FILES = ("test_reliability.py", "test_multihost.py", "test_checkpoint_damage.py", "test_vlm.py",
              "test_export_predict.py", "test_sharding.py", "test_resume.py", "test_mixture.py", "test_gist.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONG_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: the rest keep their order
