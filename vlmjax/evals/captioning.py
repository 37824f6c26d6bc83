"""Captioning evaluators for decoders (LM / VLM).

- `captioning`: captions generated with the KV cache (greedy by default, temperature / top-k
  sampling, or beam search with `beam_size` > 1; `min_length` and `repetition_penalty` for any),
  scored with CIDEr-D and BLEU-1..4 from pycocoevalcap against the dataset's references:
  `source.reference_captions(i)` where the source has it (vlmjax_shapes: every caption its
  generator could have written for the scene, 4 to 32 of them), else the record's caption. Texts are
  lower-cased and split into words and numbers (what COCO's PTBTokenizer does to such captions,
  without its Java dependency; CIDEr and BLEU themselves are pure Python).
  With `nearest_tokens` = k > 0 (SITTA's decoding) the image reaches the LM as words instead: the
  k vocabulary pieces whose input embeddings are nearest (cosine) to the image's mean projected
  token (`image_code`) become the prompt, `BOS piece₁ … piece_k`, most similar first, and the LM
  reads no image token.
  With `language` the prompt asks for that language (an `input.prompt` with '{language}') and the
  references are the scene's captions in it (`source.reference_captions_in`, else the record's
  translation); `language_fidelity` is the fraction of captions written in it
  (`source.detect_language`, where the data has it: Centurio's measure).
- `token_nll`: the teacher-forced per-token NLL, perplexity and next-token accuracy on a split's
  captions, with the training layout (image slots, prompt, masks).
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from vlmjax import batch_spec, registry, sharding, trainer
from vlmjax.data import pipeline
from vlmjax.data.tokenizer import BOS
from vlmjax.models.generate import make_generate
from vlmjax.objectives.ntp import token_cross_entropy


def words(text: str) -> str:
  """'Two objects: a Red circle.' -> 'two objects a red circle'; letters of any script ('großer')."""
  return " ".join(re.findall(r"[^\W_]+", text.lower()))


def caption_metrics(references: list[list[str]], predictions: list[str]) -> dict:
  """CIDEr-D and BLEU-1..4 (corpus level, as pycocoevalcap reports them) of predictions[i] against
  references[i]."""
  if len(references) != len(predictions) or not predictions:
    raise ValueError(f"caption_metrics: {len(predictions)} predictions for {len(references)} reference sets")
  # Imported here, not at the top: the package ships ~100 MB of Java tools, and only scoring needs it.
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  gts = {i: [words(r) for r in refs] for i, refs in enumerate(references)}
  res = {i: [words(p)] for i, p in enumerate(predictions)}
  cider, _ = Cider().compute_score(gts, res)
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  return {"CIDEr": float(cider), **{f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}}


def generation_prefix(num_image_tokens: int, prompt=(), bos_id: int = BOS,
                      prefix_attention: str = "causal") -> tuple[np.ndarray, np.ndarray]:
  """(tokens, attention kinds) a caption is generated after: the training layout up to the first
  caption piece, starting with the tokenizer's `bos_id`."""
  example = batch_spec.caption_sequence(np.array([bos_id]), num_image_tokens, prompt, prefix_attention)
  return example["tokens"], example["attention_mask"]


def decoding_options(what: str, max_new_tokens: int, temperature: float, beam_size: int, length_penalty: float,
                     min_length: int, repetition_penalty: float) -> dict:
  """The beam search / penalty keyword arguments of `make_generate`, checked; errors name `what`."""
  if beam_size < 1:
    raise ValueError(f"{what}: beam_size {beam_size} must be at least 1")
  if beam_size > 1 and temperature > 0:
    raise ValueError(f"{what}: beam search (beam_size {beam_size}) does not sample: set temperature 0")
  if not 0 <= min_length < max_new_tokens:
    raise ValueError(f"{what}: min_length {min_length} must be in [0, max_new_tokens={max_new_tokens})")
  if not repetition_penalty > 0:
    raise ValueError(f"{what}: repetition_penalty {repetition_penalty} must be above 0 (1 = none)")
  return dict(beam_size=beam_size, length_penalty=length_penalty, min_length=min_length,
              repetition_penalty=repetition_penalty)


