"""ISA: a light student that writes an image as a sentence of pseudo-words, distilled from a frozen
image tower on unlabeled images.

The model's pseudo-word encoder (`model.pseudo_words`, vlmjax/models/pseudo_words.py) writes each
image as K pseudo-words; the frozen text tower and its projection embed them as a sentence, s_i. The
teacher is the frozen large image tower's embedding of the same image, t_i. With the model's
(frozen) temperature θ:

  L = L_global + w · L_local
  L_global = −(1/B) Σ_i log [ exp(e^θ s_i·t_i) / Σ_j exp(e^θ s_i·t_j) ]     (global contrastive distillation)
  L_local  = (1/B) Σ_i (1 − s_i·t_i)                                           (local alignment)

L_global runs one way, student to teacher: at test time the pseudo-sentence is the query that ranks
gallery images, which is this direction; the teacher side is fixed, so the other direction would only
add a second normalisation over the batch's student sentences. L_local is our reading of the paper's
local alignment regularization: each pair's own cosine alignment, pulling s_i onto t_i whatever the
other images in the batch. Only images are read: the caption still arrives in the batch (the dual
encoder's fields), but no caption output reaches the loss, and XLA drops the unused text passes.
"""
import jax
import jax.numpy as jnp

from vlmjax import registry
from vlmjax.objectives.composed import query_to_target_loss


def local_alignment_loss(student_embeds, teacher_embeds):
  """student_embeds [B, E], teacher_embeds [B, E] (L2-normalised) -> []: mean of 1 − cos over the pairs."""
  cosine = jnp.einsum("id,id->i", student_embeds, teacher_embeds, preferred_element_type=jnp.float32)
  return jnp.mean(1.0 - cosine)


def isa_loss(student_embeds, teacher_embeds, logit_scale, local_weight: float = 1.0):
  """student_embeds [B, E] (pseudo-sentences), teacher_embeds [B, E] (images; no gradient flows into
  them), both L2-normalised, θ [] -> (loss [], global [], local []): `query_to_target_loss` student →
  teacher + local_weight · `local_alignment_loss`."""
  teacher_embeds = jax.lax.stop_gradient(teacher_embeds)
  global_loss = query_to_target_loss(student_embeds, teacher_embeds, logit_scale)
  local_loss = local_alignment_loss(student_embeds, teacher_embeds)
  return global_loss + local_weight * local_loss, global_loss, local_loss


@registry.register("objective", "isa")
class IsaObjective:
  """`isa_loss` of the pseudo-sentences against the image tower's embeddings. Needs `model.pseudo_words`."""

  def __init__(self, local_weight: float = 1.0):
    self.local_weight = local_weight

  def __call__(self, outputs, batch, step=None):
    del batch, step
    if "pseudo_sentence_embeds" not in outputs:
      raise ValueError("objectives.isa needs the model's pseudo-word encoder: set model.pseudo_words "
                       "(e.g. dict(num_words=4))")
    loss, global_loss, local_loss = isa_loss(outputs["pseudo_sentence_embeds"], outputs["image_embeds"],
                                             jax.lax.stop_gradient(outputs["logit_scale"]), self.local_weight)
    return loss, {"global": global_loss, "local": local_loss}
