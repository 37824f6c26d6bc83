"""Inference bundles, and weights in and out of other libraries' formats.

  python -m vlmjax.export --workdir DIR --out BUNDLE [--step N] [--dtype bfloat16] [--format safetensors]
  python -m vlmjax.export --workdir DIR --to open_clip --out FOLDER    # or --bundle B; hf_clip, hf_llama
  python -m vlmjax.export --from open_clip --src FOLDER --out BUNDLE [--tokenizer tokenizer.model]

A bundle (`vlmjax.run.Bundle`, which loads it) is a folder holding everything `vlmjax.predict`
needs and nothing of the training state: the params alone, as an orbax checkpoint (default) or one
safetensors file (either restores on any device count), the run's config and its tokenizer.

`--to` writes a folder open_clip, HF `CLIPModel` or HF `LlamaForCausalLM` (`GemmaForCausalLM` for a
decoder with `scale_token_embeddings`) load (see vlmjax/interop);
`--from` reads one back into a bundle, which `c.init.workdir` also accepts (fine-tune from it). An
existing BUNDLE is replaced only once the new one is complete.
"""
import json
import os
import shutil

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vlmjax import cli, config as config_lib, interop
from vlmjax.data.tokenizer import Tokenizer
from vlmjax.metrics import quiet_absl_logging
from vlmjax.run import Bundle, RunDir

BUNDLE_FORMATS = ("orbax", "safetensors")


def write_bundle(out: str, config, params, tokenizer_path: str | None, meta: dict,
                 fmt: str = "orbax") -> str:
  """Writes a bundle folder (see the module docstring) atomically: a complete BUNDLE or none."""
  if fmt not in BUNDLE_FORMATS:
    raise ValueError(f"export: unknown bundle format '{fmt}'; known: {', '.join(BUNDLE_FORMATS)}")
  out = os.path.abspath(out)
  staging = out + ".partial"
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  bundle = Bundle(staging)
  if fmt == "orbax":
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.abspath(bundle.file(Bundle.PARAMS)), params)
  else:
    from safetensors.numpy import save_file
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)
            for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    save_file(flat, bundle.file(Bundle.SAFETENSORS), metadata={"vlmjax": "params"})
  config = ml_collections.ConfigDict(config.to_dict())
  config.tokenizer.path = ""
  with open(bundle.file(Bundle.CONFIG), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=1))
  if tokenizer_path:
    shutil.copyfile(tokenizer_path, bundle.file(Bundle.TOKENIZER))
  with open(bundle.file(Bundle.INFO), "w", encoding="utf-8") as f:
    json.dump({**meta, "model": config.model.name, "format": fmt}, f, indent=1)
  shutil.rmtree(out, ignore_errors=True)
  os.replace(staging, out)
  return out


def export(workdir: str, out: str, step: int | None = None, dtype: str = "float32", fmt: str = "orbax") -> str:
  """A training workdir's checkpoint -> a bundle at `out` (params cast to `dtype`)."""
  run = RunDir(workdir)
  loaded = run.load(step)
  params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), loaded.params)
  return write_bundle(out, loaded.config, params, run.tokenizer_file(loaded.config),
                      {"step": int(loaded.step), "dtype": dtype, "vocab_size": loaded.tokenizer.vocab_size,
                       "source": os.path.abspath(workdir)}, fmt)


def export_to(fmt: str, out: str, workdir: str | None = None, bundle: str | None = None,
              step: int | None = None) -> str:
  """A workdir's checkpoint or a bundle -> a folder in another library's format (vlmjax.interop)."""
  if bool(workdir) == bool(bundle):
    raise ValueError("export: give either --workdir or --bundle as the source")
  source = RunDir(workdir) if workdir else Bundle(bundle)
  loaded = source.load(step)
  if workdir:
    tokenizer_path = source.tokenizer_file(loaded.config)
  else:
    tokenizer_path = source.file(Bundle.TOKENIZER) if loaded.tokenizer else None
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), loaded.params)
  return interop.write(fmt, out, loaded.config.model.to_dict(), params, tokenizer_path)


def import_from(fmt: str, src: str, out: str, tokenizer: str | None = None, dtype: str = "float32",
                bundle_format: str = "orbax") -> str:
  """A folder in another library's format -> a bundle. The tokenizer (default: a tokenizer.model in
  `src`, as `export_to` leaves there) must be a vlmjax SentencePiece model with one piece per row
  of the token embedding; without one the bundle holds no tokenizer (images only, or `c.init`)."""
  model, params, sizes = interop.read(fmt, src)
  embedding = params["text"]["token_embed"]["embedding"] if "text" in params else params["decoder"]["embedding"]
  vocab_size = int(embedding.shape[0])
  if tokenizer is None and os.path.exists(os.path.join(src, interop.TOKENIZER_FILE)):
    tokenizer = os.path.join(src, interop.TOKENIZER_FILE)
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
    cli.fail("export", e)


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
