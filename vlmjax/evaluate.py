"""Run a config's evaluators: during training on the live params, or on a workdir's checkpoint.

  python -m vlmjax.evaluate --workdir DIR [--step N]
  python -m vlmjax.evaluate --compare DIR1,DIR2,...

The first reads DIR/config.json and DIR/tokenizer.model, restores only the params of the newest
checkpoint (or step N), runs every evaluator in `config.evals`, prints a table and writes
DIR/eval_results.json. The second prints finished runs' results side by side (no recomputation).
"""
import json
import os
import sys

from absl import app, flags
import jax
import ml_collections

from vlmjax import config as config_lib, registry, sharding, trainer
from vlmjax.checkpoint import Checkpointer
from vlmjax.metrics import quiet_absl_logging
from vlmjax.data.tokenizer import Tokenizer
from vlmjax.evals.common import EvalContext, Embedder


def run_evals(config, model, params, mesh, tokenizer) -> dict:
  ctx = EvalContext(config.data, config.input, tokenizer, Embedder(model, params, mesh, config.batch_size),
                    config.batch_size)
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
    path = os.path.join(workdir, "eval_results.json")
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


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"evaluate: '{path}' does not exist (is '{workdir}' a training workdir?)")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def evaluate_workdir(workdir: str, step: int | None = None) -> dict:
  config = load_workdir_config(workdir)
  tokenizer = Tokenizer.load(config.tokenizer.path or os.path.join(workdir, "tokenizer.model"))
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.sharding_rules)
  model = trainer.build_model(config, tokenizer.vocab_size)
  tx, _ = trainer.make_optimizer(config.optimizer, 1)
  abstract, _ = trainer.abstract_train_state(model, tx, trainer.sample_batch(config), mesh, rules)
  checkpointer = Checkpointer(workdir, 0, config.checkpoint.keep, async_save=False)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f"evaluate: no checkpoint in '{checkpointer.directory}'")
  params = checkpointer.restore_params(abstract["params"], step)
  results = run_evals(config, model, params, mesh, tokenizer)
  with open(os.path.join(workdir, "eval_results.json"), "w", encoding="utf-8") as f:
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
    print(f"vlmjax.evaluate: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_table(results))


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "A training workdir.")
  flags.DEFINE_list("compare", [], "Workdirs whose eval_results.json to print side by side (percent).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  jax.config.config_with_absl()
  app.run(main)
