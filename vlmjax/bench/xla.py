"""What XLA says about a compiled step: its memory, its cost, and the config to count FLOPs on.

XLA's cost analysis counts a loop's body once, so a step whose towers scan over their layers is
undercounted; `unrolled(config)` is the same computation with the layers in a Python loop, whose
count is complete. The compiler can add loops of its own (the TPU partitioner's windowed matmuls);
`while_loops` finds any left in a compiled program, so a count is used only once checked.
"""
import math
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


COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
               "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%[\w.-]+\s*=\s*(?P<type>.*?)\s(?P<op>" + "|".join(COLLECTIVES)
                          + r")(?P<start>-start)?\((?P<rest>.*)$")
_ARRAY = re.compile(r"\b(" + "|".join(sorted(DTYPE_BYTES, key=len, reverse=True)) + r"|f8\w*)\[([\d,]*)\]")


def _array_bytes(text: str) -> list[float]:
  """Bytes of each array type `f32[64,32]{...}` in an HLO result type (one, or a tuple's elements)."""
  sizes = []
  for dtype, dims in _ARRAY.findall(text):
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    sizes.append(count * DTYPE_BYTES.get(dtype, 1))
  return sizes


def _group_size(rest: str) -> int:
  """Devices in each of the collective's groups, from its `replica_groups` in any of XLA's three
  spellings: a mesh (`mesh['x'=8,'y'=4] {'x'}`), an iota list (`[4,8]<=[32]`) or explicit lists
  (`{{0,1},{2,3}}`). 1 when there is none (a collective-permute: pairs, not groups)."""
  groups = re.search(r"replica_groups=(mesh\[[^\]]*\]\s*\{[^}]*\}|\[[\d,]+\]<=\[[\d,]+\][^,]*|\{\{[\d,]*\})", rest)
  if not groups:
    return 1
  text = groups.group(1)
  if text.startswith("mesh"):
    sizes = dict((name, int(size)) for name, size in re.findall(r"'([^']+)'=(\d+)", text))
    chosen = re.search(r"\{([^}]*)\}", text).group(1)
    return math.prod(sizes[name] for name in re.findall(r"'([^']+)'", chosen)) if chosen else 1
  if text.startswith("["):
    return int(text[1:].split("]")[0].split(",")[-1])
  return len(text[2:-1].split(","))


def collectives(hlo_text: str) -> list[dict]:
  """Each collective in one device's compiled program, from its HLO text (`compiled.as_text()`;
  async pairs counted once, at their start):
  {'kind', 'group' (devices taking part), 'bytes' (the whole buffer: an all-gather's output, a
  reduce-scatter's input, an all-reduce's or all-to-all's operand, a permute's message), 'op_name'}."""
  found = []
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    kind, group, sizes = match["op"], _group_size(match["rest"]), _array_bytes(match["type"])
    if match["start"] and kind in ("all-gather", "collective-permute", "reduce-scatter") and len(sizes) > 1:
      sizes = sizes[len(sizes) // 2:]  # an async start's result is (operands, results)
    size = sum(sizes) * (group if kind == "reduce-scatter" else 1)
    op_name = re.search(r'op_name="([^"]*)"', match["rest"])
    found.append({"kind": kind, "group": group, "bytes": size, "op_name": op_name.group(1) if op_name else ""})
  return found


def ici_bytes(collective: dict) -> float:
  """Bytes one device sends over the interconnect for a collective, with the bandwidth-optimal
  algorithms (ring or torus): an all-gather, reduce-scatter or all-to-all moves (n-1)/n of the
  buffer, an all-reduce (a reduce-scatter then an all-gather) twice that, a permute its message."""
  n, size = collective["group"], collective["bytes"]
  if collective["kind"] == "collective-permute":
    return size
  share = size * (n - 1) / n
  return 2 * share if collective["kind"] == "all-reduce" else share


def collective_summary(found: list[dict]) -> dict:
  """{kind: {'count', 'bytes', 'ici_bytes'}} over `collectives(...)`, kinds that occur only."""
  summary = {}
  for c in found:
    if c["group"] <= 1 and c["kind"] != "collective-permute":
      continue  # a group of one device moves nothing
    entry = summary.setdefault(c["kind"], {"count": 0, "bytes": 0.0, "ici_bytes": 0.0})
    entry["count"] += 1
    entry["bytes"] += c["bytes"]
    entry["ici_bytes"] += ici_bytes(c)
  return summary
