"""How the package is put together: no import cycles, one batch spec for every config, the same
activation constraints in every apply, and a repo that stands on its own."""
import ast
import pathlib
import subprocess

import jax
import numpy as np
import pytest

from conftest import REPO, single_device_mesh, tiny_config
from vlmjax import batch_spec, config as config_lib, experiment, sharding
from vlmjax.data import pipeline, sources
from vlmjax.evals.common import Embedder

PACKAGE = REPO / "vlmjax"


def module_name(path: pathlib.Path, root: pathlib.Path = REPO) -> str:
  parts = path.relative_to(root).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path, modules: set, root: pathlib.Path = REPO) -> set:
  """The vlmjax modules a file imports, at its top or inside a function (lazy imports count)."""
  out = set()
  own = module_name(path, root)
  package = own if path.name == "__init__.py" else own.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative import
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      names = [f"{base}.{alias.name}" for alias in node.names] + [base]
    else:
      continue
    for name in names:
      # `from vlmjax.models import layers` imports the module vlmjax.models.layers; `from vlmjax.x
      # import f` the module vlmjax.x.
      while name and name not in modules:
        name = name.rpartition(".")[0]
      if name:
        out.add(name)
  out.discard(own)
  return out


def find_cycle(graph: dict) -> list | None:
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_no_import_cycles():
  """Module A imports module B (at the top or lazily in a function): the graph has no cycle. A
  package's __init__ importing its own submodules (to register them) is an edge like any other."""
  files = sorted(PACKAGE.rglob("*.py"))
  modules = {module_name(f) for f in files}
  graph = {module_name(f): imports_of(f, modules) - {m for m in modules if module_name(f).startswith(m + ".")}
           for f in files}
  assert len(graph) > 40 and "vlmjax.run" in graph["vlmjax.objectives.ntp"]  # the walk sees lazy imports too
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_finds_a_lazy_cycle(tmp_path):
  """The test above can fail: a lazy import closing a loop is found."""
  (tmp_path / "vlmjax").mkdir()
  (tmp_path / "vlmjax" / "a.py").write_text("from vlmjax import b\n")
  (tmp_path / "vlmjax" / "b.py").write_text("def f():\n  from vlmjax.a import g\n")
  files = sorted((tmp_path / "vlmjax").glob("*.py"))
  modules = {module_name(f, tmp_path) for f in files}
  graph = {module_name(f, tmp_path): imports_of(f, modules, tmp_path) for f in files}
  assert find_cycle(graph) == ["vlmjax.a", "vlmjax.b", "vlmjax.a"]


# --- one batch spec ------------------------------------------------------------------------------

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py"))


def _as_tiny_data(config, data_dir):
  """`config` reading the tiny built-in dataset, with a batch of 4 and no init sources."""
  tiny = tiny_config(data_dir)
  with config.unlocked():
    if config.data.name.startswith("vlmjax_shapes"):  # a view of the built-in set (questions, triplets) stays one
      tiny.data.name = config.data.name
    config.data = tiny.data
    config.batch_size = 4
    config.microbatches = 1
    config.init.workdir = ""
    config.init.also = {}
    config.mesh = dict(data=1, fsdp=1, tensor=1)
  return config


@pytest.mark.parametrize("name", CONFIGS)
def test_pipeline_synthetic_and_abstract_batches_agree(name, tiny_data_dir, tiny_tokenizer):
  """For every config: the batch the input pipeline makes, the benchmarks' synthetic batch and the
  abstract batch TPU sizing compiles have the same keys, shapes and dtypes."""
  config = _as_tiny_data(config_lib.load_file(str(REPO / "configs" / name)), tiny_data_dir)
  prompt = pipeline.prompt_ids(tiny_tokenizer, config.input)
  built = experiment.build(config, tiny_tokenizer.vocab_size, mesh=single_device_mesh(), objectives=False,
                           validate=False, prompt_len=len(prompt))
  source = sources.make_source(config.data, "train")
  made = next(iter(pipeline.train_dataset(source, built.preprocess(tiny_tokenizer), config.batch_size, seed=0,
                                          num_threads=1)))
  synthetic = built.synthetic_batch(tiny_tokenizer.vocab_size)
  abstract = built.abstract_batch()
  describe = lambda batch: {k: (tuple(np.shape(v)), np.dtype(v.dtype)) for k, v in batch.items()}
  assert describe(made) == describe(synthetic) == describe(abstract)
  assert set(built.sample_batch()) == set(built.model_fields())


def test_a_field_declared_twice_differently_is_refused():
  other = batch_spec.Field("text", lambda inp: (3,), "int32")
  with pytest.raises(ValueError, match="batch field 'text' is declared twice"):
    batch_spec.merge((batch_spec.TEXT,), (other,))


# --- activation constraints outside the train step ------------------------------------------------


def _sharding_constraints(hlo: str) -> list[str]:
  """The sharding-constraint ops of a lowered program (Shardy's, or GSPMD's custom call)."""
  return [line for line in hlo.splitlines() if "sdy.sharding_constraint" in line or "@Sharding" in line]


def test_an_evaluators_embedder_gets_the_activation_constraints(tiny_data_dir):
  """On 8 devices, the evaluators' image embedder is lowered with the activations' sharding
  constraints (the batch over the 8 data×fsdp ways), as the train step is; without the rules
  context the same apply would carry none."""
  assert jax.device_count() == 8
  config = tiny_config(tiny_data_dir, mesh=dict(data=2, fsdp=4, tensor=1))
  built = experiment.build(config, 64)
  params = built.init_state(0)[0]["params"]
  embedder = Embedder(built.model, params, built.mesh, 16, built.rules)
  images = sharding.global_batch(np.zeros((16, 32, 32, 3), np.float32), built.mesh)
  with embedder.use():
    constrained = _sharding_constraints(embedder._images.lower(params, images).as_text())  # pylint: disable=protected-access
  with jax.set_mesh(built.mesh):  # the mesh alone: no logical axis rules
    plain = _sharding_constraints(jax.jit(lambda p, x: built.model.apply({"params": p}, images=x)["image_embeds"])
                                  .lower(params, images).as_text())
  assert plain == []
  # One constraint per block input/output and attention/MLP activations; the batch split 8 ways.
  assert len(constrained) >= 4
  assert all('[{"data", "fsdp"}' in line or "devices=[8" in line for line in constrained), constrained[:3]


# --- the repo stands on its own ------------------------------------------------------------------


def test_nothing_refers_to_a_path_outside_the_repo():
  files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
  # Spelled in pieces, so this file does not hold the paths it looks for.
  outside = ("../" + "shared", "shared/" + "DESIGN", "DESIGN" + ".md", "OBJECTIVES" + ".md")
  hits = [f"{f}: {word}" for f in files if (REPO / f).is_file()
          for word in outside if word in (REPO / f).read_text(encoding="utf-8", errors="replace")]
  assert hits == []


def test_readme_is_a_reference_of_at_most_250_lines():
  assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
