"""Run a config's evaluators: during training on the live params, or on a workdir's checkpoint.

  python -m vlmjax.evaluate --workdir DIR [--step N]
  python -m vlmjax.evaluate --compare DIR1,DIR2,...

The first reads DIR/config.json and DIR/tokenizer.model, restores only the params of the newest
checkpoint (or step N), runs every evaluator in `config.evals`, prints a table and writes
DIR/eval_results.json. The second prints finished runs' results side by side (no recomputation).
"""
import json
import os

from absl import app, flags
import jax

from vlmjax import cli, config as config_lib, experiment as experiment_lib, registry
from vlmjax.metrics import quiet_absl_logging
from vlmjax.evals.common import EvalContext, Embedder
from vlmjax.run import RunDir


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
  (the union, in first-seen order), a row per workdir."""
  rows = {}
  for workdir in workdirs:
    path = RunDir(workdir).file(RunDir.EVAL_RESULTS)
    if not os.path.exists(path):
      raise FileNotFoundError(f"evaluate: '{path}' does not exist (has '{workdir}' finished or been evaluated?)")
    with open(path, encoding="utf-8") as f:
      rows[os.path.basename(os.path.normpath(workdir))] = json.load(f)
  metrics = list(dict.fromkeys(k for results in rows.values() for k in results))
  cell = lambda v: "—" if v is None else f"{100 * v:.1f}" if isinstance(v, float) and abs(v) <= 1 else str(v)
  lines = ["| run | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
  lines += [f"| {name} | " + " | ".join(cell(results.get(m)) for m in metrics) + " |"
            for name, results in rows.items()]
  return "\n".join(lines)


def evaluate_workdir(workdir: str, step: int | None = None) -> dict:
  """Runs the evaluators of a run's config on its params at `step` (default: the newest), on the
  run's mesh; writes eval_results.json."""
  run = RunDir(workdir)
  config = run.read_config()
  loaded = run.load(step, mesh=experiment_lib.make_mesh(config))
  results = run_evals(loaded.experiment, loaded.params, loaded.tokenizer)
  with open(run.file(RunDir.EVAL_RESULTS), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  return results


def main(argv):
  del argv
  quiet_absl_logging()
  try:
    if FLAGS.compare:
      print(compare_table(FLAGS.compare))
      return
    if not FLAGS.workdir:
      raise ValueError("give --workdir DIR (or --compare DIR1,DIR2,...)")
    results = evaluate_workdir(FLAGS.workdir, FLAGS.step)
  except (FileNotFoundError, config_lib.ConfigError, ValueError) as e:
    cli.fail("evaluate", e)
  print(format_table(results))


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "A training workdir.")
  flags.DEFINE_list("compare", [], "Workdirs whose eval_results.json to print side by side (percent).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  jax.config.config_with_absl()
  app.run(main)
