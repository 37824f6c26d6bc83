"""Image <-> text retrieval on paired records: R@1/5/10 in both directions.

Record i's caption is the one correct text for image i (and vice versa); ranks are by cosine
similarity over the first `num_examples` records of the split.
"""
import numpy as np

from vlmjax import registry


def recall_at_k(scores, ks=(1, 5, 10)) -> dict:
  """scores [N, N], the correct item of row i at column i -> {k: fraction of rows ranking it in top k}."""
  correct = np.diag(scores)[:, None]
  rank = (scores > correct).sum(axis=1)  # how many items score strictly higher than the right one
  return {k: float((rank < k).mean()) for k in ks}


@registry.register("evaluator", "retrieval")
class Retrieval:

  def __init__(self, name: str, split: str = "test", num_examples: int = 1000):
    self.name, self.split, self.num_examples = name, split, num_examples

  def run(self, ctx) -> dict:
    _, batches = ctx.batches(self.split, limit=self.num_examples)
    images, texts = [], []
    for batch in batches:
      images.append(ctx.embedder.embed_images(batch["image"]))
      texts.append(ctx.embedder.embed_texts(batch["text"]))
    scores = np.concatenate(images) @ np.concatenate(texts).T
    out = {}
    for direction, s in (("image_to_text", scores), ("text_to_image", scores.T)):
      for k, r in recall_at_k(s).items():
        out[f"{self.name}/{direction}_R@{k}"] = r
    return out
