"""Run a config's evaluators: during training on the live params, or on a workdir's checkpoint.

  python -m vlmjax.evaluate --workdir DIR [--step N]

reads DIR/config.json and DIR/tokenizer.model, restores only the params of the newest checkpoint (or
step N), runs every evaluator in `config.evals`, prints a table and writes DIR/eval_results.json.
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
    results = evaluate_workdir(FLAGS.workdir, FLAGS.step)
  except (FileNotFoundError, config_lib.ConfigError, ValueError) as e:
    print(f"vlmjax.evaluate: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_table(results))


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  jax.config.config_with_absl()
  app.run(main)
