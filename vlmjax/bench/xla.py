"""What XLA says about a compiled step: its memory, its cost, and the config to count FLOPs on.

XLA's cost analysis counts a loop's body once, so a step whose towers scan over their layers is
undercounted; `unrolled(config)` is the same computation with the layers in a Python loop, whose
count is complete. The compiler can add loops of its own (the TPU partitioner's windowed matmuls);
`while_loops` finds any left in a compiled program, so a count is used only once checked.
"""
import re

import ml_collections

from vlmjax import registry


def memory(compiled) -> dict:
  """Per-device bytes of a compiled step: {'argument_size', 'output_size', 'alias_size',
  'temp_size', 'generated_code_size', 'peak_memory'} (those the backend reports); {} if none."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
           "generated_code_size_in_bytes", "peak_memory_in_bytes")
  return {name.removesuffix("_in_bytes"): int(getattr(stats, name)) for name in names if hasattr(stats, name)}


def cost(compiled) -> dict:
  """XLA's cost analysis of one device's (SPMD-partitioned) program: 'flops', 'bytes accessed',
  'optimal_seconds' (TPU), ...; {} where the backend gives none."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis  # a list per device on older jax
  return dict(analysis or {})


def while_loops(compiled) -> int:
  """The number of `while` ops in a compiled program: 0 means its cost analysis counts every op."""
  return len(re.findall(r"\bwhile\(", compiled.as_text()))


def flops(compiled, num_devices: int) -> float:
  """XLA's FLOP count of a compiled step for all `num_devices` devices (NaN if it gives none)."""
  return num_devices * float(cost(compiled).get("flops", float("nan")))


def unrolled(config) -> ml_collections.ConfigDict:
  """A copy of `config` whose transformer stacks run unrolled: `scan` False in every tower of the
  model's `towers` registry and under every nested `scan` key of `config.model`; and whose ring
  losses (`distributed='ring'`, a loop over the hops) are the global form, the same logits
  computed in straight-line code."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for objective in config.get("objectives", {}).values():
      if objective.get("distributed") == "ring":
        objective.distributed = "global"

  def visit(section):
    for key in list(section.keys()):
      if key == "scan":
        section[key] = False
      elif hasattr(section[key], "keys"):
        visit(section[key])

  with config.unlocked():
    for tower in getattr(registry.get("model", config.model.name), "towers", {}):
      if tower in config.model:
        config.model[tower]["scan"] = False
    visit(config.model)
  return config