@registry.register("evaluator", "captioning")
class Captioning:

  def __init__(self, name: str, split: str = "test", num_examples: int = 500, max_new_tokens: int = 32,
               temperature: float = 0.0, top_k: int = 0, seed: int = 0, beam_size: int = 1,
               length_penalty: float = 0.0, min_length: int = 0, repetition_penalty: float = 1.0,
               nearest_tokens: int = 0, language: str = ""):
    if nearest_tokens < 0:
      raise ValueError(f"nearest_tokens {nearest_tokens} must be >= 0 (0: the image tokens themselves)")
    self.name, self.split, self.num_examples = name, split, num_examples
    self.nearest_tokens, self.language = nearest_tokens, language
    self.max_new_tokens, self.temperature, self.top_k, self.seed = max_new_tokens, temperature, top_k, seed
    self.decoding = decoding_options(f"evals.{name}", max_new_tokens, temperature, beam_size, length_penalty,
                                     min_length, repetition_penalty)
    self.predictions, self.references = [], []

  def run(self, ctx) -> dict:
    embedder = ctx.embedder
    model, mesh, batch_size = embedder.model, embedder.mesh, embedder.batch_size
    if not hasattr(model, "num_image_tokens") or not model.num_image_tokens(ctx.input_config.image_size):
      raise ValueError(f"evals.{self.name}: captioning needs a model that reads images into a decoder ('vlm'), "
                       f"not '{type(model).__name__}'")
    source = ctx.source(self.split)
    count = min(self.num_examples, len(source)) if self.num_examples > 0 else len(source)
    field = pipeline.caption_field(ctx.input_config)
    reference_fn = (getattr(source, "reference_captions", None) if field == "caption" else None) or (
        lambda i: [pipeline.caption_text(source[i], field)])
    if self.language:
      pipeline.check_languages([self.language], source, f"evals.{self.name}.language")
      references_in = getattr(source, "reference_captions_in", None)
      reference_fn = ((lambda i: references_in(i, self.language)) if references_in else
                      lambda i: [pipeline.caption_in(source[i], self.language, getattr(source, "caption_language", "en"))])
    prompt = pipeline.prompt_ids(ctx.tokenizer, ctx.input_config, self.language or None)
    prefix, kinds = generation_prefix(model.num_image_tokens(ctx.input_config.image_size),
                                      prompt, ctx.tokenizer.bos_id,
                                      pipeline.prefix_attention(ctx.input_config))
    generate = make_generate(model, self.max_new_tokens, self.temperature, self.top_k, ctx.tokenizer.eos_id,
                             **self.decoding)
    rng = jax.random.PRNGKey(self.seed)
    prefixes = sharding.global_batch(np.tile(prefix, (batch_size, 1)), mesh)
    prefix_kinds = sharding.global_batch(np.tile(kinds, (batch_size, 1)), mesh)
    nearest = self.nearest_token_prompts(ctx, prefixes, prefix_kinds) if self.nearest_tokens else None
    predictions = []
    _, batches = ctx.batches(self.split, limit=count)
    for i, batch in enumerate(batches):
      images = sharding.global_batch(sharding.padded(np.asarray(batch["image"], np.float32), batch_size), mesh)
      with embedder.use():
        if nearest is None:
          tokens = generate(embedder.params, prefixes, jax.random.fold_in(rng, i), images, prefix_kinds)
        else:
          prompts = sharding.global_batch(nearest(images), mesh)
          tokens = generate(embedder.params, prompts, jax.random.fold_in(rng, i), None, None)
      predictions += ctx.tokenizer.decode(np.asarray(jax.device_get(tokens))[:len(batch["image"])])
    if len(predictions) != count:
      raise ValueError(f"evals.{self.name}: only {len(predictions)} of the first {count} records of "
                       f"'{self.split}' could be read; their references would not line up")
    self.predictions, self.references = predictions, [reference_fn(i) for i in range(count)]
    metrics = caption_metrics(self.references, predictions)
    exact = np.mean([words(p) in {words(r) for r in refs} for p, refs in zip(predictions, self.references)])
    out = {**{f"{self.name}/{k}": v for k, v in metrics.items()}, f"{self.name}/exact_match": float(exact)}
    if self.language and hasattr(source, "detect_language"):
      out[f"{self.name}/language_fidelity"] = float(np.mean([source.detect_language(p) == self.language
                                                             for p in predictions]))
    return out

  def nearest_token_prompts(self, ctx, prefixes, prefix_kinds):
    """-> fn(images [b, S, S, 3]) -> int32 [b, 1 + k]: BOS and the k pieces nearest each image's mean
    projected token (special pieces left out), the nearest first."""
    embedder, tokenizer = ctx.embedder, ctx.tokenizer
    specials = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id}
    if hasattr(tokenizer, "sp"):
      specials.add(tokenizer.sp.unk_id())
    k = self.nearest_tokens

    @jax.jit
    def nearest(params, images):
      out = embedder.model.apply({"params": params}, images=images, tokens=prefixes, attention_mask=prefix_kinds)
      code, table = out["image_code"], out["word_embeddings"]
      unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
      similarity = unit(code) @ unit(table).T
      similarity = similarity.at[:, jnp.array(sorted(i for i in specials if i >= 0))].set(-jnp.inf)
      return jax.lax.top_k(similarity, k)[1].astype(jnp.int32)

    def prompts(images):
      with embedder.use():
        ids = np.asarray(jax.device_get(nearest(embedder.params, images)))
      return np.concatenate([np.full((len(ids), 1), tokenizer.bos_id, np.int32), ids], axis=1)
    return prompts


