"""Every module of the package imports first: no import cycle depends on which module a user (or a
script: `from vlmjax.run import open_run`) imports before the others."""
import importlib
import pathlib
import sys

from conftest import REPO


def test_every_module_imports_as_the_first_one():
  modules = sorted(".".join(path.with_suffix("").relative_to(REPO).parts).removesuffix(".__init__")
                   for path in (pathlib.Path(REPO) / "vlmjax").rglob("*.py") if path.name != "__main__.py")
  # The dataset builders stay imported: TFDS registers a builder's name once per process.
  importlib.import_module("vlmjax.data.shapes_video")
  keep = {name: module for name, module in sys.modules.items() if name.startswith("vlmjax.data.shapes")}
  saved = {name: module for name, module in sys.modules.items() if name == "vlmjax" or name.startswith("vlmjax.")}
  failures = []
  try:
    for name in modules:
      for loaded in [k for k in sys.modules if (k == "vlmjax" or k.startswith("vlmjax.")) and k not in keep]:
        del sys.modules[loaded]
      try:
        importlib.import_module(name)
      except ImportError as e:
        failures.append(f"{name}: {e}")
  finally:
    for loaded in [k for k in sys.modules if k == "vlmjax" or k.startswith("vlmjax.")]:
      del sys.modules[loaded]
    sys.modules.update(saved)
  assert not failures, "\n".join(failures)
