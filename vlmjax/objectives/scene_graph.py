"""Structure-CLIP (Huang et al. 2024): scene-graph knowledge in the text embedding, and a hinge
against relation negatives.

During training each caption's embedding gains its scene graph's knowledge embedding (the model's
`knowledge` encoder over the record's triplets, `triplet_text`), and its relation negative (the
dataset's, `negative_text` slot 1) the knowledge of the same triplets with subject and object
exchanged. The evaluators embed texts alone: the knowledge shapes training only.
"""
import jax
import jax.numpy as jnp

from vlmjax import registry
from vlmjax.data import regions
from vlmjax.models.dual_encoder import l2_normalize
from vlmjax.objectives.contrastive import MAX_LOGIT_SCALE, NEGATIVE_TEXT, ClipObjective, clip_loss

RELATION_NEGATIVE = 1  # the dataset's negatives per example: attribute, relation, count


def hinge_loss(image_embeds, text_embeds, negative_embeds, margin: float):
  """mean_i max(0, m − s(u_i, v_i) + s(u_i, n_i)): image_embeds, text_embeds, negative_embeds [B, D]
  (L2-normalised; s the cosine) -> []."""
  positive = jnp.einsum("bd,bd->b", image_embeds, text_embeds, preferred_element_type=jnp.float32)
  negative = jnp.einsum("bd,bd->b", image_embeds, negative_embeds, preferred_element_type=jnp.float32)
  return jax.nn.relu(margin - positive + negative).mean()


class StructureClipObjective(ClipObjective):
  """CLIP on knowledge-enhanced captions + `hinge_weight` × `hinge_loss` against their relation
  negatives (knowledge of the exchanged triplets). Needs `model.knowledge`; `knowledge=False` leaves
  the knowledge out (the hinge alone, the paper's ablation)."""
  batch_fields = (NEGATIVE_TEXT, regions.TRIPLET_TEXT)

  def __init__(self, hinge_weight: float = 1.0, margin: float = 0.2, knowledge: bool = True,
               max_logit_scale: float = MAX_LOGIT_SCALE):
    super().__init__(max_logit_scale)
    self.hinge_weight, self.margin, self.knowledge = hinge_weight, margin, knowledge

  def __call__(self, outputs, batch, step=None):
    del batch, step
    if self.knowledge and "knowledge_embeds" not in outputs:
      raise ValueError("objectives.structure_clip needs the model's knowledge encoder: set model.knowledge "
                       "(e.g. dict(width=128, depth=1, num_heads=2))")
    image, text = outputs["image_embeds"], outputs["text_embeds"]
    negative = outputs["negative_text_embeds"][:, RELATION_NEGATIVE]
    if self.knowledge:
      text = l2_normalize(text + outputs["knowledge_embeds"])
      negative = l2_normalize(negative + outputs["swapped_knowledge_embeds"])
    contrast = clip_loss(image, text, outputs["logit_scale"])
    hinge = hinge_loss(image, text, negative, self.margin)
    return contrast + self.hinge_weight * hinge, {"contrast": contrast, "hinge": hinge,
                                                  "logit_scale": jnp.exp(outputs["logit_scale"])}


registry.register("objective", "structure_clip")(StructureClipObjective)
