"""`python -m vlmjax.bench.compile`: slice names to TPU topologies, and (where libtpu is installed: `make
libtpu`) the real train step compiled for a TPU slice on this CPU machine, its report, and the
one-line failure when it does not fit."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, tiny_config
from vlmjax.bench import compile as compile_lib


@pytest.mark.parametrize("name, shape, chips, hosts, libtpu", [
    ("v5p-8", (2, 2, 1), 4, 1, "v5p:2x2x1"),
    ("v5p-64", (2, 4, 4), 32, 8, "v5p:2x4x4"),
    ("v5p-256", (4, 4, 8), 128, 32, "v5p:4x4x8"),
    ("v4-32", (2, 2, 4), 16, 4, "v4:2x2x4"),
    ("v5litepod-16", (4, 4), 16, 4, "v5e:4x4"),
    ("v6e-256", (16, 16), 256, 64, "v6e:16x16"),
    ("v5p:4x4x12", (4, 4, 12), 192, 48, "v5p:4x4x12"),
])
def test_slice_names(name, shape, chips, hosts, libtpu):
  topology = compile_lib.parse_topology(name)
  assert (topology.shape, topology.num_chips, topology.num_hosts, topology.libtpu_topology) == (
      shape, chips, hosts, libtpu)


def test_wrap_around_links():
  assert compile_lib.parse_topology("v5p-128").wrap == (True, True, True)   # 4x4x4: a full torus
  assert compile_lib.parse_topology("v5p-64").wrap == (False, False, False)
  assert compile_lib.parse_topology("v6e-256").wrap == (True, True, False)


@pytest.mark.parametrize("name, message", [
    ("v5p-63", "not a standard slice"), ("v9-8", "unknown TPU 'v9'"), ("v5p", "expected e.g. v5p-64"),
    ("v5p:4x4", "v5p slices have 3 dimensions"), ("v5p:4xAx4", "expected e.g. v5p:4x4x4")])
def test_bad_slice_names(name, message):
  with pytest.raises(compile_lib.CompileError, match=message):
    compile_lib.parse_topology(name)


def _has_libtpu() -> bool:
  try:
    compile_lib.find_libtpu()
    return True
  except compile_lib.CompileError:
    return False


needs_libtpu = pytest.mark.skipif(not _has_libtpu(), reason="libtpu is not installed (make libtpu)")


def _compile(tmp_path, config, topology, *args):
  json_path, config_path = tmp_path / "config.json", tmp_path / "config_from_json.py"
  json_path.write_text(config.to_json())
  config_path.write_text("import json\nimport ml_collections\n\n\ndef get_config():\n"
                         f"  with open({str(json_path)!r}) as f:\n    return ml_collections.ConfigDict(json.load(f))\n")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  return subprocess.run([sys.executable, "-m", "vlmjax.bench.compile", "--config", str(config_path), "--topology",
                         topology, "--json", str(tmp_path / "report.json"), *args],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=1200)


@needs_libtpu
def test_compiles_the_train_step_for_a_tpu_slice(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, batch_size=64, mesh=dict(data=1, fsdp=-1, tensor=1),
                       **{"precision.compute_dtype": "bfloat16", "model.image.remat": "full"})
  result = _compile(tmp_path, config, "v5p-8")
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["chips"] == 4 and report["device_kind"].startswith("TPU v5")
  assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and report["per_chip_batch"] == 16
  memory = report["memory"]
  assert 0 < memory["arguments"] < memory["total"] < memory["hbm"] and report["fits"]
  # The compiled step does more FLOPs than the model (remat recomputes the image tower's forward).
  assert 0 < report["model_flops_per_step"] < report["flops_per_step"]
  assert 0 < report["mfu"] < 1 and report["step_time_s"] > 0
  assert "memory per chip: total" in result.stdout and "estimated MFU" in result.stdout
  # FSDP over 4 chips: the params are all-gathered, and the step is never faster than its compute.
  assert report["collectives"]["all-gather"]["count"] > 0 and report["ici_time_s"] > 0
  assert report["step_time_s"] == max(report["compute_time_s"], report["ici_time_s"])
  assert "collectives: all-gather" in result.stdout and "estimated ICI time" in result.stdout


@needs_libtpu
def test_sweep_tabulates_candidates_and_picks_one(tiny_data_dir, tmp_path):
  """Remat 'none' against 'full' on a slice: full remat recomputes, so it counts more FLOPs; the
  fastest candidate is chosen; a bad value is a row with its error, not a crash."""
  config = tiny_config(tiny_data_dir, batch_size=64, mesh=dict(data=1, fsdp=-1, tensor=1),
                       **{"precision.compute_dtype": "bfloat16"})
  result = _compile(tmp_path, config, "v5p-8", "--sweep", "model.image.remat,model.text.remat=none|full|bogus",
                    "--markdown", str(tmp_path / "sweep.md"))
  assert result.returncode == 0, result.stderr[-2000:]
  table = json.loads((tmp_path / "report.json").read_text())
  none, full, bogus = table["rows"]
  ratio = lambda r: r["report"]["flops_per_step"] / r["report"]["model_flops_per_step"]
  assert ratio(none) < ratio(full)
  assert "'bogus' is not a remat policy" in bogus["error"]
  fastest = min((0, 1), key=lambda i: table["rows"][i]["report"]["step_time_s"])
  assert table["choice"] == fastest
  markdown = (tmp_path / "sweep.md").read_text()
  assert markdown.count("| **") == 1 and "image.remat=bogus" in markdown


def test_sweep_axes():
  from vlmjax.config import base_config  # pylint: disable=import-outside-toplevel
  config = base_config()
  candidates = compile_lib.parse_sweep(["model.image.remat=none|full", "mesh.fsdp,mesh.tensor=-1,1|4,2"], config)
  assert candidates == [{"model.image.remat": "none", "mesh.fsdp": -1, "mesh.tensor": 1},
                        {"model.image.remat": "none", "mesh.fsdp": 4, "mesh.tensor": 2},
                        {"model.image.remat": "full", "mesh.fsdp": -1, "mesh.tensor": 1},
                        {"model.image.remat": "full", "mesh.fsdp": 4, "mesh.tensor": 2}]
  for axes, message in ((["mesh.fsdp"], "expected key"), (["mesh.fsdp,mesh.tensor=1,2,3"], "3 values for 2 keys"),
                        (["mesh.fsdp=four"], "'mesh.fsdp' takes int"), (["nosuch.key=1"], "no section 'nosuch'")):
    with pytest.raises(compile_lib.CompileError, match=message):
      compile_lib.parse_sweep(axes, config)


@needs_libtpu
def test_a_step_that_does_not_fit_fails_in_one_line(tiny_data_dir, tmp_path):
  # A 2-billion-row token embedding: 64 B params, ~770 GB of params and Adam state over 4 chips.
  config = tiny_config(tiny_data_dir, **{"tokenizer.vocab_size": 2_000_000_000,
                                         "mesh": dict(data=1, fsdp=-1, tensor=1)})
  result = _compile(tmp_path, config, "v5p-8")
  assert result.returncode == 1, result.stderr[-2000:]
  # libtpu may log its own warnings first; vlmjax's error is the last line, and a single one.
  ours = [line for line in result.stderr.splitlines() if line.startswith("vlmjax.bench.compile")]
  assert len(ours) == 1 and ours[0].startswith("vlmjax.bench.compile: error: does not fit on v5p-8"), \
      result.stderr[-2000:]
  assert result.stderr.splitlines()[-1] == ours[0]


@needs_libtpu
def test_compiled_flops_are_counted_completely_on_a_large_slice(tiny_data_dir, tmp_path):
  """On v5p-64 (32 chips) the TPU partitioner turns FSDP matmuls into loops whose bodies XLA's cost
  analysis counts once (29% of this model's FLOPs went uncounted); the count is taken from a program
  without them. No remat: the compiled count is the model's own, which `vlmjax.flops` counts by hand
  (every matmul, 2 FLOPs per multiply-add, a train step 3 × forward)."""
  config = tiny_config(tiny_data_dir, batch_size=256, mesh=dict(data=1, fsdp=-1, tensor=1), **{
      "input.image_size": 64, "precision.compute_dtype": "bfloat16",
      "model.image": dict(variant="S/16", depth=2, pool="cls"), "model.text": dict(variant="S", depth=2, max_len=16)})
  result = _compile(tmp_path, config, "v5p-64")
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["loops_in_counted_program"] == 0 and report["chips"] == 32
  assert 1.0 <= report["flops_per_step"] / report["model_flops_per_step"] <= 1.02  # measured: 1.006
  assert f"{report['flops_per_step'] / report['model_flops_per_step']:.2f} × the model's" in result.stdout


def test_collectives_of_an_fsdp_step_match_a_hand_count():
  """A two-layer MLP with both kernels split over 8 devices (FSDP): the forward pass all-gathers
  each kernel once, so its all-gathers move exactly the kernels' bytes, in groups of 8."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from vlmjax.bench import xla  # pylint: disable=import-outside-toplevel

  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("fsdp",))
  split = NamedSharding(mesh, P("fsdp", None))

  def step(params, x):
    loss = lambda p: jnp.mean((jax.nn.gelu(x @ p["w1"]) @ p["w2"]) ** 2)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, jax.grad(loss)(params))

  params = {"w1": jax.ShapeDtypeStruct((256, 1024), jnp.float32, sharding=split),
            "w2": jax.ShapeDtypeStruct((1024, 256), jnp.float32, sharding=split)}
  x = jax.ShapeDtypeStruct((512, 256), jnp.float32, sharding=split)
  found = xla.collectives(jax.jit(step, out_shardings=split).lower(params, x).compile().as_text())
  forward = [c for c in found if c["kind"] == "all-gather" and "transpose(" not in c["op_name"]]
  assert sum(c["bytes"] for c in forward) == 2 * 256 * 1024 * 4 and {c["group"] for c in forward} == {8}
  summary = xla.collective_summary(found)
  assert summary["all-gather"]["ici_bytes"] == pytest.approx(summary["all-gather"]["bytes"] * 7 / 8)
  # The gradients are reduced across the 8 batch shards: at least the kernels' bytes.
  reduced = sum(summary.get(kind, {}).get("bytes", 0) for kind in ("all-reduce", "reduce-scatter", "all-to-all"))
  assert reduced >= 256 * 1024 * 4


