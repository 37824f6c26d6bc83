"""Inference bundles, and weights in and out of other libraries' formats.

  python -m vlmjax.export --workdir DIR --out BUNDLE [--step N] [--ema] [--dtype bfloat16] [--format safetensors]
  python -m vlmjax.export --workdir DIR --to open_clip --out FOLDER    # or --bundle B; hf_clip, hf_siglip, hf_llama,
                                                                       # hf_paligemma
  python -m vlmjax.export --from open_clip --src FOLDER --out BUNDLE [--tokenizer tokenizer.model]

A bundle (`vlmjax.run.Bundle`, which loads it) is a folder holding everything `vlmjax.predict`
needs and nothing of the training state: the params alone, as an orbax checkpoint (default) or one
safetensors file (either restores on any device count), the run's config and its tokenizer.
`--ema` exports the run's moving average of its params (`optimizer.ema_decay`) instead.

`--to` writes a folder open_clip, HF `CLIPModel`, HF `SiglipModel`, HF `LlamaForCausalLM`
(`GemmaForCausalLM` for a decoder with `scale_token_embeddings`) or HF `PaliGemmaForConditionalGeneration`
(a VLM trained with `input.prefix_attention='bidirectional'`) load (see vlmjax/interop);
`--from` reads one back into a bundle, which `c.init.workdir` also accepts (fine-tune from it), with
the source's own tokenizer (SigLIP's `spiece.model`, a `tokenizer.json`, PaliGemma's Gemma
`tokenizer.model`) unless --tokenizer names one; a PaliGemma import's bundle has PaliGemma's prefix-LM
(`input.prefix_attention='bidirectional'`).
`--from big_vision` (import only) reads big_vision's SigLIP `.npz` (--src: the file, or the folder
holding it) with the SentencePiece `*.model` beside it.

What --out may be: a new folder, an empty one, or, with --force, a previous output of the same kind
(a bundle; with --to, an export of the same format) holding only that output's own files. Anything
else is refused before anything is read or written: a training workdir or a folder of its outputs,
the source itself, a bundle's folder, a folder holding other files. The output is written into a
new folder beside --out and put in place only when complete; a previous output is deleted only
after that, so a failed export leaves --out as it was.
"""
import json
import os
import shutil
import tempfile

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vlmjax import cli, config as config_lib, interop
from vlmjax.data import tokenizer as tokenizer_lib
from vlmjax.metrics import quiet_absl_logging
from vlmjax.run import Bundle, RunDir
from vlmjax.workdir import LOCK

BUNDLE_FORMATS = ("orbax", "safetensors")
BUNDLE_FILES = (Bundle.PARAMS, Bundle.SAFETENSORS, Bundle.CONFIG, Bundle.TOKENIZER, Bundle.INFO)
RUN_FILES = (*RunDir.OUTPUTS, LOCK)  # what a training workdir holds of its own
# config.json's `model_type` of each HF format (open_clip's config has none).
MODEL_TYPES = {"hf_clip": ("clip",), "hf_siglip": ("siglip",), "hf_llama": ("llama", "gemma"),
               "hf_paligemma": ("paligemma",)}


def format_files(fmt: str) -> tuple[str, ...]:
  """The files `interop.write(fmt, ...)` writes: the weights, the config, then the others."""
  module = {"open_clip": interop.open_clip, "hf_clip": interop.hf_clip, "hf_siglip": interop.hf_siglip,
            "hf_llama": interop.hf_llama, "hf_paligemma": interop.hf_paligemma}[fmt]
  extra = (module.PREPROCESSOR_FILE,) if hasattr(module, "PREPROCESSOR_FILE") else ()
  return (module.WEIGHTS_FILE, module.CONFIG_FILE, *extra, interop.TOKENIZER_FILE)


