"""Name -> model / objective / dataset / evaluator / preprocess (the example maker for a model type) /
fit (params computed from the loaded ones before step 0: a closed-form fit, a weight mix) /
text_tower (a dual encoder's `model.text.kind`).

A config picks every piece by name, so the trainer wires things together without `if name == ...`
ladders. Modules register themselves with `@register(kind, name)`; `get` imports the packages that
hold the registrations the first time it is called.
"""
import importlib

KINDS = ("model", "objective", "dataset", "evaluator", "preprocess", "fit", "text_tower")
_ENTRIES = {kind: {} for kind in KINDS}
_PACKAGES = ("vlmjax.models", "vlmjax.objectives", "vlmjax.data.sources", "vlmjax.data.columnar",
             "vlmjax.data.webdataset", "vlmjax.data.pipeline", "vlmjax.evals", "vlmjax.projector_fit",
             "vlmjax.weight_mix")
_loaded = False


class RegistryError(KeyError):
  """An unknown name: the message names the kind and the known names."""

  def __str__(self):
    return self.args[0]


def register(kind: str, name: str):
  """Decorator: `@register('objective', 'clip')` makes `get('objective', 'clip')` return the object."""
  if kind not in _ENTRIES:
    raise ValueError(f"unknown registry kind '{kind}'; known: {', '.join(KINDS)}")

  def decorator(obj):
    if name in _ENTRIES[kind] and _ENTRIES[kind][name] is not obj:
      raise ValueError(f"{kind} '{name}' is registered twice")
    _ENTRIES[kind][name] = obj
    return obj

  return decorator


def _load_all():
  global _loaded
  if not _loaded:
    for package in _PACKAGES:
      importlib.import_module(package)
    _loaded = True


def names(kind: str) -> list[str]:
  _load_all()
  return sorted(_ENTRIES[kind])


def get(kind: str, name: str):
  _load_all()
  if name not in _ENTRIES[kind]:
    raise RegistryError(f"unknown {kind} '{name}'; known: {', '.join(sorted(_ENTRIES[kind]))}")
  return _ENTRIES[kind][name]