@pytest.mark.parametrize("line, kind, group, size", [
    ("%ag = bf16[64,32]{1,0:T(8,128)(2,1)} all-gather(%c), channel_id=1, replica_groups=mesh['axis_0'=8,"
     "'axis_1'=4] {'axis_0','axis_1'}, dimensions={0}", "all-gather", 32, 64 * 32 * 2),
    ("%rs = f32[8,16]{1,0} reduce-scatter(%x), replica_groups=[4,8]<=[32], dimensions={0}, to_apply=%add",
     "reduce-scatter", 8, 8 * 16 * 4 * 8),
    ("%ar = (f32[], f32[64]{0}) all-reduce(%a, %b), replica_groups={{0,1},{2,3}}, to_apply=%add",
     "all-reduce", 2, 4 + 64 * 4),
    ("%ags = (bf16[4,8]{1,0}, bf16[32,8]{1,0}) all-gather-start(%p), replica_groups=[1,8]<=[8], dimensions={0}",
     "all-gather", 8, 32 * 8 * 2),
    ("%cp = s32[16]{0} collective-permute(%p), source_target_pairs={{0,1},{1,0}}", "collective-permute", 1, 64),
])
def test_collective_parsing(line, kind, group, size):
  """XLA's three spellings of replica groups, tuples, async starts and reduce-scatter's input size."""
  from vlmjax.bench import xla  # pylint: disable=import-outside-toplevel
  (found,) = xla.collectives(f"ENTRY %main {{\n  {line}\n  %done = f32[] all-gather-done(%ags)\n}}")
  assert (found["kind"], found["group"], found["bytes"]) == (kind, group, size)
