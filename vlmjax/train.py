"""Train a model from a config file.

  python -m vlmjax.train --config configs/demo.py --workdir DIR [--config.batch_size=64 ...]

Wires the pieces a config names: data source -> grain pipeline -> global sharded batch -> jitted
step -> metrics / checkpoints / evaluators, all built by `vlmjax.experiment`. A workdir with
checkpoints is resumed from the newest (if its config matches, see `vlmjax.workdir`; its files:
`vlmjax.run.RunDir`). SIGTERM/SIGINT checkpoint the current step and exit 0; NaN/Inf steps are
skipped and bad data records skipped and counted (README, "Reliability guarantees").
"""
import contextlib
import os
import sys

from absl import app, flags
import jax
from ml_collections import config_flags

from vlmjax import checkpoint, cli, config as config_lib, cpu_memory, distributed, evaluate
from vlmjax import experiment as experiment_lib, registry, sharding, trainer, workdir as workdir_lib
from vlmjax.data import mixture, pipeline, sources, tokenizer as tokenizer_lib
from vlmjax.data.tokenizer import Tokenizer, TokenizerError
from vlmjax.init_from import init_params_from
from vlmjax.metrics import MetricWriter, Progress, quiet_absl_logging, throughput_metrics
from vlmjax.preemption import Preemption
from vlmjax.run import RunDir, drop_metrics_after
from vlmjax.run_tokenizer import existing_tokenizer, get_tokenizer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (path.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the tokenizer go.")
flags.DEFINE_integer("stop_after_steps", None, "Checkpoint and stop after this step, as a preemption would.")
flags.DEFINE_bool("dry_run", False, "Check everything up to the first step and trace the step abstractly (the "
                  "config, every split's data, the tokenizer, the workdir, the model): print what would run, write "
                  "nothing, exit 0.")
flags.DEFINE_bool("overwrite", False, "Delete the workdir's previous run (checkpoints, metrics, tokenizer, "
                  "config) and start over, instead of refusing a workdir whose run has another config.")


def total_steps(config, num_train_examples: int) -> int:
  if config.total_epochs > 0:
    return max(1, int(config.total_epochs * num_train_examples // config.batch_size))
  return config.total_steps


class NonFiniteError(FloatingPointError):
  """`max_consecutive_nonfinite` steps in a row had a NaN/Inf loss or gradient."""


def check_nonfinite(streak, step: int, limit: int):
  """Raises NonFiniteError when the step ending at `step` made `streak` skipped steps in a row."""
  streak = int(streak)
  if limit and streak >= limit:
    raise NonFiniteError(
        f"train: the loss or gradients were NaN/Inf in {streak} steps in a row (steps {step - streak + 1}"
        f"..{step}, each skipped: the params and checkpoints are finite); stopping at max_consecutive_nonfinite"
        f" = {limit}: lower optimizer.learning_rate or check the data, then resume")


def report_skipped(extras, good_records: int):
  """One line each for the bad data records and the non-finite steps skipped so far, if any."""
  extras = jax.device_get(extras)
  bad = int(extras["bad_records"].sum())
  if jax.process_index() == 0 and bad:
    print(f"data: skipped {bad} bad records of {bad + good_records} read ({100 * bad / (bad + good_records):.2f}%): "
          f"{pipeline.describe_bad_records(extras['bad_records'])}", flush=True)
  if jax.process_index() == 0 and extras["nonfinite_steps"]:
    print(f"train: skipped {int(extras['nonfinite_steps'])} steps with a NaN/Inf loss or gradient", flush=True)


def train(config, workdir: str, stop_after_steps: int | None = None, overwrite: bool = False) -> dict:
  """Trains (or resumes) to `total_steps`; returns the final evaluation results.

  With `stop_after_steps`, stops after that step as a preemption would: the state is checkpointed
  and no evaluation runs; calling again with the same workdir continues the run. SIGTERM/SIGINT do
  the same after the step in flight. `overwrite`: start over in a workdir holding another run.
  """
  # Everything is checked before anything in the workdir is touched (`--overwrite` deletes only
  # once the config, the mesh and every split's data are known to be good).
  config = sources.with_absolute_paths(config)  # config.json says where the data is, from any folder
  experiment_lib.check(config)
  with workdir_lib.lock(workdir, "train"):
    train_source = mixture.train_source(config.data, config.seed)  # every part of a mixture
    check_languages(config, train_source)
    check_evals(config)
    workdir_lib.prepare(config, workdir, overwrite)  # refuses another run's workdir; writes config.json
    return _train(config, RunDir(workdir), train_source, stop_after_steps)


def check_languages(config, train_source):
  """The training data has captions in every language of `input.languages`."""
  pipeline.check_languages([name for name, _ in pipeline.language_mix(config.input)], train_source)


def check_evals(config):
  """Every evaluator's data (its splits, labels against class names) and resolution, before training."""
  planned = evaluate.plan_evals(config.evals, config.data)
  evaluate.check_evals(planned)
  evaluate.check_image_sizes(planned, config)


def dry_run(config, workdir: str, overwrite: bool = False) -> dict:
  """Everything `train` does before its first step, writing nothing: the config against the mesh,
  every split's data, the workdir (resumable, or `overwrite`), the init sources, the tokenizer, then
  the model and the train step traced with `jax.eval_shape` (no params allocated, nothing compiled).
  -> what would run: {'params', 'global_batch', 'per_device_batch', 'mesh', 'steps', ...}."""
  config = sources.with_absolute_paths(config)
  mesh = experiment_lib.check(config)
  train_source = mixture.train_source(config.data, config.seed)  # every part of a mixture
  check_languages(config, train_source)
  check_evals(config)
  workdir_lib.check(config, workdir, overwrite)
  for source, _, _ in config_lib.init_sources(config.init):
    if not os.path.isdir(source):
      raise config_lib.ConfigError(f"config: init: '{source}' does not exist (a run, or a bundle, to start from)")
  run = RunDir(workdir)
  path = existing_tokenizer(config, run)
  tokenizer = Tokenizer.load(path) if path else None
  if tokenizer:
    tokenizer_lib.check_text_tower(tokenizer, config.model.get("text"), "config")
  vocab_size = tokenizer.vocab_size if tokenizer else config.tokenizer.vocab_size
  prompt_len = len(pipeline.prompt_ids(tokenizer, config.input)) if tokenizer else 0
  steps = total_steps(config, len(train_source))
  experiment = experiment_lib.build(config, vocab_size, total_steps=steps, mesh=mesh, validate=False,
                                    prompt_len=prompt_len, train_examples=len(train_source))
  if tokenizer:  # what the trainer does before step 0 (VLAP's word prior, PRIOR's tokenizer check)
    for _, objective in experiment.objectives.values():
      if hasattr(objective, "prepare"):
        objective.prepare(train_source, tokenizer)
  abstract, state_shardings = experiment.abstract_state()
  with experiment.use_mesh():
    _, metrics = jax.eval_shape(experiment.train_step(state_shardings), abstract, experiment.abstract_batch())
  assert "loss" in metrics
  resumed = run.steps() if os.path.isdir(workdir) and not overwrite else []
  return {"params": sum(x.size for x in jax.tree.leaves(abstract["params"])), "global_batch": config.batch_size,
          "per_device_batch": config.batch_size // sharding.batch_axes_size(mesh), "mesh": dict(mesh.shape),
          "devices": mesh.size, "processes": jax.process_count(), "steps": steps, "train_examples": len(train_source),
          "start_step": resumed[-1] if resumed else 0, "tokenizer": path if tokenizer else
          f"a {config.tokenizer.vocab_size}-piece tokenizer trained on the training captions"}


def format_dry_run(report: dict) -> str:
  mesh = " × ".join(f"{axis}={size}" for axis, size in report["mesh"].items())
  return (f"vlmjax.train: dry run: {report['params']:,} params; global batch {report['global_batch']} "
          f"({report['per_device_batch']} per device) on a mesh {mesh} of {report['devices']} devices in "
          f"{report['processes']} process(es); steps {report['start_step']}..{report['steps']} over "
          f"{report['train_examples']:,} training examples; tokenizer: {report['tokenizer']}. Nothing was written.")


def _train(config, run: RunDir, train_source, stop_after_steps: int | None) -> dict:
  workdir = run.path
  tokenizer = get_tokenizer(config, run, train_source)
  tokenizer_lib.check_text_tower(tokenizer, config.model.get("text"), "config")
  steps = total_steps(config, len(train_source))
  prompt = pipeline.prompt_ids(tokenizer, config.input)
  experiment = experiment_lib.build(config, tokenizer.vocab_size, total_steps=steps, prompt_len=len(prompt),
                                    train_examples=len(train_source))
  mesh = experiment.mesh

  preprocess = experiment.preprocess(tokenizer)
  for _, objective in experiment.objectives.values():  # e.g. VLAP's word-frequency prior from the captions
    if hasattr(objective, "prepare"):
      objective.prepare(train_source, tokenizer)
  data_iter = iter(pipeline.train_dataset(
      train_source, preprocess, config.batch_size // jax.process_count(), config.seed,
      jax.process_index(), jax.process_count(), config.data.num_threads, config.data.get("workers", 0),
      config.data.get("worker_nice", 0)))

  checkpointer = run.checkpointer(config.checkpoint.every_steps, config.checkpoint.keep,
                                  config.checkpoint.async_save, cleanup=True)
  if checkpointer.latest_step() is not None:
    abstract, state_shardings = experiment.abstract_state()
    state = checkpointer.resume(abstract, data_iter)  # a damaged step: reported, moved aside, an older one used
    print(f"Resuming from step {checkpointer.latest_step()} in {checkpointer.directory}", flush=True)
  else:
    state, state_shardings = experiment.init_state()
    for source_workdir, pattern, into in config_lib.init_sources(config.init):
      try:
        state["params"] = init_params_from(source_workdir, state["params"], pattern, into=into)
      except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    for name, options in config.init.get("fit", {}).items():  # closed-form fits on the loaded params
      try:
        fit = registry.get("fit", name)(**(options.to_dict() if hasattr(options, "to_dict") else options))
      except TypeError as e:
        raise config_lib.ConfigError(f"config: init.fit.{name}: {e}") from None
      state["params"] = fit(state["params"], experiment.model, tokenizer, config, workdir)
    state = trainer.reset_ema(state)  # the EMA starts at the params training starts from
  train_step = experiment.train_step(state_shardings)
  # With an EMA of the params (optimizer.ema_decay), the run's evaluations are of the EMA: the model
  # the run delivers (`evaluate --ema`, `export --ema`).
  eval_params = lambda state: state.get("ema", state["params"])

  start = int(state["step"])
  if jax.process_index() == 0:
    drop_metrics_after(workdir, start)  # what a killed run logged past its last checkpoint
  writer = MetricWriter(run.file(RunDir.METRICS), run.file(RunDir.TENSORBOARD))
  progress = Progress(start, steps, config.batch_size, config.progress_bar)
  streak, done, stopped = None, start, None  # streak: a step's skips in a row, read one step late
  # closing: finish an async save; stop the data threads or workers
  with Preemption() as preemption, contextlib.closing(checkpointer), contextlib.closing(data_iter):
    for step in range(start, steps):
      batch = sharding.global_batch(next(data_iter), mesh)
      with experiment.use_mesh():
        state, metrics = train_step(state, batch)
      if streak is not None:  # the previous step's: done by now, so the host never waits on this one
        check_nonfinite(streak, done, config.max_consecutive_nonfinite)
      streak, done = metrics["nonfinite_streak"], step + 1
      if done % config.log_every_steps == 0 or done == steps:
        metrics = jax.device_get(metrics)
        if "source_examples" in metrics:  # a mixture: each part's share of the examples seen
          metrics.update(mixture.share_metrics(train_source.names, metrics.pop("source_examples")))
        examples_per_sec = progress.update(done, float(metrics["loss"]))
        writer.write(done, {**metrics, "examples_per_sec": examples_per_sec,
                            **throughput_metrics(config, batch, examples_per_sec)})  # model FLOP/s, MFU
        pipeline.check_bad_records([metrics[f"bad_records/{r}"] for r in pipeline.BAD_REASONS],
                                   done * config.batch_size, config.data.max_bad_fraction)
      if done == stop_after_steps or preemption.reached(done):
        stopped = preemption.signal_name or "stop_after_steps"
      if checkpointer.should_save(done, steps) or stopped:
        checkpointer.save(done, state, data_iter)
      if config.eval_every_steps and done % config.eval_every_steps == 0 and done != steps:
        writer.write(done, evaluate.run_evals(experiment, eval_params(state), tokenizer))
      if stopped:
        break
    if streak is not None and not stopped:
      check_nonfinite(streak, done, config.max_consecutive_nonfinite)
  progress.close()
  report_skipped(state["extras"], done * config.batch_size)
  if stopped:
    writer.close()
    if jax.process_index() == 0 and stopped != "stop_after_steps":
      print(f"vlmjax.train: {stopped}: saved a checkpoint at step {done} in {checkpointer.directory}; "
            "run the same command to resume", flush=True)
    return {}

  results = evaluate.run_evals(experiment, eval_params(state), tokenizer) if config.evals else {}
  writer.write(steps, results)
  writer.close()
  if jax.process_index() == 0:
    evaluate.write_results(run.path, done, {"ema": True, **results} if "ema" in state else results)
  return results


USER_ERRORS = (config_lib.ConfigError, registry.RegistryError, distributed.DistributedEnvError, OSError,
               KeyError, pipeline.BadDataError, pipeline.LanguageError, sources.DataFileError, TokenizerError,
               NonFiniteError)


# The config's sections whose entries are named by the user, and the registry kind each entry picks.
NAMED_ENTRIES = {"objectives": "objective", "evals": "evaluator"}


def unknown_entry_override(argv) -> str | None:
  """The error for an override below an entry the config file does not hold (`--config.objectives.
  <name>.weight=1`): ml_collections refuses it with a bare KeyError('<name>'). -> one line naming the
  override, the config's entries and the registered names; None when every such entry exists."""
  args = argv[1:]
  overrides = [a.split("=", 1)[0].removeprefix("--config.") for a in args if a.startswith("--config.")]
  wanted = [o for o in overrides if o.split(".")[0] in NAMED_ENTRIES and o.count(".") >= 2]
  files = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
  files += [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
  if not wanted or not files:
    return None
  try:
    config = config_lib.load_file(*files[-1].split(":", 1))
  except Exception:  # pylint: disable=broad-except  # the flag parser reports a config file that does not load
    return None
  for override in wanted:
    section, name = override.split(".")[:2]
    entries = config.get(section) or {}
    if name not in entries:
      kind = NAMED_ENTRIES[section]
      registered = ", ".join(registry.names(kind))
      return (f"config: --config.{override}: the config has no {section} entry '{name}' ({section}: "
              f"{', '.join(entries) or 'none'}); add it in the config file (registered {kind}s: {registered})")
  return None


def parse_flags(argv):
  message = unknown_entry_override(argv)
  if message:
    cli.fail("train", message)
  return cli.flags_parser("train")(argv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  quiet_absl_logging()
  if FLAGS.config is None or FLAGS.workdir is None:
    cli.fail("train", "--config and --workdir are required")
  try:
    if FLAGS.config.data.get("workers", 0):  # no data threads here to contend for one malloc arena
      cpu_memory.retain_freed_memory()  # before JAX starts its backends
    distributed.initialize_from_env()  # several processes (launch/): before any device is touched
    if FLAGS.dry_run:
      report = dry_run(FLAGS.config, FLAGS.workdir, FLAGS.overwrite)
      if jax.process_index() == 0:
        print(format_dry_run(report))
      return
    results = train(FLAGS.config, FLAGS.workdir, FLAGS.stop_after_steps, FLAGS.overwrite)
  except workdir_lib.WorkdirBusy as e:
    cli.fail("train", e, status=1)
  except checkpoint.CheckpointSaveError as e:
    # The failed save's orbax threads can wait minutes for a step folder that was never made, and a
    # normal exit joins them. Nothing is left to write: the lock is released, the metrics flushed.
    try:
      cli.fail("train", e)
    except SystemExit as exit_:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(exit_.code)
  except USER_ERRORS as e:
    cli.fail("train", e.args[0] if isinstance(e, KeyError) and e.args else e)
  if results and jax.process_index() == 0:
    print(evaluate.format_table(results))


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=parse_flags)
