"""Inference bundles, and weights in and out of other libraries' formats.

  python -m vlmjax.export --workdir DIR --out BUNDLE [--step N] [--dtype bfloat16] [--format safetensors]
  python -m vlmjax.export --workdir DIR --to open_clip --out FOLDER    # or --bundle B; hf_clip, hf_llama
  python -m vlmjax.export --from open_clip --src FOLDER --out BUNDLE [--tokenizer tokenizer.model]

A bundle is a folder holding everything `load_bundle` (and `vlmjax.predict`) needs, and nothing of
the training state:

  params/ or params.safetensors   the params alone (no optimizer state): an orbax checkpoint
                                  (default) or one safetensors file; either restores on any device count
  config.json                     the run's config (its tokenizer.path cleared)
  tokenizer.model                 the SentencePiece model (absent for an imported model without one)
  bundle.json                     {"step", "dtype", "model", "format", "vocab_size", "source"}

`--to` writes a folder open_clip, HF `CLIPModel` or HF `LlamaForCausalLM` (`GemmaForCausalLM` for a
decoder with `scale_token_embeddings`) load (see vlmjax/interop);
`--from` reads one back into a bundle, which `c.init.workdir` also accepts (fine-tune from it). An
existing BUNDLE is replaced only once the new one is complete.
"""
import json
import os
import shutil
import sys

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vlmjax import config as config_lib, evaluate, interop, sharding, trainer
from vlmjax.checkpoint import Checkpointer
from vlmjax.metrics import quiet_absl_logging
from vlmjax.data.tokenizer import Tokenizer

BUNDLE_FORMATS = ("orbax", "safetensors")


def restore_workdir(workdir: str, step: int | None = None):
  """-> (config, params, tokenizer path, step): a training workdir's params at `step` (default: the
  newest checkpoint), replicated on this process's first device, without the optimizer state."""
  config = evaluate.load_workdir_config(workdir)
  tokenizer_path = config.tokenizer.path or os.path.join(workdir, "tokenizer.model")
  tokenizer = Tokenizer.load(tokenizer_path)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  model = trainer.build_model(config, tokenizer.vocab_size)
  tx, _ = trainer.make_optimizer(config.optimizer, 1)
  abstract, _ = trainer.abstract_train_state(
      model, tx, trainer.sample_batch(config), mesh, sharding.rules_from_config(config.sharding_rules))
  checkpointer = Checkpointer(workdir, 0, config.checkpoint.keep, async_save=False)
  try:
    if checkpointer.latest_step() is None:
      raise FileNotFoundError(f"export: no checkpoint in '{checkpointer.directory}'")
    step = checkpointer.latest_step() if step is None else step
    if step not in checkpointer.manager.all_steps():
      raise FileNotFoundError(f"export: no checkpoint of step {step} in '{checkpointer.directory}' "
                              f"(steps: {', '.join(map(str, checkpointer.manager.all_steps()))})")
    params = checkpointer.restore_params(abstract["params"], step)
  finally:
    checkpointer.close()
  return config, params, tokenizer_path, step


def write_bundle(out: str, config, params, tokenizer_path: str | None, meta: dict,
                 fmt: str = "orbax") -> str:
  """Writes a bundle folder (see the module docstring) atomically: a complete BUNDLE or none."""
  if fmt not in BUNDLE_FORMATS:
    raise ValueError(f"export: unknown bundle format '{fmt}'; known: {', '.join(BUNDLE_FORMATS)}")
  out = os.path.abspath(out)
  staging = out + ".partial"
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  if fmt == "orbax":
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(staging, "params"), params)
  else:
    from safetensors.numpy import save_file
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)
            for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    save_file(flat, os.path.join(staging, "params.safetensors"), metadata={"vlmjax": "params"})
  config = ml_collections.ConfigDict(config.to_dict())
  config.tokenizer.path = ""
  with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=1))
  if tokenizer_path:
    shutil.copyfile(tokenizer_path, os.path.join(staging, "tokenizer.model"))
  with open(os.path.join(staging, "bundle.json"), "w", encoding="utf-8") as f:
    json.dump({**meta, "model": config.model.name, "format": fmt}, f, indent=1)
  shutil.rmtree(out, ignore_errors=True)
  os.replace(staging, out)
  return out