def is_run(path: str) -> bool:
  """Whether `path` is a training workdir: checkpoints, metrics or a lock of a run, or a run's
  config.json (a bundle's config.json is a run's config too: bundles are not runs)."""
  if not os.path.isdir(path) or Bundle.holds_one(path):
    return False
  run = RunDir(path)
  if any(os.path.exists(run.file(name)) for name in (RunDir.CHECKPOINTS, RunDir.METRICS, LOCK)):
    return True
  try:
    with open(run.file(RunDir.CONFIG), encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(config, dict) and {"model", "objectives", "data"} <= set(config)


def _is_export(path: str, fmt: str) -> bool:
  """Whether the folder holds a `fmt` export: its weights and config (of the format's model type)."""
  weights, config_file = format_files(fmt)[:2]
  if not (os.path.isfile(os.path.join(path, weights)) and os.path.isfile(os.path.join(path, config_file))):
    return False
  if fmt not in MODEL_TYPES:
    return True
  try:
    with open(os.path.join(path, config_file), encoding="utf-8") as f:
      return json.load(f).get("model_type") in MODEL_TYPES[fmt]
  except (OSError, ValueError, AttributeError):
    return False


def check_out(out: str, kind: str, force: bool = False, sources: dict | None = None):
  """Raises ValueError (one line naming --out) unless `out` may receive a `kind` output ('bundle' or
  an interop format): see the module docstring. `sources`: {'--workdir': path, ...}, what is read."""
  out = os.path.abspath(out)
  what = "a bundle" if kind == "bundle" else f"an export to {kind}"
  for flag, source in (sources or {}).items():
    if source and os.path.realpath(out) == os.path.realpath(source):
      raise ValueError(f"export: --out '{out}' is the source ({flag}); give another folder for {what}")
  folder, below = os.path.dirname(out), os.path.basename(out)
  while True:  # the folders above --out: a bundle's, or a run's own outputs, are not for other files
    if os.path.exists(folder) and not os.path.isdir(folder):
      raise ValueError(f"export: --out '{out}': '{folder}' is a file, not a folder")
    if Bundle.holds_one(folder):
      raise ValueError(f"export: --out '{out}' is inside the bundle '{folder}'; give a folder outside it")
    if is_run(folder) and below in RUN_FILES:
      raise ValueError(f"export: --out '{out}' is inside '{os.path.join(folder, below)}', a training run's own "
                       "output; give another folder")
    if os.path.dirname(folder) == folder:
      break
    folder, below = os.path.dirname(folder), os.path.basename(folder)
  if not os.path.exists(out):
    return
  if not os.path.isdir(out):
    raise ValueError(f"export: --out '{out}' is a file, not a folder")
  if is_run(out):
    raise ValueError(f"export: --out '{out}' is a training workdir; give a new folder for {what}")
  entries = sorted(os.listdir(out))
  if not entries:
    return
  if kind == "bundle":
    previous, own = Bundle.holds_one(out), BUNDLE_FILES
  else:
    if Bundle.holds_one(out):
      raise ValueError(f"export: --out '{out}' is an inference bundle; give another folder for {what}")
    previous, own = _is_export(out, kind), format_files(kind)
  if not previous:
    raise ValueError(f"export: --out '{out}' is not empty and does not hold {what} (it holds "
                     f"'{entries[0]}'{' and more' if len(entries) > 1 else ''}); give a new or empty folder")
  others = [e for e in entries if e not in own]
  if others:
    raise ValueError(f"export: --out '{out}' holds {what} and other files ('{others[0]}'"
                     f"{' and more' if len(others) > 1 else ''}); move them out or give another folder")
  if not force:
    raise ValueError(f"export: --out '{out}' already holds {what}; pass --force to replace it")


def write_folder(out: str, write) -> str:
  """Runs `write(folder)` on a new folder beside `out`, then puts that folder at `out`: a complete
  output or none. A previous output at `out` (check_out: only its own files) is moved aside and
  deleted only once the new one is in place. OSError naming `out` when it cannot be written."""
  out = os.path.abspath(out)
  parent, name = os.path.split(out)
  # The pid makes the names this export's own: os.mkdir fails rather than reuse another's folder.
  staging = os.path.join(parent, f"{name}.partial-{os.getpid()}")
  previous = os.path.join(parent, f"{name}.previous-{os.getpid()}")
  moved = False
  try:
    os.makedirs(parent, exist_ok=True)
    os.mkdir(staging)
  except OSError as e:
    raise OSError(f"export: cannot write --out '{out}': {e}") from None
  try:
    write(staging)
    if os.path.isdir(out) and os.listdir(out):
      os.rename(out, previous)
      moved = True
    os.replace(staging, out)  # onto an empty folder, or none
  except BaseException as e:
    if moved and not os.path.exists(out):
      os.rename(previous, out)
    shutil.rmtree(staging, ignore_errors=True)
    if isinstance(e, OSError):
      raise OSError(f"export: cannot write --out '{out}': {e}") from None
    raise
  if moved:
    shutil.rmtree(previous)
  return out


def write_bundle(out: str, config, params, tokenizer_path: str | None, meta: dict,
                 fmt: str = "orbax", force: bool = False, sources: dict | None = None) -> str:
  """Writes a bundle folder (see the module docstring) atomically: a complete BUNDLE or none."""
  if fmt not in BUNDLE_FORMATS:
    raise ValueError(f"export: unknown bundle format '{fmt}'; known: {', '.join(BUNDLE_FORMATS)}")
  check_out(out, "bundle", force, sources)  # again: the folder may have changed while the source loaded
  config = ml_collections.ConfigDict(config.to_dict())
  config.tokenizer.path = ""

  def write(folder):
    bundle = Bundle(folder)
    if fmt == "orbax":
      with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(bundle.file(Bundle.PARAMS)), params)
    else:
      from safetensors.numpy import save_file
      flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)
              for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
      save_file(flat, bundle.file(Bundle.SAFETENSORS), metadata={"vlmjax": "params"})
    with open(bundle.file(Bundle.CONFIG), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=1))
    if tokenizer_path:
      shutil.copyfile(tokenizer_path, bundle.file(Bundle.TOKENIZER))
    with open(bundle.file(Bundle.INFO), "w", encoding="utf-8") as f:
      json.dump({**meta, "model": config.model.name, "format": fmt}, f, indent=1)

  return write_folder(out, write)


