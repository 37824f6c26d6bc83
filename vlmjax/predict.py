"""Predictions from an inference bundle (`vlmjax.export`) on your own image files and texts.

  python -m vlmjax.predict --bundle B embed IMAGES... --out emb.npy         # or --text "..." (repeatable)
  python -m vlmjax.predict --bundle B classify IMAGES... [--classes "red circle,blue square"] [--top_k 5]
  python -m vlmjax.predict --bundle B retrieve IMAGES... --query "a red circle" [--top_k 8] [--grid out.png]
  python -m vlmjax.predict --bundle B caption IMAGES... [--max_new_tokens 32] [--temperature 0] [--beam_size 4]

IMAGES are files and/or folders (searched recursively for .png/.jpg/.jpeg/.bmp/.gif/.webp/.tif).
Images are read and resized exactly as the evaluators read them (`pipeline.Preprocess`), embedded in
fixed-size batches by one jitted function per tower (data-parallel over `--devices`, params
replicated), with a progress bar when there is more than one batch. An unreadable image stops the
run with one line naming it (or is left out with a warning under `--skip_unreadable`).

- `embed` writes float32 [N, E] L2-normalised embeddings to --out and the inputs, one a line, to
  the same name with .txt.
- `classify` ranks --classes (default: the classes the bundle's zero-shot evaluator uses) by the
  cosine similarity of the image with each class's prompt-ensemble embedding (the evaluator's own
  computation); scores are softmax(exp(logit_scale) · cos) over the classes, or for a model
  trained with a sigmoid objective (SigLIP) each class's sigmoid(exp(logit_scale) · cos + logit_bias).
- `retrieve` ranks the images by cosine similarity with each --query; --grid draws each query with
  its top images and their scores into a PNG.
- `caption` (a VLM bundle) writes a caption for each image, generated with the KV cache exactly as
  the captioning evaluator generates (greedy, --temperature > 0 sampling from the --top_k pieces, or
  beam search with --beam_size > 1 and --length_penalty; --min_length and --repetition_penalty for
  any; at most --max_new_tokens pieces).
Add --json FILE to `classify` / `retrieve` / `caption` for machine-readable results, and
--image_size S to any command to run the model at S px (its learned position table resampled).

Every mistake in the flags (a value out of range, a flag the command does not use, a folder where a
file is to be written, an empty or repeated class) is refused in one line naming the flag, before
the bundle is loaded and before anything is written. The outputs (--out, --json, --grid) are the
files named, replaced when they exist; never a folder, a file of the bundle or an input image.
"""
import json
import os
import string
import sys
import types

from absl import app, flags
import jax
import numpy as np
from PIL import Image, ImageDraw
import tqdm

from vlmjax import cli, registry, sharding
from vlmjax.data import pipeline
from vlmjax.evals.captioning import decoding_options, generation_prefix
from vlmjax.evals.common import Embedder
from vlmjax.evals.zeroshot import DEFAULT_PROMPTS, ZeroShot
from vlmjax.metrics import quiet_absl_logging
from vlmjax.models.generate import make_generate
from vlmjax.run import Bundle, RunDir

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
COMMANDS = ("embed", "classify", "retrieve", "caption")
DUAL_ENCODER_COMMANDS = ("embed", "classify", "retrieve")
# The commands each flag is for; any other command refuses it rather than ignore it.
FLAG_COMMANDS = {
    "out": ("embed",), "text": ("embed",), "classes": ("classify",), "classes_file": ("classify",),
    "prompt": ("classify",), "query": ("retrieve",), "grid": ("retrieve",), "max_new_tokens": ("caption",),
    "temperature": ("caption",), "seed": ("caption",), "top_k": ("classify", "retrieve", "caption"),
    "beam_size": ("caption",), "length_penalty": ("caption",), "min_length": ("caption",),
    "repetition_penalty": ("caption",),
    "json": ("classify", "retrieve", "caption")}


class PredictError(ValueError):
  """Bad input: the message is one line naming the file, flag or bundle at fault."""


def at_least(flag: str, value, least):
  if value < least:
    raise PredictError(f"predict: --{flag} must be at least {least} (got {value})")


