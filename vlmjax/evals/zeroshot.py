"""Zero-shot classification: class-name prompts embedded by the text tower, images by the image tower.

Each class embedding is the normalised mean of its prompt embeddings (CLIP's prompt ensembling);
an image's prediction ranks classes by cosine similarity. A SigLIP model's class probability is
sigmoid(scale · cos + bias) and a CLIP model's a softmax over cos: both are monotone in the cosine,
so the ranking, and every number here, is the same under either. Records with label < 0 (e.g.
multi-object scenes) are skipped. Reports top-1 and top-5 accuracy and the mean per-class recall
(the accuracy averaged over classes, as CLIP_benchmark reports for unbalanced sets).

Class names: the evaluator's `class_names` (a list, or a shipped set: `evals.classes`), else the
data's (a TFDS `ClassLabel`, a CSV's class names). Prompts: `prompts` (templates with '{}', or a
shipped set such as 'imagenet' (80) or 'imagenet_simple' (7), or 'vlmjax_shapes': the built-in
dataset's caption-worded prompts, or 'descriptions': 30 descriptions of each class that add a size
and a place, `classes.class_descriptions`), else the data's, else two generic ones.

`language`: classify with the data's prompts in that language (a data source's `language_prompts`,
a function language -> (class name -> prompts); vlmjax_shapes has 'en', 'de' and 'fr'), the
multilingual zero-shot protocol of Babel-ImageNet: the same images and classes, the class names
said in another language.
"""
import numpy as np

from vlmjax import registry
from vlmjax.data import shapes
from vlmjax.evals import classes

DEFAULT_PROMPTS = ("a photo of a {}.", "a {}.")
# class name -> its prompts
PROMPT_FUNCTIONS = {"vlmjax_shapes": shapes.zero_shot_prompts, "descriptions": classes.class_descriptions}


def accuracies(scores, labels, num_classes: int) -> dict:
  """scores [N, C], labels [N] in [0, C) -> {'top1', 'top5', 'mean_per_class_recall'}: fractions.
  A row's prediction is its highest score (the first on ties); classes absent from `labels` are
  left out of the per-class mean."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  order = np.argsort(-scores, axis=1, kind="stable")
  top1 = order[:, 0] == labels
  top5 = (order[:, :5] == labels[:, None]).any(axis=1)
  present = np.unique(labels)
  recall = [top1[labels == c].mean() for c in present if c < num_classes]
  return {"top1": float(top1.mean()), "top5": float(top5.mean()), "mean_per_class_recall": float(np.mean(recall))}


def class_embeddings(embedder, tokenize, class_names, prompts) -> np.ndarray:
  """Each class's prompts embedded (`embedder.embed_texts` of `tokenize(texts)`), averaged and
  L2-normalised: [C, E]. prompts: templates with '{}' or a function class name -> texts."""
  make = prompts if callable(prompts) else lambda c: [p.format(c) for p in prompts]
  embeds = np.stack([embedder.embed_texts(tokenize(make(c))).mean(axis=0) for c in class_names])
  return embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)


@registry.register("evaluator", "zeroshot")
class ZeroShot:

  def __init__(self, name: str, split: str = "test", class_names=(), prompts=(), num_examples: int = 0,
               language: str = ""):
    if language and prompts:
      raise ValueError(f"evals.{name}: give 'prompts' or 'language' (the data's prompts in a language), not both")
    self.name, self.split, self.num_examples, self.language = name, split, num_examples, language
    self.class_names = classes.class_names(class_names) if class_names else ()
    if isinstance(prompts, str) and prompts in PROMPT_FUNCTIONS:
      self.prompts = PROMPT_FUNCTIONS[prompts]
    else:
      self.prompts = classes.templates(prompts) if prompts else ()
    self.splits = (split,)

  def class_embeddings(self, ctx, class_names, prompts):
    """prompts: templates with '{}' or a function class name -> texts. -> [C, E]"""
    return class_embeddings(ctx.embedder, ctx.tokenize, class_names, prompts)

  def check(self, source):
    """-> the class names for `source`; ValueError (one line) when there are none or they do not
    cover its labels."""
    names = self.class_names or tuple(getattr(source, "class_names", ()) or ())
    if not names:
      raise ValueError(f"evals.{self.name}: the data names no classes; set 'class_names' (a list or a shipped "
                       f"set: {', '.join(classes.CLASS_NAMES)}) or the data's class_names")
    if self.language:
      self.language_prompts(source)
    labels = getattr(source, "labels", None)
    if labels is not None and len(labels) and max(labels) >= len(names):
      raise ValueError(f"evals.{self.name}: the data has label {max(labels)} but {len(names)} class names")
    return names

  def language_prompts(self, source):
    """The data's prompt function in `self.language`; ValueError (one line) when it has none."""
    languages = getattr(source, "language_prompts", None)
    try:
      return languages(self.language)
    except (TypeError, ValueError) as e:
      have = f": {e}" if languages else ": the data has prompts in one language only"
      raise ValueError(f"evals.{self.name}.language '{self.language}'{have}") from None

  def run(self, ctx) -> dict:
    source, batches = ctx.batches(self.split, passthrough=("label",), limit=self.num_examples)
    class_names = self.check(source)
    prompts = self.prompts or getattr(source, "prompts", DEFAULT_PROMPTS)
    if self.language:
      prompts = self.language_prompts(source)
    class_embeds = self.class_embeddings(ctx, class_names, prompts)
    scores, labels = [], []
    for batch in batches:
      keep = batch["label"] >= 0
      if keep.any():
        scores.append(ctx.embedder.embed_images(batch["image"][keep]) @ class_embeds.T)
        labels.append(batch["label"][keep])
    if not labels:
      raise ValueError(f"evals.{self.name}: split '{self.split}' has no labelled records")
    labels = np.concatenate(labels)
    if labels.max() >= len(class_names):
      raise ValueError(f"evals.{self.name}: split '{self.split}' has label {labels.max()} but "
                       f"{len(class_names)} class names")
    out = accuracies(np.concatenate(scores), labels, len(class_names))
    return {**{f"{self.name}/{k}": v for k, v in out.items()}, f"{self.name}/count": int(len(labels))}
