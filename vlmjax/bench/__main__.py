"""Benchmarks, written as JSON + markdown reports.

  python -m vlmjax.bench --config configs/demo.py [--config.batch_size=64] --out benchmarks
      The real train step (`vlmjax.experiment`) on synthetic batches, no dataset: compile time,
      steps/s, examples/s, model FLOPs per step (analytic, vlmjax.flops) against XLA's count,
      achieved FLOP/s and MFU against a matmul peak measured in the same run, and the step's memory
      (compiled.memory_analysis()). -> OUT/<config name>.{json,md}  (train_step.py)

  python -m vlmjax.bench --losses --out benchmarks [--loss_batch_sizes=1024,2048,4096]
      Per-device temporary memory of the gradient of each contrastive loss form (CLIP global/local,
      SigLIP global/ring) at three global batch sizes, on 8 devices and with a fixed per-device
      batch on 2/4/8 devices; compiled, never run. -> OUT/losses.{json,md}  (losses.py)
      On a CPU the 8 devices are faked: this command sets XLA_FLAGS
      (--xla_force_host_platform_device_count=8) and JAX_PLATFORMS=cpu before jax starts (a
      JAX_PLATFORMS already set is kept).

  python -m vlmjax.bench --data_startup --rows 1000000 --out benchmarks
      The time and memory a CSV file list takes to open: `make_source` on a generated file of --rows
      rows (image paths that need not exist), then the first 100 records read.
      -> OUT/data_startup.{json,md}  (data_startup.py)

  python -m vlmjax.bench --input_pipeline --config configs/demo.py --out benchmarks
      Does the data keep up? The config's training batches alone (examples/s per --pipeline_settings
      entry), the train step alone on synthetic batches, and `python -m vlmjax.train` on the config
      for --train_steps steps per --training_settings entry, all in one run. A setting is
      WORKERS:THREADS[:NICE] (data.workers, data.num_threads, data.worker_nice).
      -> OUT/input_pipeline_<config name>.{json,md}  (input_pipeline.py)
"""
import os
import sys

from vlmjax.bench import LOSS_DEVICES

if __name__ == "__main__" and "--losses" in sys.argv[1:]:
  # Fake CPU devices must be requested before jax initialises its backends, i.e. before the import.
  os.environ["XLA_FLAGS"] = " ".join(
      f for f in (os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={LOSS_DEVICES}") if f)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vlmjax import cli, metrics  # noqa: E402
from vlmjax.bench import command, data_startup, input_pipeline, losses, report, train_step  # noqa: E402

PROGRAM = "bench"
FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file("config", None, "Experiment config file (path.py[:arg]) to benchmark.",
                                  lock_config=True)
  flags.DEFINE_string("out", None, "Folder for the JSON and markdown reports.")
  flags.DEFINE_string("name", None, "Report file name (default: the config file's name, or 'losses').")
  flags.DEFINE_integer("steps", 10, "Timed train steps per repeat.")
  flags.DEFINE_integer("warmup", 2, "Untimed train steps after compiling.")
  flags.DEFINE_integer("repeats", 3, "Timed repeats of --steps steps; the best and the median are reported.")
  flags.DEFINE_bool("xla_unrolled", True, "Also compile the step with unscanned layers for XLA's FLOP "
                    "count (XLA counts a scanned layer's body once).")
  flags.DEFINE_bool("profile_layer", False, "Add a forward + backward profile of one image-tower block "
                    "and its parts, with tanh-GELU and bfloat16 what-ifs.")
  flags.DEFINE_bool("losses", False, "Benchmark the contrastive losses' memory instead of a train step.")
  flags.DEFINE_list("loss_batch_sizes", ["1024", "2048", "4096"], "Global batch sizes, each double the last.")
  flags.DEFINE_integer("loss_embed_dim", 256, "Embedding width for the loss benchmark.")
  flags.DEFINE_bool("data_startup", False, "Benchmark opening a large CSV file list instead of a train step.")
  flags.DEFINE_integer("rows", 1_000_000, "Rows of the generated CSV for --data_startup.")
  flags.DEFINE_bool("input_pipeline", False, "With --config: the input pipeline alone and training, against "
                    "the step alone.")
  flags.DEFINE_list("pipeline_settings", ["0:1", "0:2", "0:4", "1:1", "2:1"],
                    "--input_pipeline: data settings WORKERS:THREADS[:NICE] timed without a step.")
  flags.DEFINE_list("training_settings", [], "--input_pipeline: data settings trained with (default: the "
                    "config's own, then 2 threads in the training process if that differs).")
  flags.DEFINE_integer("batches", 20, "--input_pipeline: timed batches per pipeline setting.")
  flags.DEFINE_integer("train_steps", 150, "--input_pipeline: training steps per setting.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  metrics.quiet_absl_logging()
  if not FLAGS.out:
    cli.fail(PROGRAM, "--out is required")
  if [FLAGS.losses, FLAGS.data_startup, FLAGS.config is not None].count(True) != 1:
    cli.fail(PROGRAM, "give one of --config (train-step benchmark), --losses (loss memory benchmark) or "
                      "--data_startup (file-list startup benchmark)")
  try:
    if FLAGS.input_pipeline:
      if FLAGS.config is None:
        cli.fail(PROGRAM, "--input_pipeline needs --config")
      own = input_pipeline.config_setting(FLAGS.config)
      training = [input_pipeline.DataSetting.parse(t) for t in FLAGS.training_settings] or list(
          dict.fromkeys([own, input_pipeline.DataSetting(0, 2, own.nice)]))
      result = input_pipeline.bench_input_pipeline(
          FLAGS.config, [input_pipeline.DataSetting.parse(t) for t in FLAGS.pipeline_settings], training,
          FLAGS.batches, FLAGS.train_steps, step_repeats=FLAGS.repeats)
      name = FLAGS.name or f"input_pipeline_{command.config_name()}"
      report.publish(FLAGS.out, name, result, report.input_pipeline_markdown(name, result))
    elif FLAGS.data_startup:
      load_start = os.getloadavg()
      result = data_startup.bench_data_startup(FLAGS.rows)
      result["environment"] = report.environment(jax.devices(), load_start)
      report.publish(FLAGS.out, FLAGS.name or "data_startup", result, report.data_startup_markdown(result))
    elif FLAGS.losses:
      result = losses.bench_losses([int(b) for b in FLAGS.loss_batch_sizes], FLAGS.loss_embed_dim)
      report.publish(FLAGS.out, FLAGS.name or "losses", result, report.losses_markdown(result))
    else:
      name = FLAGS.name or command.config_name()
      result = train_step.bench_train_step(FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.repeats,
                                           xla_unrolled=FLAGS.xla_unrolled, profile_layer=FLAGS.profile_layer)
      report.publish(FLAGS.out, name, result, report.train_step_markdown(name, result))
  except command.ERRORS as e:
    cli.fail(PROGRAM, e)


if __name__ == "__main__":
  command.run(PROGRAM, main, define_flags)