def check_numbers(command: str | None = None, batch_size: int = 1, devices: int = 0, top_k: int = 1,
                  max_new_tokens: int = 1, temperature: float = 0.0):
  """Raises PredictError naming the first number out of range (for `command`, when given)."""
  at_least("batch_size", batch_size, 1)
  at_least("devices", devices, 0)  # 0: all of this process's
  if command in ("classify", "retrieve"):
    at_least("top_k", top_k, 1)
  if command == "caption":
    at_least("max_new_tokens", max_new_tokens, 1)
    at_least("temperature", temperature, 0)
    at_least("top_k", top_k, 0)  # 0: sample from every piece


def check_classes(class_names):
  """Raises PredictError on an empty or repeated class name (the ranking would be meaningless)."""
  seen = set()
  for name in class_names:
    if not name.strip():
      raise PredictError("predict: --classes holds an empty class name")
    if name in seen:
      raise PredictError(f"predict: class '{name}' is named twice in --classes / --classes_file")
    seen.add(name)


def check_prompts(prompts):
  """Raises PredictError unless each prompt template holds exactly one '{}' (where the class goes)."""
  for prompt in prompts:
    try:
      fields = [field for _, field, _, _ in string.Formatter().parse(prompt) if field is not None]
    except ValueError:  # a lone '{' or '}'
      fields = None
    if fields != [""]:
      raise PredictError(f"predict: --prompt '{prompt}' must hold '{{}}' exactly once, where the class name goes "
                         "(write '{{' and '}}' for literal braces)")


def list_images(paths) -> list[str]:
  """Files as given, folders expanded to their image files (recursively, sorted)."""
  out = []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(os.path.join(root, f) for root, _, files in os.walk(path) for f in files
                     if f.lower().endswith(IMAGE_EXTENSIONS))
      if not found:
        raise PredictError(f"predict: no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder '{path}'")
      out += found
    elif os.path.isfile(path):
      out.append(path)
    else:
      raise PredictError(f"predict: no such file or folder '{path}'")
  if not out:
    raise PredictError("predict: no images given (name image files or folders after the command)")
  return out