def check_workdir(workdir: str, flag: str = "--workdir"):
  """Raises FileNotFoundError / ValueError (one line naming `flag`) unless `workdir` is a training
  workdir, before anything is built from it."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"export: {flag} '{workdir}' does not exist or is not a folder")
  if Bundle.holds_one(workdir):
    raise ValueError(f"export: {flag} '{workdir}' is an inference bundle, not a training workdir (give it as "
                     "--bundle)")


def export(workdir: str, out: str, step: int | None = None, dtype: str = "float32", fmt: str = "orbax",
           force: bool = False, ema: bool = False) -> str:
  """A training workdir's checkpoint -> a bundle at `out` (params cast to `dtype`); `ema`: the
  run's moving average of its params (bundle.json then says "ema": true)."""
  sources = {"--workdir": workdir}
  check_out(out, "bundle", force, sources)
  check_workdir(workdir)
  run = RunDir(workdir)
  if ema:
    run.check_ema(run.read_config())
  loaded = run.load(step, ema=ema)
  params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), loaded.params)
  return write_bundle(out, loaded.config, params, run.tokenizer_file(loaded.config),
                      {"step": int(loaded.step), "dtype": dtype, "vocab_size": loaded.tokenizer.vocab_size,
                       "source": os.path.abspath(workdir), **({"ema": True} if ema else {})}, fmt, force, sources)


def export_to(fmt: str, out: str, workdir: str | None = None, bundle: str | None = None,
              step: int | None = None, force: bool = False) -> str:
  """A workdir's checkpoint or a bundle -> a folder in another library's format (vlmjax.interop)."""
  if fmt in interop.IMPORT_ONLY:
    raise ValueError(f"export: {fmt} is import only (--from {fmt}); vlmjax does not write its checkpoints")
  if bool(workdir) == bool(bundle):
    raise ValueError("export: give either --workdir or --bundle as the source")
  sources = {"--workdir": workdir} if workdir else {"--bundle": bundle}
  check_out(out, fmt, force, sources)
  if workdir:
    check_workdir(workdir)
  source = RunDir(workdir) if workdir else Bundle(bundle)
  loaded = source.load(step)
  prefix_attention = loaded.config.input.get("prefix_attention", "causal")
  if fmt == "hf_paligemma" and prefix_attention != "bidirectional":
    raise ValueError(f"export: hf_paligemma: the run's input.prefix_attention is '{prefix_attention}', but PaliGemma's "
                     "image, BOS and prompt attend as one bidirectional block (train with 'bidirectional')")
  if workdir:
    tokenizer_path = source.tokenizer_file(loaded.config)
  else:
    tokenizer_path = source.file(Bundle.TOKENIZER) if loaded.tokenizer else None
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), loaded.params)
  check_out(out, fmt, force, sources)
  return write_folder(out, lambda folder: interop.write(fmt, folder, loaded.config.model.to_dict(), params,
                                                        tokenizer_path))


