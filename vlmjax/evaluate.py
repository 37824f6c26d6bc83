"""Run a config's evaluators: during training on the live params, or on a workdir's checkpoint.

  python -m vlmjax.evaluate --workdir DIR [--step N]
  python -m vlmjax.evaluate --compare DIR1,DIR2,...

The first reads DIR/config.json and DIR/tokenizer.model, restores only the params of the newest
checkpoint (or step N), runs every evaluator in `config.evals`, prints a table and writes the
results with their step: the newest checkpoint's to DIR/eval_results.json (what training writes at
its end), step N's to DIR/eval_results/step_N.json. It holds the workdir while it runs
(`workdir.lock`), so it never writes while a training run writes there. The second prints finished
runs' eval_results.json side by side, with their steps (no recomputation).
"""
import json
import os

from absl import app, flags
import jax

from vlmjax import cli, config as config_lib, experiment as experiment_lib, registry
from vlmjax import workdir as workdir_lib
from vlmjax.metrics import quiet_absl_logging
from vlmjax.evals.common import EvalContext, Embedder
from vlmjax.run import Bundle, RunDir

STEP_RESULTS = RunDir.EVAL_STEPS  # the folder of a workdir holding step_N.json: results of --step N


def run_evals(experiment, params, tokenizer) -> dict:
  """Every evaluator of `experiment.config.evals` on `params` -> {'name/metric': value}."""
  config = experiment.config
  embedder = Embedder(experiment.model, params, experiment.mesh, config.batch_size, experiment.rules)
  ctx = EvalContext(config.data, config.input, tokenizer, embedder, config.batch_size)
  results = {}
  for name, cfg in config.evals.items():
    kwargs = {k: v for k, v in cfg.to_dict().items() if k != "type"}
    results.update(registry.get("evaluator", cfg.type)(name=name, **kwargs).run(ctx))
  return results


def format_table(results: dict) -> str:
  """{'zeroshot/top1': 0.9, ...} -> a two-column markdown table."""
  width = max([len(k) for k in results] + [6])
  lines = [f"| {'metric'.ljust(width)} | value  |", f"|{'-' * (width + 2)}|--------|"]
  for key, value in results.items():
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    lines.append(f"| {key.ljust(width)} | {text:>6} |")
  return "\n".join(lines)


def compare_table(workdirs: list[str]) -> str:
  """Runs side by side: their saved eval_results.json as one markdown table, a column per metric
  (the union, in first-seen order), a row per workdir; a step column first when any records one."""
  rows = {}
  for workdir in workdirs:
    path = RunDir(workdir).file(RunDir.EVAL_RESULTS)
    if not os.path.exists(path):
      raise FileNotFoundError(f"evaluate: '{path}' does not exist (has '{workdir}' finished or been evaluated?)")
    try:
      with open(path, encoding="utf-8") as f:
        rows[os.path.basename(os.path.normpath(workdir))] = json.load(f)
    except ValueError:
      raise ValueError(f"evaluate: '{path}' is not valid JSON") from None
  metrics = list(dict.fromkeys(k for results in rows.values() for k in results if k != "step"))
  if any("step" in results for results in rows.values()):
    metrics.insert(0, "step")
  cell = lambda v: "—" if v is None else f"{100 * v:.1f}" if isinstance(v, float) and abs(v) <= 1 else str(v)
  lines = ["| run | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
  lines += [f"| {name} | " + " | ".join(cell(results.get(m)) for m in metrics) + " |"
            for name, results in rows.items()]
  return "\n".join(lines)


def results_file(workdir: str, step: int, final: bool = True) -> str:
  """Where the results of `step` go: eval_results.json for the run's newest (final) checkpoint,
  else eval_results/step_N.json."""
  run = RunDir(workdir)
  return run.file(RunDir.EVAL_RESULTS) if final else os.path.join(run.file(STEP_RESULTS), f"step_{step}.json")


def write_results(workdir: str, step: int, results: dict, final: bool = True) -> str:
  """Writes {'step': step, **results} to `results_file` (atomically: a kill or a full disk never
  leaves half a file, nor loses the previous one). -> the path; OSError naming it on failure."""
  path = results_file(workdir, step, final)
  partial = f"{path}.partial-{os.getpid()}"  # this process's own: "x" never opens another's file
  created = False
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(partial, "x", encoding="utf-8") as f:
      created = True
      json.dump({"step": int(step), **results}, f, indent=1)
    os.replace(partial, path)
  except OSError as e:
    if created and os.path.isfile(partial):
      os.remove(partial)
    raise OSError(f"evaluate: cannot write the results to '{path}': {e.strerror or e}") from None
  return path


def check_workdir(workdir: str):
  """Raises FileNotFoundError / ValueError (one line naming --workdir) unless `workdir` is a
  training workdir, before anything is built from it or written into it."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"evaluate: --workdir '{workdir}' does not exist or is not a folder")
  if Bundle.holds_one(workdir):
    raise ValueError(f"evaluate: --workdir '{workdir}' is an inference bundle; evaluate takes a training "
                     "workdir")
  if not os.path.isdir(RunDir(workdir).file(RunDir.CHECKPOINTS)):
    raise FileNotFoundError(f"evaluate: --workdir '{workdir}' holds no {RunDir.CHECKPOINTS}/ (is it a training "
                            "workdir, and has it saved a checkpoint?)")


def evaluate_workdir(workdir: str, step: int | None = None, show=None) -> dict:
  """Runs the evaluators of a run's config on its params at `step` (default: the newest), on the
  run's mesh, holding the workdir -> {'step': N, 'name/metric': value, ...}, written to
  `results_file(workdir, N, final=step is None)`. `show(results)` runs before the write, so a
  failed write loses nothing."""
  check_workdir(workdir)
  run = RunDir(workdir)
  config = run.read_config()
  with workdir_lib.lock(workdir, "evaluate"):
    loaded = run.load(step, mesh=experiment_lib.make_mesh(config))
    metrics = run_evals(loaded.experiment, loaded.params, loaded.tokenizer)
    results = {"step": int(loaded.step), **metrics}
    if show:
      show(results)
    write_results(workdir, loaded.step, metrics, final=step is None)
  return results


def main(argv):
  quiet_absl_logging()
  if len(argv) > 1:
    cli.fail("evaluate", f"evaluate: unexpected arguments: {' '.join(argv[1:])}")
  try:
    if FLAGS.compare:
      if FLAGS.workdir or FLAGS.step is not None:
        raise ValueError("evaluate: --compare reads the runs' saved results; give it without --workdir and --step")
      print(compare_table(FLAGS.compare))
      return
    if not FLAGS.workdir:
      raise ValueError("evaluate: give --workdir DIR (or --compare DIR1,DIR2,...)")
    evaluate_workdir(FLAGS.workdir, FLAGS.step, show=lambda results: print(format_table(results), flush=True))
  except workdir_lib.WorkdirBusy as e:
    cli.fail("evaluate", e, status=1)
  except (OSError, config_lib.ConfigError, ValueError) as e:  # OSError: FileNotFoundError, a full disk...
    cli.fail("evaluate", e)


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "A training workdir.")
  flags.DEFINE_list("compare", [], "Workdirs whose eval_results.json to print side by side (percent).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.flags_parser("evaluate"))
