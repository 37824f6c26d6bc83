"""Evaluators of a fusion encoder (LXMERT, vlmjax/models/fusion.py) on vlmjax_shapes.

- `itm`: image–text matching accuracy per kind of text: the caption (right when its match logit is
  > 0), each hard negative (attribute, relation, count swap) and a random caption (the next
  record's) (right when < 0); and `<kind>_ranked`, how often the caption's logit beats that
  negative's (chance 50%).
- `fusion_qa`: accuracy of the answer head on every question of the first `num_examples` records,
  per question type and over all, the answer the likeliest of `shapes.ANSWERS`.
"""
import jax
import numpy as np

from vlmjax import registry
from vlmjax.data.shapes import ANSWERS, NEGATIVE_KINDS, QUESTION_TYPES
from vlmjax.objectives.contrastive import NEGATIVE_TEXT


def region_fields(model, input_config) -> tuple:
  """The model's own batch fields beyond the image and the caption: its objects' boxes and validity."""
  return tuple(f for f in model.batch_fields(input_config) if f.name.startswith("region_"))


def _check_model(model, name: str, head: str):
  if not hasattr(model, "fuse"):
    raise ValueError(f"evals.{name}: needs a fusion encoder (model.name='fusion'), not '{type(model).__name__}'")
  if head == "answer" and not getattr(model, "num_answers", 0):
    raise ValueError(f"evals.{name}: the model has no answer head (model.num_answers)")


@registry.register("evaluator", "itm")
class ImageTextMatching:

  def __init__(self, name: str, split: str = "test", num_examples: int = 1000):
    self.name, self.split, self.num_examples = name, split, num_examples
    self.splits = (split,)

  def run(self, ctx) -> dict:
    model = ctx.embedder.model
    _check_model(model, self.name, "itm")
    logits_of = jax.jit(lambda p, x: model.apply({"params": p}, images=x[0], region_boxes=x[1], region_valid=x[2],
                                                 itm_texts=x[3])["itm_logits"])
    scores = {kind: [] for kind in ("caption", *NEGATIVE_KINDS, "random")}
    _, batches = ctx.batches(self.split, limit=self.num_examples,
                             fields=(*region_fields(model, ctx.input_config), NEGATIVE_TEXT))
    for batch in batches:
      inputs = (np.asarray(batch["image"], np.float32), batch["region_boxes"], batch["region_valid"])
      texts = {"caption": batch["text"], "random": np.roll(batch["text"], 1, axis=0),
               **{kind: batch["negative_text"][:, k] for k, kind in enumerate(NEGATIVE_KINDS)}}
      for kind, tokens in texts.items():
        scores[kind].append(ctx.embedder.run(logits_of, (*inputs, np.asarray(tokens, np.int32))))
    scores = {kind: np.concatenate(parts) for kind, parts in scores.items()}
    out = {f"{self.name}/caption": float((scores["caption"] > 0).mean())}
    for kind in (*NEGATIVE_KINDS, "random"):
      out[f"{self.name}/{kind}"] = float((scores[kind] < 0).mean())
      out[f"{self.name}/{kind}_ranked"] = float((scores["caption"] > scores[kind]).mean())
    out[f"{self.name}/examples"] = int(len(scores["caption"]))
    return out


@registry.register("evaluator", "fusion_qa")
class FusionQuestionAnswering:

  def __init__(self, name: str, split: str = "test", num_examples: int = 500):
    self.name, self.split, self.num_examples = name, split, num_examples
    self.splits = (split,)

  def run(self, ctx) -> dict:
    model = ctx.embedder.model
    _check_model(model, self.name, "answer")
    answer_of = jax.jit(lambda p, x: model.apply({"params": p}, images=x[0], region_boxes=x[1], region_valid=x[2],
                                                 question_texts=x[3])["answer_logits"].argmax(-1))
    source, batches = ctx.batches(self.split, limit=self.num_examples, fields=region_fields(model, ctx.input_config))
    right = {kind: [] for kind in QUESTION_TYPES}
    for batch in batches:
      rows = [(k, q) for k, index in enumerate(batch["index"]) for q in source[int(index)]["questions"]]
      pick = np.array([k for k, _ in rows])
      tokens = ctx.tokenize([q["question"] for _, q in rows])
      predicted = ctx.embedder.run(answer_of, (np.asarray(batch["image"], np.float32)[pick],
                                               batch["region_boxes"][pick], batch["region_valid"][pick], tokens))
      for (_, q), p in zip(rows, predicted):
        right[q["type"]].append(ANSWERS[int(p)] == q["answer"])
    out = {f"{self.name}/{kind}": float(np.mean(v)) for kind, v in right.items() if v}
    out[f"{self.name}/all"] = float(np.mean([x for v in right.values() for x in v]))
    return out
