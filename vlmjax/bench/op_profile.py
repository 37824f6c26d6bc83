"""Where a CPU train step's time goes, op by op, in vlmjax (XLA) and in PyTorch, by the same categories.

vlmjax: `jax.profiler` traces the steps; XLA:CPU records each op it runs (a fusion, a dot, a copy)
under its HLO instruction name, which the compiled program's text maps to the JAX op it came from
(`metadata.op_name`: forward or backward, module path, primitive). PyTorch: `torch.profiler`, each
aten op's self time. Both are summed per category and divided by the steps profiled.

Op time is not wall time: XLA:CPU runs independent ops at once on its threads, and a PyTorch op uses
all intra-op threads. Each side's total is shown with its wall time per step.
"""
import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax

CATEGORIES = (
    "dense matmuls",       # patch embedding, attention projections, MLP, output projections
    "attention core",      # scores, softmax, weighted values
    "layer norms",
    "activation (GELU)",
    "loss",                # similarity logits and the softmax cross-entropy
    "optimizer",           # AdamW, gradient clipping, the step's finiteness check
    "copies, transposes",  # layout changes
    "other",               # residual adds, embeddings, biases, reductions
)
TORCH_ONLY = ("compiled kernels (Inductor)",)  # torch.compile's generated C++: fused elementwise ops

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%([\w.-]+)\s*=.*?\s([a-z][\w-]*)\(.*?op_name="([^"]*)"')


def hlo_ops(hlo_text: str) -> dict:
  """{instruction name: (opcode, op_name)} for every instruction with an op_name in an HLO module."""
  return {m[1]: (m[2], m[3]) for m in map(_INSTRUCTION.match, hlo_text.splitlines()) if m}


def xla_category(name: str, opcode: str, op_name: str) -> str:
  """The category of one XLA op, from its instruction name, opcode and JAX op_name."""
  primitive = op_name.rsplit("/", 1)[-1]
  if opcode in ("copy", "transpose") or name.startswith(("copy", "transpose")):
    return "copies, transposes"
  if "jvp(" not in op_name:  # after the gradient: the update
    return "optimizer"
  if "/core/" in op_name:
    return "attention core"
  model = re.search(r"jvp\((DualEncoder|VLM|LanguageModel)\)", op_name)
  if not model:
    return "loss"
  if "dot_general" in primitive or "conv" in primitive or opcode in ("dot", "convolution") or name.startswith("ynn"):
    return "dense matmuls"
  path = op_name[model.end():]
  if re.search(r"/(norm\w*|\w+_norm)/", path):
    return "layer norms"
  if "/mlp/" in path:
    return "activation (GELU)"
  return "other"


def torch_category(name: str, ancestors: tuple = ()) -> str:
  """The category of one PyTorch op by its name and the names of the ops and autograd nodes it ran
  under (innermost first): the similarity matmul under the step's `loss` record is the loss's."""
  n, above = name.lower(), " ".join(ancestors).lower()
  if n.startswith("## call compiledfxgraph"):
    return "compiled kernels (Inductor)"
  if "optimizer." in above or "clip_grad" in above or "optimizer" in n:
    return "optimizer"
  if "scaled_dot_product" in n or "scaleddotproduct" in above or "scaled_dot_product" in above:
    return "attention core"
  if "loss" in above or "logsoftmax" in above or "log_softmax" in n or "nll_loss" in n:
    return "loss"
  if re.search(r"aten::(mm|addmm|bmm|baddbmm|_?convolution\w*|mkldnn_convolution\w*)$", n):
    return "dense matmuls"
  if re.search(r"aten::(copy_|clone|contiguous|cat|_to_copy)$", n):
    return "copies, transposes"
  if "layer_norm" in n or "layernorm" in above:
    return "layer norms"
  if "gelu" in n or "gelu" in above:
    return "activation (GELU)"
  return "other"


def profile_xla(run, hlo_text: str, steps: int) -> dict:
  """Traces `run(steps)` -> {'per_step_ms': {category: ms}, 'ops_ms': total op time per step,
  'top': the 15 costliest ops [(name, category, op_name, ms per step)]}."""
  ops = hlo_ops(hlo_text)
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      run(steps)
    (path,) = glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_op = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and event.get("name") in ops:
      per_op[event["name"]] += event.get("dur", 0.0) / 1e3 / steps
  categories = collections.Counter()
  top = []
  for name, ms in per_op.most_common():
    opcode, op_name = ops[name]
    category = xla_category(name, opcode, op_name)
    categories[category] += ms
    if len(top) < 15:
      top.append((name, category, op_name, ms))
  return {"per_step_ms": {c: categories.get(c, 0.0) for c in CATEGORIES}, "ops_ms": sum(per_op.values()),
          "top": top}


def profile_torch(run, steps: int) -> dict:
  """Profiles `run(steps)` (PyTorch, CPU) -> the same fields as `profile_xla`, by each op's self time,
  categorised with the ops and autograd nodes it ran under."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
    run(steps)
  categories, per_op = collections.Counter(), collections.Counter()
  for event in profiler.events():
    ms = event.self_cpu_time_total / 1e3 / steps
    if ms <= 0:
      continue
    ancestors, parent = [], event.cpu_parent
    while parent is not None:
      ancestors.append(parent.name)
      parent = parent.cpu_parent
    category = torch_category(event.name, tuple(ancestors))
    categories[category] += ms
    per_op[(event.name, category)] += ms
  top = [(name, category, "", ms) for (name, category), ms in per_op.most_common(15)]
  return {"per_step_ms": {c: categories.get(c, 0.0) for c in CATEGORIES + TORCH_ONLY}, "ops_ms": sum(per_op.values()),
          "top": top}