def import_from(fmt: str, src: str, out: str, tokenizer: str | None = None, dtype: str = "float32",
                bundle_format: str = "orbax", force: bool = False) -> str:
  """A folder in another library's format -> a bundle. The tokenizer: `tokenizer` (any file `tokenizer.load`
  reads), else the source's own (hf_siglip: spiece.model under SigLIP's conventions; big_vision: the *.model
  beside the .npz under big_vision's; hf_clip, hf_llama: tokenizer.json; hf_paligemma: tokenizer.model under
  Gemma's conventions, `tokenizer.GEMMA`), else a tokenizer.model in `src` as `export_to` leaves there. It must
  have one id per row of the token embedding (hf_paligemma: the rows past its ids are dropped,
  `hf_paligemma.fit_vocab`); without one the bundle holds no tokenizer (images only, or `c.init`)."""
  sources = {"--src": src}
  check_out(out, "bundle", force, sources)
  if not os.path.isdir(src) and not (fmt == "big_vision" and os.path.isfile(src)):  # big_vision: the .npz too
    raise FileNotFoundError(f"export: --src '{src}' does not exist or is not a folder")
  if tokenizer is not None and not os.path.isfile(tokenizer):
    raise FileNotFoundError(f"export: --tokenizer '{tokenizer}' does not exist")
  model, params, sizes = interop.read(fmt, src)
  embedding = params["text"]["token_embed"]["embedding"] if "text" in params else params["decoder"]["embedding"]
  vocab_size = int(embedding.shape[0])
  # The source's own file before tokenizer.model: a Hugging Face folder may hold both (Llama 2's SentencePiece
  # tokenizer.model beside its tokenizer.json), while a vlmjax export writes tokenizer.model alone.
  native = {"hf_siglip": "spiece.model", "hf_clip": "tokenizer.json", "hf_llama": "tokenizer.json",
            "hf_paligemma": interop.TOKENIZER_FILE}.get(fmt)
  if tokenizer is not None:
    tok = tokenizer_lib.load(tokenizer)
  elif fmt == "big_vision" and interop.big_vision.tokenizer_file(src):
    tokenizer = interop.big_vision.tokenizer_file(src)
    with open(tokenizer, "rb") as f:
      tok = tokenizer_lib.SentencePieceTokenizer(f.read(), **tokenizer_lib.BIG_VISION_SIGLIP)
  elif native and os.path.isfile(os.path.join(src, native)):
    tokenizer = os.path.join(src, native)
    if fmt == "hf_siglip":
      with open(tokenizer, "rb") as f:
        tok = tokenizer_lib.SentencePieceTokenizer(f.read(), **tokenizer_lib.SIGLIP)
    elif fmt == "hf_paligemma":  # Gemma's SentencePiece model, or the vlmjax tokenizer an export left there
      tok = interop.hf_paligemma.read_tokenizer(tokenizer)
    else:
      with open(tokenizer, encoding="utf-8") as f:
        tok = tokenizer_lib.BPETokenizer.from_tokenizer_json(f.read())
  elif os.path.exists(os.path.join(src, interop.TOKENIZER_FILE)):
    tokenizer = os.path.join(src, interop.TOKENIZER_FILE)
    tok = tokenizer_lib.load(tokenizer)
  else:
    tok = None
  if tok is not None and fmt == "hf_paligemma":  # its table's rows past the tokenizer's ids: <image>, padding
    params = interop.hf_paligemma.fit_vocab(params, tok.vocab_size)
    vocab_size = int(params["decoder"]["embedding"].shape[0])
  if tok is not None:
    tokenizer_lib.check_vocab(tok, vocab_size, f"export: tokenizer '{tokenizer}'")
    text = model.get("text")
    if text and text.get("pool", "eos") != "last":  # where the tower reads the end of the text
      text["eos_id"] = tokenizer_lib.text_eos_id(tok)
  config = config_lib.base_config()
  config.model = model
  if "image_size" in sizes:
    config.input.image_size = sizes["image_size"]
  config.input.max_text_len = sizes["max_text_len"]
  if "prefix_attention" in sizes:
    config.input.prefix_attention = sizes["prefix_attention"]
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.dtype(dtype)), params)
  meta = {"step": 0, "dtype": dtype, "vocab_size": vocab_size, "source": f"{fmt}:{os.path.abspath(src)}"}
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer_path = None
    if tok is not None:  # the one file every kind saves as, whatever it was read from
      tokenizer_path = os.path.join(tmp, interop.TOKENIZER_FILE)
      tok.save(tokenizer_path)
    return write_bundle(out, config, params, tokenizer_path, meta, bundle_format, force, sources)


