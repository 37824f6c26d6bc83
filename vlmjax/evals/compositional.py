"""Compositional understanding (the ARO / SugarCrepe protocol) on records with hard-negative captions.

For each image, is its true caption scored above each of its hard negatives? Reported per negative
kind (for `vlmjax_shapes`: attribute swap, relation swap, wrong count); chance is 50%.
"""
import numpy as np

from vlmjax import registry
from vlmjax.objectives.contrastive import NEGATIVE_TEXT


@registry.register("evaluator", "compositional")
class Compositional:

  def __init__(self, name: str, split: str = "test", kinds: tuple = ("attribute", "relation", "count"),
               num_examples: int = 0):
    self.name, self.split, self.kinds, self.num_examples = name, split, tuple(kinds), num_examples

  def run(self, ctx) -> dict:
    _, batches = ctx.batches(self.split, limit=self.num_examples, fields=(NEGATIVE_TEXT,))
    wins, total = np.zeros(len(self.kinds)), 0
    for batch in batches:
      images = ctx.embedder.embed_images(batch["image"])                 # [b, E]
      true = (images * ctx.embedder.embed_texts(batch["text"])).sum(-1)  # [b]
      negatives = batch["negative_text"]                                 # [b, K, T]
      if negatives.shape[1] != len(self.kinds):
        raise ValueError(f"evals.{self.name}: records have {negatives.shape[1]} negative captions but "
                         f"{len(self.kinds)} kinds are named ({', '.join(self.kinds)})")
      negative_embeds = ctx.embedder.embed_texts(negatives.reshape(-1, negatives.shape[-1]))
      scores = np.einsum("be,bke->bk", images, negative_embeds.reshape(*negatives.shape[:2], -1))
      wins += (true[:, None] > scores).sum(0)
      total += len(images)
    return {f"{self.name}/{kind}": float(w / total) for kind, w in zip(self.kinds, wins)}