@registry.register("evaluator", "token_nll")
class TokenNll:

  def __init__(self, name: str, split: str = "test", num_examples: int = 1000):
    self.name, self.split, self.num_examples = name, split, num_examples

  def run(self, ctx) -> dict:
    embedder = ctx.embedder
    model, mesh, batch_size = embedder.model, embedder.mesh, embedder.batch_size
    source = ctx.source(self.split)
    count = min(self.num_examples, len(source)) if self.num_examples > 0 else len(source)
    base = pipeline.Preprocess(ctx.tokenizer, ctx.input_config.image_size, ctx.input_config.max_text_len,
                               caption_field=pipeline.caption_field(ctx.input_config))
    num_image_tokens = model.num_image_tokens(ctx.input_config.image_size)
    preprocess = pipeline.CaptionPreprocess(base, num_image_tokens,
                                            pipeline.prompt_ids(ctx.tokenizer, ctx.input_config),
                                            with_image=num_image_tokens > 0,
                                            prefix_attention=pipeline.prefix_attention(ctx.input_config))

    @jax.jit
    def sums(params, batch):
      logits = model.apply({"params": params}, **trainer.model_inputs(model, batch, False))["logits"]
      supervised = batch["loss_weights"] > 0
      nll = jnp.where(supervised, token_cross_entropy(logits, batch["targets"]), 0.0).sum()
      correct = (supervised & (jnp.argmax(logits, -1) == batch["targets"])).sum()
      return nll, correct, supervised.sum()

    totals = np.zeros(3)
    keys = ("image", "tokens", "targets", "loss_weights", "attention_mask")
    for batch in pipeline.eval_batches(source, preprocess, batch_size, range(count)):
      batch = {k: sharding.global_batch(sharding.padded(np.asarray(batch[k]), batch_size), mesh) for k in keys if k in batch}
      with embedder.use():
        totals += np.asarray(jax.device_get(sums(embedder.params, batch)), np.float64)
    nll = float(totals[0] / max(totals[2], 1))
    return {f"{self.name}/nll": nll, f"{self.name}/perplexity": math.exp(nll),
            f"{self.name}/token_accuracy": float(totals[1] / max(totals[2], 1))}