def export(workdir: str, out: str, step: int | None = None, dtype: str = "float32", fmt: str = "orbax") -> str:
  """A training workdir's checkpoint -> a bundle at `out` (params cast to `dtype`)."""
  config, params, tokenizer_path, step = restore_workdir(workdir, step)
  params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)
  vocab_size = Tokenizer.load(tokenizer_path).vocab_size
  return write_bundle(out, config, params, tokenizer_path,
                      {"step": int(step), "dtype": dtype, "vocab_size": vocab_size,
                       "source": os.path.abspath(workdir)}, fmt)


def export_to(fmt: str, out: str, workdir: str | None = None, bundle: str | None = None,
              step: int | None = None) -> str:
  """A workdir's checkpoint or a bundle -> a folder in another library's format (vlmjax.interop)."""
  if bool(workdir) == bool(bundle):
    raise ValueError("export: give either --workdir or --bundle as the source")
  if workdir:
    config, params, tokenizer_path, _ = restore_workdir(workdir, step)
  else:
    config, _, params, _ = load_bundle(bundle)
    tokenizer_path = os.path.join(bundle, "tokenizer.model")
    tokenizer_path = tokenizer_path if os.path.exists(tokenizer_path) else None
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  return interop.write(fmt, out, config.model.to_dict(), params, tokenizer_path)


def import_from(fmt: str, src: str, out: str, tokenizer: str | None = None, dtype: str = "float32",
                bundle_format: str = "orbax") -> str:
  """A folder in another library's format -> a bundle. The tokenizer (default: a tokenizer.model in
  `src`, as `export_to` leaves there) must be a vlmjax SentencePiece model with one piece per row
  of the token embedding; without one the bundle holds no tokenizer (images only, or `c.init`)."""
  model, params, sizes = interop.read(fmt, src)
  embedding = params["text"]["token_embed"]["embedding"] if "text" in params else params["decoder"]["embedding"]
  vocab_size = int(embedding.shape[0])
  if tokenizer is None and os.path.exists(os.path.join(src, "tokenizer.model")):
    tokenizer = os.path.join(src, "tokenizer.model")
  if tokenizer is not None and Tokenizer.load(tokenizer).vocab_size != vocab_size:
    raise ValueError(f"export: tokenizer '{tokenizer}' has {Tokenizer.load(tokenizer).vocab_size} pieces, the "
                     f"model's token embedding {vocab_size} rows")
  config = config_lib.base_config()
  config.model = model
  if "image_size" in sizes:
    config.input.image_size = sizes["image_size"]
  config.input.max_text_len = sizes["max_text_len"]
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.dtype(dtype)), params)
  return write_bundle(out, config, params, tokenizer,
                      {"step": 0, "dtype": dtype, "vocab_size": vocab_size, "source": f"{fmt}:{os.path.abspath(src)}"},
                      bundle_format)


