"""LXMERT's pre-training tasks for the fusion encoder (vlmjax/models/fusion.py), made per example by
the input pipeline and summed with their weights:

- masked language modelling: 15% of the caption's pieces (never BOS/EOS) replaced by the mask id
  (the tokenizer's unk, which the captions never use), predicted from both streams:
  mean over masked pieces of −log p(piece);
- image–text matching: the caption (half the time) or one of its hard negatives (attribute, relation
  or count swap, a sixth each), plus the batch's captions rolled by one as random negatives; binary
  cross-entropy on the match logit, `itm_kind` naming which text it was (0: the caption);
- masked-object attribute prediction: 15% of the visible objects' features replaced by a mask
  vector, their colour, shape and size predicted (cross-entropy per attribute kind, averaged);
- question answering: one of the scene's questions, its answer classified among `shapes.ANSWERS`.
"""
import jax
import jax.numpy as jnp
import numpy as np

from vlmjax import batch_spec, registry
from vlmjax.data import regions
from vlmjax.data.shapes import ANSWERS, NEGATIVE_KINDS
from vlmjax.data.tokenizer import BOS, EOS, UNK

MASK_ID = UNK
MASK_RATE = 0.15
ITM_KINDS = ("caption", *NEGATIVE_KINDS, "random")  # `itm_kind` 0..3 in the batch; 4 is the rolled caption


def _masked_text(example, shape):
  text = np.array(example.made["text"])
  maskable = (text > 0) & (text != BOS) & (text != EOS)
  chosen = maskable & (example.rng.random(shape) < MASK_RATE)
  if maskable.any() and not chosen.any():  # at least one piece per caption
    chosen[example.rng.choice(np.flatnonzero(maskable))] = True
  return np.where(chosen, MASK_ID, text)


def _mlm_targets(example, shape):
  del shape
  text, masked = example.made["text"], example.made["masked_text"]
  return np.where(masked != text, text, 0)


def _region_masked(example, shape):
  valid = np.array(example.made["region_valid"]) > 0
  return (valid & (example.rng.random(shape) < MASK_RATE)).astype(np.int32)


def _itm_kind(example, shape):
  del shape
  return np.int32(0 if example.rng.random() < 0.5 else 1 + example.rng.integers(len(NEGATIVE_KINDS)))


def _itm_text(example, shape):
  del shape
  kind = int(example.made["itm_kind"])
  return example.made["text"] if kind == 0 else example.tokenize([example.record["negative_captions"][kind - 1]])[0]


def _question(example):
  questions = example.record.get("questions") or []
  return questions[int(example.rng.integers(len(questions)))] if questions else None


def _question_text(example, shape):
  question = example.made.setdefault("_question", _question(example))
  return example.tokenize([question["question"] if question else ""])[0]


def _answer(example, shape):
  del shape
  question = example.made.pop("_question", None)
  return np.int32(ANSWERS.index(question["answer"]) if question and question["answer"] in ANSWERS else -1)


def _draw_texts_like(rng, n, inp, vocab, batch):
  return batch_spec.random_texts(rng, (n,), inp.max_text_len, vocab)


MASKED_TEXT = batch_spec.Field("masked_text", batch_spec.TEXT.shape, "int32", make=_masked_text, draw=_draw_texts_like)
MLM_TARGETS = batch_spec.Field("mlm_targets", batch_spec.TEXT.shape, "int32", make=_mlm_targets,
                               draw=lambda rng, n, inp, vocab, batch: batch["masked_text"])
REGION_MASKED = batch_spec.Field("region_masked", lambda inp: (regions.max_regions(inp),), "int32", make=_region_masked,
                                 draw=lambda rng, n, inp, vocab, batch: np.zeros((n, regions.max_regions(inp)), np.int32))
ITM_KIND = batch_spec.Field("itm_kind", lambda inp: (), "int32", make=_itm_kind,
                            draw=lambda rng, n, inp, vocab, batch: rng.integers(0, 4, n).astype(np.int32))
ITM_TEXT = batch_spec.Field("itm_text", batch_spec.TEXT.shape, "int32", make=_itm_text, draw=_draw_texts_like)
QUESTION_TEXT = batch_spec.Field("question_text", batch_spec.TEXT.shape, "int32", make=_question_text,
                                 draw=_draw_texts_like)
ANSWER = batch_spec.Field("answer", lambda inp: (), "int32", make=_answer,
                          draw=lambda rng, n, inp, vocab, batch: rng.integers(0, len(ANSWERS), n).astype(np.int32))


def masked_cross_entropy(logits, targets, valid):
  """logits [..., C], targets [...] int, valid [...] bool -> the mean −log p(target) over valid entries (0 if none)."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_p, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
  weights = valid.astype(jnp.float32)
  return -(picked * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def itm_loss(match_logits, is_match, random_logits):
  """match_logits [B] (the shown text), is_match [B] bool, random_logits [B] (a rolled caption, never a
  match) -> []: binary cross-entropy averaged over the 2B judgements."""
  bce = lambda z, y: jnp.mean(jnp.logaddexp(0.0, z) - y * z)  # noqa: E731
  return 0.5 * (bce(match_logits, is_match.astype(jnp.float32)) + bce(random_logits, 0.0))


@registry.register("objective", "lxmert")
class LxmertObjective:
  """mlm_weight × MLM + itm_weight × ITM + attribute_weight × masked-object attributes + qa_weight × QA."""
  batch_fields = (MASKED_TEXT, MLM_TARGETS, regions.REGION_ATTRIBUTES, REGION_MASKED, ITM_KIND, ITM_TEXT,
                  QUESTION_TEXT, ANSWER)

  def __init__(self, mlm_weight: float = 1.0, itm_weight: float = 1.0, attribute_weight: float = 1.0,
               qa_weight: float = 1.0, attribute_classes: tuple = (6, 6, 2)):
    self.weights = dict(mlm=mlm_weight, itm=itm_weight, attributes=attribute_weight, qa=qa_weight)
    self.attribute_classes = tuple(attribute_classes)

  def __call__(self, outputs, batch, step=None):
    del step
    terms = {"mlm": masked_cross_entropy(outputs["mlm_logits"], batch["mlm_targets"], batch["mlm_targets"] > 0),
             "itm": itm_loss(outputs["itm_logits"], batch["itm_kind"] == 0, outputs["itm_random_logits"])}
    logits = jnp.split(outputs["attribute_logits"], np.cumsum(self.attribute_classes)[:-1], axis=-1)
    masked = batch["region_masked"] > 0
    terms["attributes"] = sum(masked_cross_entropy(part, batch["region_attributes"][..., k],
                                                   masked & (batch["region_attributes"][..., k] >= 0))
                              for k, part in enumerate(logits)) / len(logits)
    if "answer_logits" in outputs:
      terms["qa"] = masked_cross_entropy(outputs["answer_logits"], batch["answer"], batch["answer"] >= 0)
    elif self.weights["qa"]:
      raise ValueError("objectives.lxmert.qa_weight needs the model's answer head: set model.num_answers")
    total = sum(self.weights[k] * v for k, v in terms.items())
    return total, terms
