"""Compositional understanding (the ARO / SugarCrepe protocol) on records with hard-negative captions.

For each image, is its true caption scored above each of its hard negatives? Reported per negative
kind (for `vlmjax_shapes`: attribute swap, relation swap, wrong count); chance is 50%.

- `compositional` (dual encoders): the score is the image–text embedding similarity.
- `vlm_compositional` (decoders): the score is the caption's log-likelihood given the image,
  teacher-forced in the training layout: Σ log p(piece | image, prompt, pieces before), over the
  caption's pieces and its EOS. A model that reads the image should find the true caption likelier.
"""
import jax
import jax.numpy as jnp
import numpy as np

from vlmjax import batch_spec, registry, sharding, trainer
from vlmjax.data import pipeline
from vlmjax.objectives.contrastive import NEGATIVE_TEXT
from vlmjax.objectives.ntp import token_cross_entropy


@registry.register("evaluator", "compositional")
class Compositional:

  def __init__(self, name: str, split: str = "test", kinds: tuple = ("attribute", "relation", "count"),
               num_examples: int = 0):
    self.name, self.split, self.kinds, self.num_examples = name, split, tuple(kinds), num_examples

  def check_kinds(self, negatives):
    """negatives [b, K, T]: ValueError naming the entry unless K is the number of `kinds`."""
    if negatives.shape[1] != len(self.kinds):
      raise ValueError(f"evals.{self.name}: records have {negatives.shape[1]} negative captions but "
                       f"{len(self.kinds)} kinds are named ({', '.join(self.kinds)})")

  def run(self, ctx) -> dict:
    _, batches = ctx.batches(self.split, limit=self.num_examples, fields=(NEGATIVE_TEXT,))
    wins, total = np.zeros(len(self.kinds)), 0
    for batch in batches:
      images = ctx.embedder.embed_images(batch["image"])                 # [b, E]
      true = (images * ctx.embedder.embed_texts(batch["text"])).sum(-1)  # [b]
      negatives = batch["negative_text"]                                 # [b, K, T]
      self.check_kinds(negatives)
      negative_embeds = ctx.embedder.embed_texts(negatives.reshape(-1, negatives.shape[-1]))
      scores = np.einsum("be,bke->bk", images, negative_embeds.reshape(*negatives.shape[:2], -1))
      wins += (true[:, None] > scores).sum(0)
      total += len(images)
    return {f"{self.name}/{kind}": float(w / total) for kind, w in zip(self.kinds, wins)}


def likelihood_scorer(ctx, what: str):
  """-> score(images float [b, S, S, 3], texts int [b, T], question_lens int [b] or None) -> float [b]:
  each text's log-likelihood under the decoder, teacher-forced in the training layout
  (`batch_spec.caption_sequence`): Σ log p(piece | image, prompt, pieces before) over its supervised
  pieces and EOS (after the question's first `question_lens` pieces, for a question record), at
  most the embedder's batch size at a time. ValueError naming `what` unless the model is a decoder."""
  embedder = ctx.embedder
  model, mesh, batch_size = embedder.model, embedder.mesh, embedder.batch_size
  if not hasattr(model, "num_image_tokens"):
    raise ValueError(f"{what}: scores texts with a decoder ('vlm'), not '{type(model).__name__}'")
  layout = dict(num_image_tokens=model.num_image_tokens(ctx.input_config.image_size),
                prompt=pipeline.prompt_ids(ctx.tokenizer, ctx.input_config),
                prefix_attention=pipeline.prefix_attention(ctx.input_config))

  @jax.jit
  def log_likelihood(params, batch):
    logits = model.apply({"params": params}, **trainer.model_inputs(model, batch, False))["logits"]
    supervised = batch["loss_weights"] > 0
    return -jnp.where(supervised, token_cross_entropy(logits, batch["targets"]), 0.0).sum(1)

  def score(images, texts, question_lens=None):
    question_lens = np.zeros(len(texts), int) if question_lens is None else question_lens
    examples = [batch_spec.caption_sequence(text, **layout, question_len=int(q))
                for text, q in zip(texts, question_lens)]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    batch["image"] = images
    batch = {k: sharding.global_batch(sharding.padded(np.asarray(v), batch_size), mesh) for k, v in batch.items()}
    with embedder.use():
      return np.asarray(jax.device_get(log_likelihood(embedder.params, batch)))[:len(texts)]

  return score


@registry.register("evaluator", "vlm_compositional")
class CaptionLikelihood(Compositional):
  """`compositional`'s arguments; the score is the caption's log-likelihood under the decoder."""

  def run(self, ctx) -> dict:
    score = likelihood_scorer(ctx, f"evals.{self.name}: vlm_compositional (for a dual encoder use type "
                                   "'compositional')")

    # The negatives are edits of the short caption: score that, whatever text the model trains on.
    _, batches = ctx.batches(self.split, limit=self.num_examples, fields=(NEGATIVE_TEXT,), caption_field="caption")
    wins, margins, total = np.zeros(len(self.kinds)), np.zeros(len(self.kinds)), 0
    for batch in batches:
      negatives = batch["negative_text"]  # [b, K, T]
      self.check_kinds(negatives)
      images = np.asarray(batch["image"], np.float32)
      true = score(images, batch["text"])
      for k in range(len(self.kinds)):
        negative = score(images, negatives[:, k])
        wins[k] += (true > negative).sum()
        margins[k] += (true - negative).sum()
      total += len(images)
    out = {f"{self.name}/{kind}": float(w / total) for kind, w in zip(self.kinds, wins)}
    out.update({f"{self.name}/{kind}_margin": float(m / total) for kind, m in zip(self.kinds, margins)})
    return out
