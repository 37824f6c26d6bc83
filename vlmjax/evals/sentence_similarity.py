"""Sentence similarity: does the text tower place captions of similar scenes near each other?

Merkx & Frank evaluate a visually grounded sentence encoder by the Spearman correlation between the
cosine similarity of two sentences' embeddings and human similarity judgements (the STS benchmark).
Here the judgement is what the two captions' scenes share, computed from their annotations
(`source.scene_objects(i)`, the '<colour> <shape>' names of scene i):

  overlap(A, B) = (J(names) + J(colours) + J(shapes)) / 3,   J = |A ∩ B| / |A ∪ B|

so two scenes with a red circle each are similar, and a red circle is closer to a red star than to a
blue star. `num_pairs` random pairs of distinct records of the split (a fixed `seed`); each caption is
embedded by the text tower alone. Reports `spearman` (ρ, ties at their average rank) and the pairs used.
"""
import numpy as np
from scipy import stats

from vlmjax import registry
from vlmjax.data import pipeline


def jaccard(a: set, b: set) -> float:
  return len(a & b) / len(a | b) if a | b else 1.0


def scene_overlap(names_a, names_b) -> float:
  """names: '<colour> <shape>' strings of two scenes -> their overlap in [0, 1] (module docstring)."""
  parts = lambda names, k: {n.split(" ")[k] for n in names}  # noqa: E731
  return (jaccard(set(names_a), set(names_b)) + jaccard(parts(names_a, 0), parts(names_b, 0))
          + jaccard(parts(names_a, 1), parts(names_b, 1))) / 3


def random_pairs(count: int, num_pairs: int, seed: int) -> np.ndarray:
  """[num_pairs, 2] indices in [0, count), the two of a pair distinct."""
  rng = np.random.default_rng(seed)
  first = rng.integers(count, size=num_pairs)
  second = (first + rng.integers(1, count, size=num_pairs)) % count
  return np.stack([first, second], axis=1)


@registry.register("evaluator", "sentence_similarity")
class SentenceSimilarity:

  def __init__(self, name: str, split: str = "test", num_pairs: int = 2000, seed: int = 0):
    if num_pairs < 2:
      raise ValueError(f"evals.{name}.num_pairs {num_pairs} must be at least 2")
    self.name, self.split, self.num_pairs, self.seed = name, split, num_pairs, seed
    self.splits = (split,)

  def check(self, source):
    if not hasattr(source, "scene_objects"):
      raise ValueError(f"evals.{self.name}: the data has no scene annotations (vlmjax_shapes has them)")
    if len(source) < 2:
      raise ValueError(f"evals.{self.name}: split '{self.split}' has fewer than 2 records")

  def run(self, ctx) -> dict:
    source = ctx.source(self.split)
    self.check(source)
    pairs = random_pairs(len(source), self.num_pairs, self.seed)
    records = {int(i): source[int(i)] for i in np.unique(pairs)}
    pairs = np.array([p for p in pairs if not any(isinstance(records[int(i)], pipeline.BadRecord) for i in p)])
    indices = sorted({int(i) for i in pairs.reshape(-1)})
    embeds = ctx.embedder.embed_texts(ctx.tokenize([records[i]["caption"] for i in indices]))
    row = {index: k for k, index in enumerate(indices)}
    cosine = np.array([embeds[row[int(a)]] @ embeds[row[int(b)]] for a, b in pairs])
    overlap = np.array([scene_overlap(source.scene_objects(a), source.scene_objects(b)) for a, b in pairs])
    rho = stats.spearmanr(cosine, overlap).statistic
    return {f"{self.name}/spearman": float(rho), f"{self.name}/pairs": int(len(pairs))}