def _unflatten(flat: dict) -> dict:
  tree = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def check_params(params, expected, where: str):
  """Raises ValueError naming the first param of `params` missing, extra or of another shape than
  in `expected` (a tree of ShapeDtypeStructs)."""
  got = {trainer.path_str(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  want = {trainer.path_str(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(expected)[0]}
  for path, shape in want.items():
    if path not in got:
      raise ValueError(f"{where}: param '{path}' is missing (the model expects shape {tuple(shape)})")
    if tuple(got[path]) != tuple(shape):
      raise ValueError(f"{where}: param '{path}' has shape {tuple(got[path])}, the model expects {tuple(shape)}")
  extra = sorted(set(got) - set(want))
  if extra:
    raise ValueError(f"{where}: param '{extra[0]}' is not a param of this model")


def bundle_info(bundle: str) -> tuple[ml_collections.ConfigDict, dict]:
  """-> (config, bundle.json) of a bundle folder; FileNotFoundError naming a missing file."""
  for name in ("config.json", "bundle.json"):
    if not os.path.exists(os.path.join(bundle, name)):
      raise FileNotFoundError(f"bundle: '{os.path.join(bundle, name)}' is missing (is '{bundle}' a bundle?)")
  with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(os.path.join(bundle, "bundle.json"), encoding="utf-8") as f:
    return config, json.load(f)


def is_bundle(path: str) -> bool:
  return os.path.exists(os.path.join(path, "bundle.json"))


def load_bundle_params(bundle: str, placement=None):
  """The params of a bundle (orbax or safetensors), placed by `placement` (a sharding; default:
  this process's first device)."""
  bundle = os.path.abspath(bundle)
  orbax_path, safetensors_path = os.path.join(bundle, "params"), os.path.join(bundle, "params.safetensors")
  placement = placement or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if os.path.exists(safetensors_path):
    from safetensors.numpy import load_file
    return jax.tree.map(lambda x: jax.device_put(x, placement), _unflatten(load_file(safetensors_path)))
  if not os.path.exists(orbax_path):
    raise FileNotFoundError(f"bundle: '{orbax_path}' (or params.safetensors) is missing")
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(orbax_path).item_metadata
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=placement), meta)
    return ckptr.restore(orbax_path, target)


def load_bundle(bundle: str, mesh=None, dtype: str | None = None):
  """-> (config, model, params, tokenizer or None); params replicated over `mesh` (default: this
  process's first device), cast to `dtype` when given, and checked against the model's shapes."""
  config, info = bundle_info(bundle)
  tokenizer_path = os.path.join(bundle, "tokenizer.model")
  tokenizer = Tokenizer.load(tokenizer_path) if os.path.exists(tokenizer_path) else None
  vocab_size = tokenizer.vocab_size if tokenizer else int(info["vocab_size"])
  model = trainer.build_model(config, vocab_size)
  mesh = mesh or sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  params = load_bundle_params(bundle, sharding.replicated(mesh))
  sample = trainer.sample_batch(config)
  expected = nn.meta.unbox(jax.eval_shape(
      lambda: model.init({"params": jax.random.PRNGKey(0)}, **trainer.model_inputs(model, sample, False))))
  check_params(params, expected["params"], f"bundle '{bundle}'")
  if dtype is not None:
    params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)
  return config, model, params, tokenizer


def main(argv):
  del argv
  quiet_absl_logging()
  source_format = FLAGS["from"].value
  try:
    if source_format:
      if not FLAGS.src:
        raise ValueError("export: --from needs --src FOLDER")
      out = import_from(source_format, FLAGS.src, FLAGS.out, FLAGS.tokenizer, FLAGS.dtype, FLAGS.format)
      print(f"Imported {source_format} weights from {FLAGS.src} into bundle {out}")
    elif FLAGS.to:
      out = export_to(FLAGS.to, FLAGS.out, FLAGS.workdir, FLAGS.bundle, FLAGS.step)
      print(f"Exported {FLAGS.workdir or FLAGS.bundle} as {FLAGS.to} to {out}")
    else:
      if not FLAGS.workdir:
        raise ValueError("export: give --workdir DIR (or --to FORMAT, or --from FORMAT --src FOLDER)")
      out = export(FLAGS.workdir, FLAGS.out, FLAGS.step, FLAGS.dtype, FLAGS.format)
      print(f"Exported {FLAGS.workdir} to {out}")
  except (FileNotFoundError, ValueError, config_lib.ConfigError) as e:
    print(f"vlmjax.export: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "A training workdir (its newest checkpoint, or --step).")
  flags.DEFINE_string("bundle", None, "A bundle, as the source of --to.")
  flags.DEFINE_string("out", None, "Bundle (or, with --to, format folder) to write.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Param dtype in the bundle.")
  flags.DEFINE_enum("format", "orbax", list(BUNDLE_FORMATS), "How the bundle stores its params.")
  flags.DEFINE_enum("to", None, list(interop.FORMATS), "Write another library's format instead of a bundle.")
  flags.DEFINE_enum("from", None, list(interop.FORMATS), "Import a folder in this format (--src) into a bundle.")
  flags.DEFINE_string("src", None, "With --from: the folder to import.")
  flags.DEFINE_string("tokenizer", None, "With --from: a vlmjax SentencePiece model for the bundle.")
  app.run(main)
