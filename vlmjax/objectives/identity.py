"""Label-level positives and attribute prediction (PLIP): images that share a class label are each
other's positives, and a head on the image tower predicts which attributes the scene shows."""
import jax
import jax.numpy as jnp
import numpy as np

from vlmjax import batch_spec, registry
from vlmjax.data import regions
from vlmjax.objectives.contrastive import MAX_LOGIT_SCALE, ClipObjective

# A record's class label (-1: none, e.g. a scene of several objects).
LABEL = batch_spec.Field("label", lambda inp: (), "int32", make=lambda example, shape: example.record.get("label", -1),
                         draw=lambda rng, n, inp, vocab, batch: rng.integers(-1, 4, n).astype(np.int32))


def label_positive_loss(image_embeds, text_embeds, labels, logit_scale):
  """Contrastive loss whose positives are the pairs with the same label (PLIP's identity level).

  image_embeds [B, D], text_embeds [B, D] (L2-normalised), labels [B] int (< 0: no label, only its
  own pair is positive), θ [] -> []. With P_ij = [i = j or labels_i = labels_j ≥ 0],
  L = ½[(1/B) Σ_i −(1/|P_i|) Σ_{j∈P_i} log softmax_j(s·u_i·V) + the same for texts over images].
  """
  logits = jnp.exp(logit_scale) * jnp.einsum("id,jd->ij", image_embeds, text_embeds,
                                             preferred_element_type=jnp.float32)
  positive = jnp.eye(labels.shape[0], dtype=bool) | ((labels[:, None] == labels[None, :]) & (labels[:, None] >= 0))
  weights = positive.astype(jnp.float32) / positive.sum(axis=1, keepdims=True)

  def direction(rows):
    return -jnp.sum(weights * jax.nn.log_softmax(rows, axis=1), axis=1).mean()

  return 0.5 * (direction(logits) + direction(logits.T))


def attribute_targets(attributes, valid, classes):
  """attributes [B, K, A] (class index per region and kind), valid [B, K], classes (C_1..C_A) ->
  [B, Σ C] float32: 1 where some valid region of the example has that attribute."""
  blocks = []
  for kind, count in enumerate(classes):
    hot = jax.nn.one_hot(attributes[:, :, kind], count) * (valid[:, :, None] > 0)
    blocks.append(hot.max(axis=1))
  return jnp.concatenate(blocks, axis=-1)


def attribute_loss(logits, targets):
  """Multi-label logistic loss: logits, targets [B, C] -> mean over B·C of
  −[t·log σ(z) + (1 − t)·log σ(−z)]."""
  return -jnp.mean(targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits))


class PlipObjective(ClipObjective):
  """PLIP's identity-level contrast (`label_positive_loss`) plus `attribute_weight` × attribute
  prediction (`attribute_loss` of the model's `attribute_logits`, `model.attribute_classes` equal to
  `attribute_classes` here) from the regions' attributes. θ is CLIP's, clamped.

  Simplified from the paper: no text-guided colourisation; attributes are predicted from the image
  alone, as a multi-label classification of what the scene shows."""
  batch_fields = (LABEL, regions.REGION_ATTRIBUTES, regions.REGION_VALID)

  def __init__(self, attribute_classes=(), attribute_weight: float = 1.0, max_logit_scale: float = MAX_LOGIT_SCALE):
    if attribute_weight and not attribute_classes:
      raise ValueError("attribute_weight > 0 needs attribute_classes (the model's model.attribute_classes)")
    super().__init__(max_logit_scale)
    self.attribute_classes, self.attribute_weight = tuple(int(c) for c in attribute_classes), attribute_weight

  def __call__(self, outputs, batch, step=None):
    del step
    contrast = label_positive_loss(outputs["image_embeds"], outputs["text_embeds"], batch["label"],
                                   outputs["logit_scale"])
    metrics = {"contrast": contrast, "logit_scale": jnp.exp(outputs["logit_scale"])}
    if not self.attribute_weight:
      return contrast, metrics
    if outputs["attribute_logits"].shape[-1] != sum(self.attribute_classes):
      raise ValueError(f"objectives.plip.attribute_classes {self.attribute_classes} do not match the model's "
                       f"attribute head ({outputs['attribute_logits'].shape[-1]} outputs)")
    targets = attribute_targets(batch["region_attributes"], batch["region_valid"], self.attribute_classes)
    attributes = attribute_loss(outputs["attribute_logits"], targets)
    predicted = (outputs["attribute_logits"] > 0).astype(jnp.float32)
    metrics.update(attributes=attributes, attribute_accuracy=jnp.mean(predicted == targets))
    return contrast + self.attribute_weight * attributes, metrics


registry.register("objective", "plip")(PlipObjective)