class Predictor:
  """A bundle's dual encoder, ready to embed image files and texts.

  `embed_images(paths) -> (kept paths, [N, E])`, `embed_texts(texts) -> [N, E]`, float32,
  L2-normalised; batches of `batch_size` (rounded up to a multiple of the devices). `image_size`:
  run the model at that resolution, its position table resampled (default: the bundle's)."""

  def __init__(self, bundle: str, devices: int = 0, batch_size: int = 64, skip_unreadable: bool = False,
               progress: bool = True, image_size: int | None = None):
    check_bundle(bundle)
    check_numbers(batch_size=batch_size, devices=devices)
    available = jax.local_devices()
    devices = devices or len(available)
    if devices > len(available):
      raise PredictError(f"predict: --devices {devices} but this process has {len(available)}")
    self.mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1), available[:devices])
    loaded = Bundle(bundle).load(mesh=self.mesh, dtype="float32", image_size=image_size)
    self.config, self.model, params, self.tokenizer = loaded.config, loaded.model, loaded.params, loaded.tokenizer
    self.rules = loaded.experiment.rules
    self.bundle, self.params = bundle, params
    self.batch_size = -(-batch_size // devices) * devices
    self.embedder = Embedder(self.model, params, self.mesh, self.batch_size, self.rules)
    self.preprocess = pipeline.Preprocess(None, self.config.input.image_size, self.config.input.max_text_len)
    self.skip_unreadable, self.progress = skip_unreadable, progress

  def read_image(self, path: str):
    """-> [S, S, 3] float32 in [-1, 1], exactly as the evaluators preprocess, or None when
    unreadable and `skip_unreadable` (else PredictError naming the file)."""
    try:
      with open(path, "rb") as f:
        data = f.read()
      if not data:
        raise ValueError("the file is empty")
      image = pipeline.decode_image(data)
      if min(image.size) == 0:
        raise ValueError(f"the image is {image.size[0]}x{image.size[1]}")
    except Exception as e:  # pylint: disable=broad-except  # PIL raises many types for bad files
      message = f"predict: cannot read image '{path}': {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
      if not self.skip_unreadable:
        raise PredictError(message) from None
      print(f"{message} (skipped)", file=sys.stderr)
      return None
    return self.preprocess.augment(image, None)

  def _bar(self, total: int, unit: str):
    return tqdm.tqdm(total=total, unit=unit, leave=False, dynamic_ncols=True,
                     disable=not self.progress or total <= self.batch_size)

  def embed_images(self, paths):
    kept, out = [], []
    with self._bar(len(paths), "image") as bar:
      for start in range(0, len(paths), self.batch_size):
        chunk = paths[start:start + self.batch_size]
        pixels = [(p, self.read_image(p)) for p in chunk]
        pixels = [(p, x) for p, x in pixels if x is not None]
        if pixels:
          kept += [p for p, _ in pixels]
          out.append(self.embedder.embed_images(np.stack([x for _, x in pixels])))
        bar.update(len(chunk))
    if not out:
      raise PredictError("predict: none of the images could be read")
    return kept, np.concatenate(out)

  def tokenize(self, texts):
    if self.tokenizer is None:
      raise PredictError(f"predict: bundle '{self.bundle}' has no tokenizer.model, so texts cannot be encoded "
                         "(import it with --tokenizer)")
    return self.tokenizer.encode(list(texts), self.config.input.max_text_len)

  def embed_texts(self, texts):
    tokens = self.tokenize(texts)
    out = []
    with self._bar(len(texts), "text") as bar:
      for start in range(0, len(tokens), self.batch_size):
        out.append(self.embedder.embed_texts(tokens[start:start + self.batch_size]))
        bar.update(len(out[-1]))
    return np.concatenate(out)

  def logit_scale(self) -> float:
    return float(np.exp(np.asarray(self.params["logit_scale"])))

  # --- what the zero-shot evaluator would use ------------------------------------------------------

  def zeroshot_eval_config(self):
    for cfg in self.config.get("evals", {}).values():
      if cfg.get("type") == "zeroshot":
        return cfg
    return {}

  def default_classes(self):
    names = self.zeroshot_eval_config().get("class_names", ())
    names = ZeroShot(name="predict", class_names=names).class_names if names else ()
    if not names and self.config.data.name == "vlmjax_shapes":
      from vlmjax.data import shapes
      names = tuple(shapes.CLASS_NAMES)
    if not names:
      raise PredictError("predict: the bundle's config names no classes; give --classes or --classes_file")
    return names

  def sigmoid_scores(self) -> bool:
    """Whether the model was trained to score pairs by a sigmoid (SigLIP), not a softmax over them."""
    return any(getattr(registry.get("objective", name), "probability", "softmax") == "sigmoid"
               for name in self.config.get("objectives", {}) if name in registry.names("objective"))

  def default_prompts(self):
    prompts = self.zeroshot_eval_config().get("prompts", ())
    if prompts:
      return ZeroShot(name="predict", prompts=prompts).prompts
    if self.config.data.name == "vlmjax_shapes":
      from vlmjax.data import shapes
      return shapes.zero_shot_prompts
    return DEFAULT_PROMPTS

  def class_embeddings(self, class_names, prompts):
    """[C, E]: the normalised mean prompt embedding of each class (ZeroShot.class_embeddings)."""
    ctx = types.SimpleNamespace(embedder=self.embedder, tokenize=self.tokenize)
    return ZeroShot(name="predict").class_embeddings(ctx, class_names, prompts)


# --- the commands ----------------------------------------------------------------------------------

def classify(predictor: Predictor, paths, class_names=(), prompts=(), top_k: int = 5):
  """-> [{'image': path, 'top': [(class, score), ...]}] (top_k best first)."""
  check_numbers("classify", top_k=top_k)
  class_names = tuple(class_names) or predictor.default_classes()
  check_classes(class_names)
  check_prompts(prompts)
  classes = predictor.class_embeddings(class_names, tuple(prompts) or predictor.default_prompts())
  kept, images = predictor.embed_images(list_images(paths))
  logits = predictor.logit_scale() * images @ classes.T
  if predictor.sigmoid_scores():
    probs = 1 / (1 + np.exp(-(logits + float(np.asarray(predictor.params["logit_bias"])))))
  else:
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
  # Rank by cosine (as the evaluator does): sigmoid and softmax are monotone in it, ties included.
  order = np.argsort(-(images @ classes.T), axis=1, kind="stable")[:, :top_k]
  return [{"image": p, "top": [(class_names[j], float(probs[i, j])) for j in order[i]]}
          for i, p in enumerate(kept)]


def retrieve(predictor: Predictor, paths, queries, top_k: int = 8):
  """-> [{'query': text, 'top': [(path, cosine), ...]}] (top_k best first)."""
  check_numbers("retrieve", top_k=top_k)
  if not queries:
    raise PredictError("predict: retrieve needs --query TEXT (repeatable)")
  if not all(q.strip() for q in queries):
    raise PredictError("predict: --query holds an empty text")
  kept, images = predictor.embed_images(list_images(paths))
  sims = predictor.embed_texts(queries) @ images.T
  order = np.argsort(-sims, axis=1, kind="stable")[:, :top_k]
  return [{"query": q, "top": [(kept[j], float(sims[i, j])) for j in order[i]]} for i, q in enumerate(queries)]


def draw_grid(results, out: str, thumb: int = 128) -> str:
  """One row per query: the query's text, then its top images with their scores under them -> PNG."""
  cols = max(len(r["top"]) for r in results)
  text_w, label_h, pad = 2 * thumb, 16, 6
  width = text_w + cols * (thumb + pad) + pad
  height = len(results) * (thumb + label_h + pad) + pad
  canvas = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(canvas)
  for row, result in enumerate(results):
    y = pad + row * (thumb + label_h + pad)
    words, lines = result["query"].split(), [""]
    for word in words:  # wrap the query to the text column
      candidate = f"{lines[-1]} {word}".strip()
      if draw.textlength(candidate) > text_w - 2 * pad and lines[-1]:
        lines.append(word)
      else:
        lines[-1] = candidate
    draw.multiline_text((pad, y + 4), "\n".join(lines), fill="black")
    for col, (path, score) in enumerate(result["top"]):
      x = text_w + col * (thumb + pad)
      with Image.open(path) as image:
        canvas.paste(image.convert("RGB").resize((thumb, thumb), Image.BILINEAR), (x, y))
      draw.text((x, y + thumb + 2), f"#{col + 1}  cos {score:.3f}", fill="black")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  canvas.save(out)
  return out


def embed(predictor: Predictor, paths=(), texts=(), out: str = "") -> tuple[list, np.ndarray]:
  """-> (inputs, [N, E]); written to `out` (.npy) and its .txt list of inputs when given."""
  if bool(paths) == bool(texts):
    raise PredictError("predict: embed takes image files/folders or --text, not both, not neither")
  if texts:
    inputs, embeddings = list(texts), predictor.embed_texts(texts)
  else:
    inputs, embeddings = predictor.embed_images(list_images(paths))
  if out:
    check_output("out", out, ".npy")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.save(out, embeddings.astype(np.float32))
    with open(inputs_file(out), "w", encoding="utf-8") as f:
      f.write("".join(s.replace("\n", " ") + "\n" for s in inputs))
  return inputs, embeddings


def caption(predictor: Predictor, paths, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
            seed: int = 0, beam_size: int = 1, length_penalty: float = 0.0, min_length: int = 0,
            repetition_penalty: float = 1.0):
  """A caption for each readable image -> [{'image': path, 'caption': text}], in input order. The
  images go through the model in fixed-size batches (the last one padded), one jitted generation."""
  model, config = predictor.model, predictor.config
  check_numbers("caption", top_k=top_k, max_new_tokens=max_new_tokens, temperature=temperature)
  decoding = _decoding(max_new_tokens, temperature, beam_size, length_penalty, min_length, repetition_penalty)
  if not hasattr(model, "num_image_tokens") or model.num_image_tokens(config.input.image_size) == 0:
    raise PredictError(f"predict: bundle '{predictor.bundle}' holds a '{config.model.name}' model; caption "
                       "needs a vlm")
  if predictor.tokenizer is None:
    raise PredictError(f"predict: bundle '{predictor.bundle}' has no tokenizer.model to decode captions with")
  if top_k > predictor.tokenizer.vocab_size:
    raise PredictError(f"predict: --top_k {top_k} is more than the tokenizer's {predictor.tokenizer.vocab_size} "
                       "pieces")
  tok = predictor.tokenizer
  prefix, kinds = generation_prefix(model.num_image_tokens(config.input.image_size),
                                    pipeline.prompt_ids(tok, config.input), tok.bos_id,
                                    pipeline.prefix_attention(config.input))
  generate = make_generate(model, max_new_tokens, temperature, top_k, tok.eos_id, **decoding)
  size = predictor.batch_size
  prefixes = sharding.global_batch(np.tile(prefix, (size, 1)), predictor.mesh)
  prefix_kinds = sharding.global_batch(np.tile(kinds, (size, 1)), predictor.mesh)
  rng, results = jax.random.PRNGKey(seed), []
  with predictor._bar(len(paths), "image") as bar:  # pylint: disable=protected-access
    for i, start in enumerate(range(0, len(paths), size)):
      pixels = [(p, predictor.read_image(p)) for p in paths[start:start + size]]
      pixels = [(p, x) for p, x in pixels if x is not None]
      if pixels:
        images = np.stack([x for _, x in pixels]).astype(np.float32)
        images = np.concatenate([images, np.zeros((size - len(images),) + images.shape[1:], np.float32)])
        with predictor.embedder.use():
          tokens = generate(predictor.params, prefixes, jax.random.fold_in(rng, i),
                            sharding.global_batch(images, predictor.mesh), prefix_kinds)
        texts = predictor.tokenizer.decode(np.asarray(jax.device_get(tokens))[:len(pixels)])
        results += [{"image": p, "caption": t} for (p, _), t in zip(pixels, texts)]
      bar.update(min(size, len(paths) - start))
  if not results:
    raise PredictError("predict: none of the images could be read")
  return results


def _decoding(max_new_tokens, temperature, beam_size, length_penalty, min_length, repetition_penalty) -> dict:
  """The captioning evaluator's checks of the decoding options, as PredictError naming the flag."""
  try:
    return decoding_options("predict", max_new_tokens, temperature, beam_size, length_penalty, min_length,
                            repetition_penalty)
  except ValueError as e:
    flag = next(name for name in ("beam_size", "min_length", "repetition_penalty") if name in str(e))
    raise PredictError(str(e).replace(f"predict: {flag}", f"predict: --{flag}", 1)) from None


def _classes_from_flags(opts) -> tuple:
  names = list(opts.classes or [])
  if opts.classes_file:
    if not os.path.isfile(opts.classes_file):
      raise PredictError(f"predict: --classes_file '{opts.classes_file}' does not exist")
    with open(opts.classes_file, encoding="utf-8") as f:
      from_file = [line.strip() for line in f if line.strip()]
    if not from_file:
      raise PredictError(f"predict: --classes_file '{opts.classes_file}' names no classes")
    names += from_file
  return tuple(n.strip() for n in names)


def check_bundle(bundle: str):
  """Raises PredictError (one line naming --bundle) unless `bundle` is a bundle's folder."""
  if not os.path.isdir(bundle):
    raise PredictError(f"predict: --bundle '{bundle}' does not exist or is not a folder")
  if Bundle.holds_one(bundle):
    return
  if os.path.isdir(RunDir(bundle).file(RunDir.CHECKPOINTS)):
    raise PredictError(f"predict: --bundle '{bundle}' is a training workdir, not a bundle; make one with "
                       f"python -m vlmjax.export --workdir {bundle} --out BUNDLE")
  raise PredictError(f"predict: --bundle '{bundle}' is not a bundle (it has no {Bundle.INFO})")


def inputs_file(out: str) -> str:
  """embed's list of inputs: --out's name with .txt."""
  return os.path.splitext(out)[0] + ".txt"


def check_output(flag: str, path: str, suffix: str | None = None, bundle: str | None = None, inputs=()):
  """Raises PredictError unless `path` names a file (ending in `suffix`, when given) that may be
  written: not a folder, not inside the bundle, not one of the input images."""
  if not path:
    raise PredictError(f"predict: --{flag} needs a file name")
  if path.endswith(os.sep) or os.path.isdir(path):
    raise PredictError(f"predict: --{flag} '{path}' is a folder; give a file name" +
                       (f" ending in {suffix}" if suffix else ""))
  if suffix and not path.lower().endswith(suffix):
    raise PredictError(f"predict: --{flag} '{path}' must end in {suffix}")
  real = os.path.realpath(path)
  if bundle and os.path.commonpath([real, os.path.realpath(bundle)]) == os.path.realpath(bundle):
    raise PredictError(f"predict: --{flag} '{path}' is inside the bundle '{bundle}'; write it elsewhere")
  if real in {os.path.realpath(p) for p in inputs}:
    raise PredictError(f"predict: --{flag} '{path}' is one of the input images")


def check_flags(command: str, args, opts, given):
  """Refuses, in one line naming the flag, what `run` would otherwise find late or not at all: a
  flag `command` does not use (`given`: the flags on the command line), a value out of range, an
  output that is a folder or an input, an empty --classes. Nothing is loaded or written."""
  if command not in COMMANDS:
    raise PredictError(f"predict: unknown command '{command}'; known: {', '.join(COMMANDS)}")
  for name in given:
    if command not in FLAG_COMMANDS[name]:
      raise PredictError(f"predict: --{name} is for {' / '.join(FLAG_COMMANDS[name])}, not {command}")
  if command == "caption" and opts.temperature == 0:
    for name in ("top_k", "seed"):
      if name in given:
        raise PredictError(f"predict: --{name} applies to caption only when sampling (--temperature above 0)")
  check_numbers(command, opts.batch_size, opts.devices, opts.top_k, opts.max_new_tokens, opts.temperature)
  if command == "caption":
    _decoding(opts.max_new_tokens, opts.temperature, getattr(opts, "beam_size", 1),
              getattr(opts, "length_penalty", 0.0), getattr(opts, "min_length", 0),
              getattr(opts, "repetition_penalty", 1.0))
  if getattr(opts, "image_size", None) is not None and opts.image_size < 1:
    raise PredictError(f"predict: --image_size {opts.image_size} must be positive")
  if command == "classify":
    if "classes" in given and not opts.classes:
      raise PredictError("predict: --classes is empty; name the classes (comma-separated), or leave the flag out "
                         "for the bundle's")
    check_classes(_classes_from_flags(opts))
    check_prompts(opts.prompt)
  inputs = [] if command == "embed" and opts.text else list_images(args)
  outputs = {"out": (opts.out, ".npy"), "json": (opts.json, None), "grid": (opts.grid, ".png")}
  if command == "embed" and not opts.out:
    raise PredictError("predict: embed needs --out FILE.npy")
  written = {}
  for flag, (path, suffix) in outputs.items():
    if flag in given:
      check_output(flag, path, suffix, opts.bundle, inputs)
      written[flag] = path
  if command == "embed":
    check_output("out", inputs_file(opts.out), ".txt", opts.bundle, inputs)
  if len({os.path.realpath(p) for p in written.values()}) < len(written):
    raise PredictError(f"predict: {' and '.join('--' + f for f in written)} name the same file")


def run(command: str, args, opts) -> object:
  """The CLI: `command` with positional `args` (image files/folders) and `opts` (the parsed flags)."""
  if command not in COMMANDS:
    raise PredictError(f"predict: unknown command '{command}'; known: {', '.join(COMMANDS)}")
  predictor = Predictor(opts.bundle, opts.devices, opts.batch_size, opts.skip_unreadable,
                        image_size=getattr(opts, "image_size", None))
  if command in DUAL_ENCODER_COMMANDS and predictor.config.model.name != "dual_encoder":
    raise PredictError(f"predict: bundle '{opts.bundle}' holds a '{predictor.config.model.name}' model; "
                       f"{command} needs a dual_encoder (a vlm bundle: caption)")
  if command == "embed":
    if not opts.out:
      raise PredictError("predict: embed needs --out FILE.npy")
    inputs, embeddings = embed(predictor, args, opts.text, opts.out)
    print(f"Wrote {embeddings.shape[0]}x{embeddings.shape[1]} embeddings to {opts.out} "
          f"(inputs in {os.path.splitext(opts.out)[0]}.txt)")
    return inputs
  if command == "caption":
    results = caption(predictor, list_images(args), opts.max_new_tokens, opts.temperature,
                      opts.top_k if opts.temperature > 0 else 0, opts.seed, getattr(opts, "beam_size", 1),
                      getattr(opts, "length_penalty", 0.0), getattr(opts, "min_length", 0),
                      getattr(opts, "repetition_penalty", 1.0))
    for r in results:
      print(f"{r['image']}\t{r['caption']}")
  elif command == "classify":
    results = classify(predictor, args, _classes_from_flags(opts), opts.prompt, opts.top_k)
    for r in results:
      print(r["image"] + "\t" + "\t".join(f"{name} {score:.3f}" for name, score in r["top"]))
  else:
    results = retrieve(predictor, args, opts.query, opts.top_k)
    for r in results:
      print(f"query: {r['query']}")
      for path, score in r["top"]:
        print(f"  {score:.4f}  {path}")
    if opts.grid:
      print(f"Drew the top images of each query to {draw_grid(results, opts.grid)}")
  if opts.json:
    os.makedirs(os.path.dirname(os.path.abspath(opts.json)), exist_ok=True)
    with open(opts.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
  return results


def main(argv):
  quiet_absl_logging()
  try:
    if len(argv) < 2:
      raise PredictError(f"predict: give a command ({', '.join(COMMANDS)}) after the flags")
    check_flags(argv[1], argv[2:], FLAGS, [name for name in FLAG_COMMANDS if FLAGS[name].present])
    run(argv[1], argv[2:], FLAGS)
  except (PredictError, OSError, ValueError) as e:  # OSError: FileNotFoundError, a full disk...
    cli.fail("predict", str(e).splitlines()[0])


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("bundle", None, "An inference bundle (python -m vlmjax.export).")
  flags.DEFINE_integer("devices", 0, "Local devices to run on, data-parallel (0: all).")
  flags.DEFINE_integer("batch_size", 64, "Images or texts per jitted call.")
  flags.DEFINE_integer("image_size", None, "Run the model at this resolution, its position table resampled "
                       "(default: the bundle's input.image_size).")
  flags.DEFINE_boolean("skip_unreadable", False, "Leave unreadable images out (with a warning) instead of stopping.")
  flags.DEFINE_string("out", None, "embed: the .npy file to write.")
  flags.DEFINE_multi_string("text", [], "embed: a text to embed (repeatable) instead of images.")
  flags.DEFINE_list("classes", [], "classify: comma-separated class names (default: the bundle's zero-shot classes).")
  flags.DEFINE_string("classes_file", None, "classify: a file of class names, one a line.")
  flags.DEFINE_multi_string("prompt", [], "classify: a prompt template with {} (repeatable; default: the evaluator's).")
  flags.DEFINE_multi_string("query", [], "retrieve: a query text (repeatable).")
  flags.DEFINE_integer("top_k", 5, "classify / retrieve: how many results to show.")
  flags.DEFINE_string("grid", None, "retrieve: draw the queries and their top images into this PNG.")
  flags.DEFINE_integer("max_new_tokens", 32, "caption: the most pieces to generate per image.")
  flags.DEFINE_float("temperature", 0.0, "caption: 0 = greedy; above 0, sample from the --top_k pieces.")
  flags.DEFINE_integer("seed", 0, "caption: the sampling seed.")
  flags.DEFINE_integer("beam_size", 1, "caption: beams for beam search (1: greedy or sampling).")
  flags.DEFINE_float("length_penalty", 0.0, "caption: beam search ranks by log-probability / length ** this.")
  flags.DEFINE_integer("min_length", 0, "caption: no EOS before this many pieces.")
  flags.DEFINE_float("repetition_penalty", 1.0, "caption: CTRL's penalty on pieces already generated (1: none).")
  flags.DEFINE_string("json", None, "classify / retrieve / caption: also write the results as JSON.")
  flags.mark_flag_as_required("bundle")
  app.run(main, flags_parser=cli.flags_parser("predict"))
