"""What the timing commands (`vlmjax.bench`, `.open_clip`, `.step_time`) share: how they start, the
mistakes they report in one line, and a report's default name."""
import os
import re

from absl import app, flags
import jax
from ml_collections import config_flags

from vlmjax import cli, config as config_lib, registry
from vlmjax import cpu_memory

# A bad config, an unknown name, a bad flag value, a missing extra or file: one line, exit status 2.
ERRORS = (config_lib.ConfigError, registry.RegistryError, ImportError, ValueError, RuntimeError, OSError)


def run(program: str, main, define_flags):
  """Runs `main` as the command `vlmjax.<program>`: glibc's malloc keeps freed memory (on a CPU-only
  run; before JAX starts its backends), then the flags are defined (only here: importing a tool
  defines none, so it never clashes with vlmjax.train's --config) and parsed by absl."""
  cpu_memory.retain_freed_memory()
  define_flags()
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.flags_parser(program))


def config_name(flag: str = "config") -> str:
  """The file name, without '.py', of the config file given to the `flag` config flag."""
  return re.sub(r"\.py$", "", os.path.basename(config_flags.get_config_filename(flags.FLAGS[flag])))