def check_flags():
  """Refuses flags that do not fit together (one line naming them), before anything is read."""
  source_format = FLAGS["from"].value
  if source_format and FLAGS.to:
    raise ValueError("export: give --to (write another format) or --from (read one), not both")
  if source_format:
    mode, allowed = f"--from {source_format}", ("src", "tokenizer", "dtype", "format")
    if not FLAGS.src:
      raise ValueError("export: --from needs --src FOLDER")
  elif FLAGS.to:
    mode, allowed = f"--to {FLAGS.to}", ("workdir", "bundle", "step")
  else:
    mode, allowed = "a bundle export from --workdir", ("workdir", "step", "dtype", "format", "ema")
    if not FLAGS.workdir:
      raise ValueError("export: give --workdir DIR (or --to FORMAT, or --from FORMAT --src FOLDER)")
  for name in ("workdir", "bundle", "step", "dtype", "format", "src", "tokenizer", "ema"):
    if FLAGS[name].present and name not in allowed:
      raise ValueError(f"export: --{name} does not apply to {mode}")


def main(argv):
  quiet_absl_logging()
  if len(argv) > 1:
    cli.fail("export", f"export: unexpected arguments: {' '.join(argv[1:])}")
  source_format = FLAGS["from"].value
  try:
    check_flags()
    if source_format:
      out = import_from(source_format, FLAGS.src, FLAGS.out, FLAGS.tokenizer, FLAGS.dtype, FLAGS.format,
                        FLAGS.force)
      print(f"Imported {source_format} weights from {FLAGS.src} into bundle {out}")
    elif FLAGS.to:
      out = export_to(FLAGS.to, FLAGS.out, FLAGS.workdir, FLAGS.bundle, FLAGS.step, FLAGS.force)
      print(f"Exported {FLAGS.workdir or FLAGS.bundle} as {FLAGS.to} to {out}")
    else:
      out = export(FLAGS.workdir, FLAGS.out, FLAGS.step, FLAGS.dtype, FLAGS.format, FLAGS.force, FLAGS.ema)
      print(f"Exported {FLAGS.workdir} to {out}")
  except (OSError, ValueError, config_lib.ConfigError) as e:  # OSError: FileNotFoundError, a full disk...
    cli.fail("export", e)


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "A training workdir (its newest checkpoint, or --step).")
  flags.DEFINE_string("bundle", None, "A bundle, as the source of --to.")
  flags.DEFINE_string("out", None, "Bundle (or, with --to, format folder) to write: a new or empty folder.",
                      required=True)
  flags.DEFINE_boolean("force", False, "Replace a previous bundle at --out (with --to: a previous export of "
                       "the same format); nothing else is ever replaced.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_boolean("ema", False, "Export the run's EMA of its params (optimizer.ema_decay > 0).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Param dtype in the bundle.")
  flags.DEFINE_enum("format", "orbax", list(BUNDLE_FORMATS), "How the bundle stores its params.")
  flags.DEFINE_enum("to", None, list(interop.FORMATS), "Write another library's format instead of a bundle.")
  flags.DEFINE_enum("from", None, list(interop.FORMATS), "Import a folder in this format (--src) into a bundle.")
  flags.DEFINE_string("src", None, "With --from: the folder to import (big_vision: or its .npz).")
  flags.DEFINE_string("tokenizer", None, "With --from: a tokenizer file for the bundle (a vlmjax tokenizer.model "
                      "or a tokenizer.json); default: the source folder's own.")
  app.run(main, flags_parser=cli.flags_parser("export"))
