"""Export a training checkpoint as an inference bundle: params only, config and tokenizer beside them.

  python -m vlmjax.export --workdir DIR --out BUNDLE [--step N] [--dtype bfloat16]

BUNDLE/params is an orbax checkpoint of the params alone (no optimizer state) that restores on any
device count; BUNDLE/config.json and BUNDLE/tokenizer.model are what `load_bundle` needs to rebuild
the model. An existing BUNDLE is replaced only once the new one is complete.
"""
import json
import os
import shutil
import sys

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from vlmjax import evaluate, sharding, trainer
from vlmjax.checkpoint import Checkpointer
from vlmjax.metrics import quiet_absl_logging
from vlmjax.data.tokenizer import Tokenizer


def export(workdir: str, out: str, step: int | None = None, dtype: str = "float32") -> str:
  config = evaluate.load_workdir_config(workdir)
  tokenizer_path = config.tokenizer.path or os.path.join(workdir, "tokenizer.model")
  tokenizer = Tokenizer.load(tokenizer_path)
  mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1))
  model = trainer.build_model(config, tokenizer.vocab_size)
  tx, _ = trainer.make_optimizer(config.optimizer, 1)
  abstract, _ = trainer.abstract_train_state(
      model, tx, trainer.sample_batch(config), mesh, sharding.rules_from_config(config.sharding_rules))
  checkpointer = Checkpointer(workdir, 0, config.checkpoint.keep, async_save=False)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f"export: no checkpoint in '{checkpointer.directory}'")
  step = checkpointer.latest_step() if step is None else step
  params = checkpointer.restore_params(abstract["params"], step)
  params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)

  out = os.path.abspath(out)
  staging = out + ".partial"
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(staging, "params"), params)
  config = ml_collections.ConfigDict(config.to_dict())
  config.tokenizer.path = ""
  with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=1))
  shutil.copyfile(tokenizer_path, os.path.join(staging, "tokenizer.model"))
  with open(os.path.join(staging, "bundle.json"), "w", encoding="utf-8") as f:
    json.dump({"step": int(step), "dtype": dtype, "model": config.model.name}, f)
  shutil.rmtree(out, ignore_errors=True)
  os.replace(staging, out)
  return out


def load_bundle(bundle: str, mesh=None):
  """-> (config, model, params, tokenizer); params replicated over `mesh` (default: one device)."""
  for name in ("config.json", "tokenizer.model", "params"):
    if not os.path.exists(os.path.join(bundle, name)):
      raise FileNotFoundError(f"bundle: '{os.path.join(bundle, name)}' is missing")
  with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  tokenizer = Tokenizer.load(os.path.join(bundle, "tokenizer.model"))
  model = trainer.build_model(config, tokenizer.vocab_size)
  mesh = mesh or sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  replicated = sharding.replicated(mesh)
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(os.path.join(os.path.abspath(bundle), "params")).item_metadata
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), meta)
    params = ckptr.restore(os.path.join(os.path.abspath(bundle), "params"), target)
  return config, model, params, tokenizer


def main(argv):
  del argv
  quiet_absl_logging()
  try:
    out = export(FLAGS.workdir, FLAGS.out, FLAGS.step, FLAGS.dtype)
  except (FileNotFoundError, ValueError) as e:
    print(f"vlmjax.export: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"Exported {FLAGS.workdir} to {out}")


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
  flags.DEFINE_string("out", None, "Bundle folder to write.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Param dtype in the bundle.")
  app.run(main)
