"""The benchmark: loss memory grows as each form's per-device size says, the train-step report holds
its fields with an analytic FLOP count that agrees with XLA's, and training logs MFU."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from vlmjax import flops, metrics
from vlmjax.bench import losses, report as bench_report, train_step, xla

EMBED_DIM = 256


@functools.cache
def temp_bytes(objective: str, distributed: str, batch_size: int, num_devices: int) -> int:
  """Per-device temporary bytes of the loss gradient, compiled only (the sizes cost no memory)."""
  memory = losses.loss_memory(objective, distributed, batch_size, EMBED_DIM, jax.devices()[:num_devices])
  return memory["temp_size"]


def growth(objective, distributed, runs):
  """Memory ratio from the first to the second (batch size, devices) run: one doubling of B."""
  return temp_bytes(objective, distributed, *runs[1]) / temp_bytes(objective, distributed, *runs[0])


ON_8 = [(2048, 8), (4096, 8)]       # fixed device count: the per-device batch b doubles with B
FIXED_B = [(2048, 4), (4096, 8)]    # fixed per-device batch b = 512: B doubles with the devices


def test_loss_memory_on_fixed_devices_global_quadratic_ring_not():
  """On 8 devices the global forms' [B, B] logits grow ×4 per doubling of B, and so do CLIP local's
  [b, B] rows (b = B / 8); the SigLIP ring keeps one [b, b] block plus the received [b, d] text
  shards, so it grows much less (×2 while B·d dominates, at most ×4 asymptotically)."""
  assert 3.5 <= growth("clip", "global", ON_8) <= 4.5
  assert 3.5 <= growth("siglip", "global", ON_8) <= 4.5
  assert 3.0 <= growth("clip", "local", ON_8) <= 4.5
  assert 1.5 <= growth("siglip", "ring", ON_8) <= 2.75
  assert temp_bytes("siglip", "ring", 4096, 8) < 0.6 * temp_bytes("siglip", "global", 4096, 8)


def test_loss_memory_with_fixed_per_device_batch_linear_and_constant():
  """With b fixed, CLIP local's [b, B] rows grow linearly in B (×2); the SigLIP ring's [b, b] block
  does not grow at all (only the B·d text shards do); GSPMD splits the global [B, B] matrix's rows
  over the devices, so it too is [b, B] per device (×2)."""
  assert 1.8 <= growth("clip", "local", FIXED_B) <= 2.2
  assert 1.8 <= growth("clip", "global", FIXED_B) <= 2.2
  assert 1.8 <= growth("siglip", "global", FIXED_B) <= 2.2
  assert growth("siglip", "ring", FIXED_B) <= 1.5


def test_loss_report_and_errors(tmp_path):
  report = losses.bench_losses((2048, 4096), EMBED_DIM, forms=(("siglip", "ring"),))
  assert report["device_counts"] == [4, 8] and report["per_device_batch"] == 512
  form = report["forms"][0]
  assert form["fixed_devices"]["temp_bytes"] == [temp_bytes("siglip", "ring", *run) for run in ON_8]
  assert form["fixed_per_device_batch"]["growth_per_doubling"] == [growth("siglip", "ring", FIXED_B)]
  json_path, md_path = bench_report.write(str(tmp_path), "losses", report, bench_report.losses_markdown(report))
  text = open(md_path, encoding="utf-8").read()
  assert text.count("| siglip | ring |") == 2 and "B = 4096" in text
  assert json.load(open(json_path))["batch_sizes"] == [2048, 4096]
  with pytest.raises(ValueError, match="each double"):
    losses.bench_losses((1024, 3072, 4096))
  with pytest.raises(RuntimeError, match="needs 16 devices"):
    losses.bench_losses((2048, 4096), num_devices=16)


def test_train_step_bench_report(tiny_data_dir, tmp_path):
  """Two timed steps of the tiny config's real train step on one device: the report's fields, and the
  analytic FLOPs against XLA's count (norms, softmax, activations and the optimizer are XLA's extra)."""
  config = tiny_config(tiny_data_dir)
  result = train_step.bench_train_step(config, steps=2, warmup=1, repeats=1, devices=jax.devices()[:1],
                                  peak_seconds=0.0, xla_unrolled=False)
  for key in ("lower_s", "compile_s", "steps_per_sec", "examples_per_sec", "model_flops_per_sec", "mfu",
              "peak_f32", "memory_per_device", "environment"):
    assert key in result, key
  fl = result["flops"]
  assert fl["analytic_per_step"] == flops.train_step_flops(config.model, {"image": (16, 32, 32, 3),
                                                                           "text": (16, 16)})
  # One layer per tower, so XLA's count of the scanned step (a scan body counted once) is complete.
  assert fl["xla_per_step_unrolled"] is None
  assert 0.5 <= fl["analytic_over_xla"] <= 2.0, fl
  assert result["examples_per_sec"] == pytest.approx(16 * result["steps_per_sec"])
  assert 0.0 < result["mfu"] < 1.0 and np.isfinite(result["final_loss"])
  memory = result["memory_per_device"]
  assert memory["argument_size"] > 0 and memory["temp_size"] > 0
  _, md_path = bench_report.write(str(tmp_path), "tiny", result, bench_report.train_step_markdown("tiny", result))
  assert "**MFU**" in open(md_path, encoding="utf-8").read()


@pytest.mark.slow
def test_xla_flops_of_scanned_layers_need_the_unrolled_copy(tiny_data_dir):
  """With 3 scanned layers XLA counts the scan body once; the unrolled copy's count matches the
  analytic one, the as-compiled count falls well short of it."""
  config = tiny_config(tiny_data_dir, **{"model.image.depth": 3, "model.text.depth": 3})
  fl = train_step.bench_train_step(config, steps=1, warmup=0, repeats=1, devices=jax.devices()[:1],
                              peak_seconds=0.0)["flops"]
  assert 0.5 <= fl["analytic_per_step"] / fl["xla_per_step_unrolled"] <= 2.0, fl
  assert fl["xla_per_step_as_compiled"] < 0.6 * fl["xla_per_step_unrolled"], fl
  # With unroll = depth no loop is left: the count as compiled is complete, and no copy is compiled.
  unrolled = tiny_config(tiny_data_dir, **{"model.image.depth": 3, "model.text.depth": 3,
                                           "model.image.unroll": 3, "model.text.unroll": 3})
  fl_unrolled = train_step.bench_train_step(unrolled, steps=1, warmup=0, repeats=1, devices=jax.devices()[:1],
                                       peak_seconds=0.0)["flops"]
  assert fl_unrolled["xla_per_step_unrolled"] is None, fl_unrolled
  assert fl_unrolled["xla_per_step_as_compiled"] == pytest.approx(fl["xla_per_step_unrolled"], rel=0.01)
  assert fl_unrolled["analytic_over_xla"] == pytest.approx(fl["analytic_over_xla"], rel=0.01)


def test_flops_count_by_hand():
  """One ViT block on 4 patches and one text block on 3 tokens, counted by hand."""
  model = {"name": "dual_encoder", "embed_dim": 8,
           "image": {"variant": "mu/2", "width": 4, "depth": 1, "mlp_dim": 16, "num_heads": 2, "pool": "cls"},
           "text": {"variant": "mu", "width": 6, "depth": 1, "mlp_dim": 12, "num_heads": 3}}
  got = flops.dual_encoder_flops(model, {"image": (2, 4, 4, 3), "text": (2, 3)})
  tokens = 4 + 1  # a class token
  image = 2 * 4 * 12 * 4 + 2 * tokens * 4 * 16 + 4 * tokens ** 2 * 4 + 4 * tokens * 4 * 16
  text = 2 * 3 * 6 * 24 + 4 * 9 * 6 + 4 * 3 * 6 * 12
  forward = 2 * image + 2 * text + 2 * (2 * 4 * 8 + 2 * 6 * 8) + 2 * 2 * 2 * 8
  assert got["forward"] == forward and got["train_step"] == 3 * forward
  with pytest.raises(ValueError, match="no analytic FLOP count for model 'vlm'"):
    flops.dual_encoder_flops({"name": "vlm"}, {})
  # The conv stem (ViTc): 8×8 -> 4×4 -> 2×2 through 3×3 stride-2 convs of 3 -> 8 -> 8 channels
  # (at least 8), then the 1×1 projection to the width 8 on 4 patches.
  conv = dict(model, image=dict(model["image"], variant="mu/4", width=8, stem="conv"))
  got = flops.dual_encoder_flops(conv, {"image": (1, 8, 8, 3), "text": (1, 3)})
  assert got["image/patch_embed"] == 2 * 16 * 9 * 3 * 8 + 2 * 4 * 9 * 8 * 8 + 2 * 4 * 8 * 8


def test_training_logs_mfu_against_a_declared_peak(tiny_data_dir):
  config = tiny_config(tiny_data_dir, peak_flops_per_device=1e9)
  batch = {"image": np.zeros((16, 32, 32, 3), np.float32), "text": np.zeros((16, 16), np.int32)}
  got = metrics.throughput_metrics(config, batch, examples_per_sec=32.0)
  step_flops = flops.train_step_flops(config.model, {"image": (16, 32, 32, 3), "text": (16, 16)})
  assert got["model_flops_per_sec"] == pytest.approx(2 * step_flops)
  assert got["mfu"] == pytest.approx(2 * step_flops / (1e9 * jax.device_count()))
  config.peak_flops_per_device = -1.0
  assert "mfu" not in metrics.throughput_metrics(config, batch, 32.0)


def test_layer_profile_rows(tiny_data_dir):
  config = tiny_config(tiny_data_dir)
  rows = {row["part"]: row for row in train_step.layer_profile(config, repeats=1)}
  per_layer = flops.transformer_flops(32, 1, 64, 2, 16)  # width 32, MLP 64, 2 heads, (32 / 8)² tokens
  assert rows["block"]["matmul_flops"] == 3 * 16 * sum(per_layer.values())
  assert rows["MLP"]["matmul_flops"] == 3 * 16 * per_layer["mlp"]
  assert all(row["cpu_s"] > 0 and row["wall_s"] > 0 for row in rows.values())
  assert {"what if: block with tanh GELU", "what if: block in bfloat16"} <= set(rows)


def test_input_pipeline_bench_times_each_data_setting(tiny_data_dir):
  """The pipeline alone, per setting: worker processes make the batches, so this process's CPU time per
  example is a small part of what its own threads spend."""
  from vlmjax.bench import input_pipeline
  settings = [input_pipeline.DataSetting.parse(t) for t in ("0:1", "1:1:5")]
  assert settings[1] == input_pipeline.DataSetting(workers=1, threads=1, nice=5)
  config = tiny_config(tiny_data_dir, mesh=dict(data=1, fsdp=-1, tensor=1))
  rows = input_pipeline.bench_pipeline(config, settings, batches=6, warmup=2)
  assert [r["name"] for r in rows] == ["1 thread in the training process", "1 worker process × 1 thread, nice +5"]
  assert all(r["examples_per_sec"] > 0 and r["batches"] == 6 for r in rows)
  assert rows[1]["process_cpu_ms_per_example"] < 0.5 * rows[0]["process_cpu_ms_per_example"]
  for bad in ("2", "a:1", "0:0", "1:-1", "1:1:1:1"):
    with pytest.raises(ValueError, match=f"data setting '{bad}' is not WORKERS:THREADS"):
      input_pipeline.DataSetting.parse(bad)


def test_the_counted_copy_has_no_loops_of_ours(tiny_data_dir):
  """`xla.unrolled`: layer scans off, a SigLIP ring loss in its global form (the same logits without the
  loop over hops); the config itself is unchanged."""
  from vlmjax.bench import xla
  config = tiny_config(tiny_data_dir, objectives=dict(siglip=dict(weight=1.0, distributed="ring")))
  copy = xla.unrolled(config)
  assert copy.objectives.siglip.distributed == "global" and config.objectives.siglip.distributed == "ring"
  assert copy.model.image.scan is False and copy.model.text.scan is False


def test_vlm_flops_count_by_hand_and_by_xla():
  """A VLM's count by hand on tiny sizes, then against XLA's count of the compiled forward pass."""
  model = {"name": "vlm", "image": {"variant": "mu/2", "width": 4, "depth": 1, "mlp_dim": 16, "num_heads": 2},
           "projector": {"kind": "mlp", "hidden_dim": 6},
           "decoder": {"variant": "mu", "width": 8, "depth": 1, "mlp_dim": 12, "num_heads": 4,
                       "num_kv_heads": 2, "head_dim": 3}}
  got = flops.vlm_flops(model, {"image": (2, 4, 4, 3), "tokens": (2, 7)}, vocab_size=10)
  image = 2 * 4 * 12 * 4 + 2 * 4 * 4 * 16 + 4 * 16 * 4 + 4 * 4 * 4 * 16  # patches, qkvo, scores, MLP
  projector = 2 * 4 * (4 * 6 + 6 * 8)
  decoder = 2 * 7 * 8 * 2 * (4 + 2) * 3 + 4 * 49 * 4 * 3 + 3 * 2 * 7 * 8 * 12 + 2 * 7 * 8 * 10
  assert got["forward"] == 2 * (image + projector + decoder)
  assert got["train_step"] == 3 * got["forward"]
  frozen = flops.vlm_flops(dict(model, stop_image_gradient=True), {"image": (2, 4, 4, 3), "tokens": (2, 7)}, 10)
  assert frozen["train_step"] == 2 * image + 2 * 2 * projector + 3 * 2 * decoder
  with pytest.raises(ValueError, match="'tome' projector"):
    flops.vlm_flops(dict(model, projector={"kind": "tome"}), {"image": (2, 4, 4, 3), "tokens": (2, 7)}, 10)

  # Against XLA on a model large enough for the matmuls to dominate (layers unrolled: a scanned
  # body would be counted once).
  from vlmjax.models.decoder import IMAGE_TOKEN  # pylint: disable=import-outside-toplevel
  from vlmjax.models.vlm import VLM  # pylint: disable=import-outside-toplevel
  sized = {"image": {"variant": "mu/8", "width": 128, "depth": 2, "mlp_dim": 512, "num_heads": 4, "scan": False},
           "decoder": {"variant": "mu", "width": 128, "depth": 2, "mlp_dim": 512, "num_heads": 4,
                       "num_kv_heads": 2, "scan": False}}
  vlm = VLM(**sized, vocab_size=256)
  images = jnp.zeros((2, 64, 64, 3))
  tokens = jnp.concatenate([jnp.full((2, 64), IMAGE_TOKEN), jnp.full((2, 16), 5)], axis=1)  # 64 patches
  params = jax.eval_shape(vlm.init, jax.random.PRNGKey(0), images, tokens)
  compiled = jax.jit(lambda p: vlm.apply(p, images, tokens)["logits"]).lower(params).compile()
  analytic = flops.vlm_flops(dict(sized, name="vlm"), {"image": images.shape, "tokens": tokens.shape}, 256)
  ratio = xla.flops(compiled, 1) / analytic["forward"]
  assert 1.0 <= ratio <= 1.1, ratio


@pytest.mark.parametrize("name, opcode, op_name, category", [
    ("ynn_fusion.3", "fusion", "jit(train_step)/jvp(DualEncoder)/image/encoder/block_0/mlp/fc1/dot_general",
     "dense matmuls"),
    ("dot.9", "dot", "jit(train_step)/transpose(jvp(DualEncoder))/image/encoder/blocks/attn/core/nqs,nsd->nqd/"
     "dot_general", "attention core"),
    ("copy_bitcast_fusion.1", "fusion", "jit(train_step)/transpose(jvp(DualEncoder))/text/encoder/mlp/add_any",
     "copies, transposes"),
    ("add_fusion", "fusion", "jit(train_step)/jvp(DualEncoder)/image/encoder/block_0/norm1/mul", "layer norms"),
    ("erf_fusion", "fusion", "jit(train_step)/jvp(DualEncoder)/image/encoder/block_0/mlp/erfc", "activation (GELU)"),
    ("exp_fusion", "fusion", "jit(train_step)/jvp(jit(log_softmax))/exp", "loss"),
    ("sqrt_fusion", "fusion", "jit(train_step)/sqrt", "optimizer"),
])
def test_xla_op_categories(name, opcode, op_name, category):
  from vlmjax.bench import op_profile  # pylint: disable=import-outside-toplevel
  assert op_profile.xla_category(name, opcode, op_name) == category
