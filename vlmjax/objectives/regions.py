"""Region-level contrastive alignment (GRAIN): each object's region of the image against its own
description, across all the objects of the batch, beside the global image–caption loss."""
import jax
import jax.numpy as jnp

from vlmjax import registry
from vlmjax.data import regions
from vlmjax.models.fusion import region_embeddings
from vlmjax.objectives.contrastive import NEG


def region_text_loss(region_embeds, text_embeds, valid, same_text, logit_scale):
  """Symmetric InfoNCE between regions and their descriptions.

  region_embeds [M, E], text_embeds [M, E] (L2-normalised), valid [M] bool, same_text [M, M] bool
  (two regions described by the same words), θ [] -> []. Region m's positive is description m; its
  negatives are the valid descriptions that differ from m's (an identical description of another
  object is neither: it is not wrong for m). Likewise for each description against the regions.
  Averaged over the valid regions of both directions; 0 when there are none.
  """
  logits = jnp.exp(logit_scale) * jnp.einsum("md,nd->mn", region_embeds, text_embeds,
                                             preferred_element_type=jnp.float32)
  eye = jnp.eye(logits.shape[0], dtype=bool)
  allowed = (eye | ~same_text) & valid[None, :] & valid[:, None]
  masked = jnp.where(allowed, logits, NEG)  # finite: an invalid row's gradient stays 0, not NaN
  diagonal = jnp.diagonal(logits)
  region_to_text = jax.nn.logsumexp(masked, axis=1) - diagonal
  text_to_region = jax.nn.logsumexp(masked, axis=0) - diagonal
  weight = valid.astype(jnp.float32)
  per_region = jnp.where(valid, 0.5 * (region_to_text + text_to_region), 0.0)
  return jnp.sum(per_region * weight) / jnp.maximum(weight.sum(), 1.0)


class GrainObjective:
  """GRAIN's region–description alignment: the mean of the image tokens in each object's box
  (`region_embeddings`) contrasted with that object's description over all the batch's objects
  (`region_text_loss`), with CLIP's temperature. Use beside the global loss:
  `objectives = {'clip': ..., 'grain': ...}`.

  Simplified from the paper: the boxes and descriptions are the dataset's (GRAIN has them from an
  MLLM and an open-vocabulary detector), and a region is pooled from the patch tokens in its box
  rather than predicted from learned region queries."""
  batch_fields = (regions.REGION_BOXES, regions.REGION_VALID, regions.REGION_TEXT)

  def __call__(self, outputs, batch, step=None):
    del step
    valid = batch["region_valid"] > 0
    region_embeds = region_embeddings(outputs["image_tokens"], batch["region_boxes"], valid)
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    texts = flat(batch["region_text"])
    same_text = jnp.all(texts[:, None, :] == texts[None, :, :], axis=-1)
    loss = region_text_loss(flat(region_embeds), flat(outputs["region_text_embeds"]), flat(valid), same_text,
                            outputs["logit_scale"])
    return loss, {"regions_per_example": jnp.mean(jnp.sum(valid, axis=1))}


registry.register("objective", "grain")(GrainObjective)
