"""Zero-shot classification: class-name prompts embedded by the text tower, images by the image tower.

Each class embedding is the normalised mean of its prompt embeddings (CLIP's prompt ensembling);
an image's prediction ranks classes by cosine similarity. Records with label < 0 (e.g. multi-object
scenes) are skipped. Reports top-1 and top-5 accuracy.
"""
import numpy as np

from vlmjax import registry

DEFAULT_PROMPTS = ("a photo of a {}.", "a {}.")


@registry.register("evaluator", "zeroshot")
class ZeroShot:

  def __init__(self, name: str, split: str = "test", class_names: tuple = (), prompts: tuple = (),
               num_examples: int = 0):
    self.name, self.split, self.num_examples = name, split, num_examples
    self.class_names, self.prompts = tuple(class_names), tuple(prompts)

  def class_embeddings(self, ctx, class_names, prompts):
    """prompts: templates with '{}' or a function class name -> texts. -> [C, E]"""
    make = prompts if callable(prompts) else lambda c: [p.format(c) for p in prompts]
    embeds = np.stack([ctx.embedder.embed_texts(ctx.tokenize(make(c))).mean(axis=0) for c in class_names])
    return embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)

  def run(self, ctx) -> dict:
    source, batches = ctx.batches(self.split, passthrough=("label",), limit=self.num_examples)
    class_names = self.class_names or getattr(source, "class_names", ())
    if not class_names:
      raise ValueError(f"evals.{self.name}: the dataset names no classes; set 'class_names'")
    prompts = self.prompts or getattr(source, "prompts", DEFAULT_PROMPTS)
    classes = self.class_embeddings(ctx, class_names, prompts)
    correct1 = correct5 = total = 0
    for batch in batches:
      keep = batch["label"] >= 0
      if not keep.any():
        continue
      scores = ctx.embedder.embed_images(batch["image"][keep]) @ classes.T
      labels = batch["label"][keep]
      top5 = np.argsort(-scores, axis=1)[:, :5]
      correct1 += int((top5[:, 0] == labels).sum())
      correct5 += int((top5 == labels[:, None]).any(axis=1).sum())
      total += int(keep.sum())
    if total == 0:
      raise ValueError(f"evals.{self.name}: split '{self.split}' has no labelled records")
    return {f"{self.name}/top1": correct1 / total, f"{self.name}/top5": correct5 / total,
            f"{self.name}/count": total}
