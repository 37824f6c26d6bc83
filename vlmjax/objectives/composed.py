"""Composed image retrieval, trained (SPRC): the composed query against the target image.

Each training example is a triplet of `vlmjax_shapes_cir` (a reference image, its modification text
as the caption, the edited scene as `target_image`). The model's composer (`model.composer`,
vlmjax/models/composer.py) reads the reference image's tokens and the modification's token states
into one query; the loss is the InfoNCE of queries against the batch's target images:

  L = mean_i −log softmax_j(exp(θ) · q_i · t_j)_i,   q [B, E] queries, t [B, E] target embeddings

(one direction, query → target, as CIR ranks targets for a query; θ the model's logit scale).
"""
import jax
import jax.numpy as jnp

from vlmjax import batch_spec, registry
from vlmjax.data import pipeline


def _target_image(example, shape):
  del shape
  return example.preprocess.augment(pipeline.decode_image(example.record["target_image"]), example.rng)


TARGET_IMAGE = batch_spec.Field("target_image", batch_spec.IMAGE.shape, "float32", make=_target_image,
                                draw=batch_spec.draw_images)


def query_to_target_loss(query_embeds, target_embeds, logit_scale):
  """query_embeds [B, E], target_embeds [B, E] (L2-normalised), θ [] -> []: InfoNCE, query i's
  target at column i."""
  logits = jnp.exp(logit_scale) * jnp.einsum("id,jd->ij", query_embeds, target_embeds,
                                             preferred_element_type=jnp.float32)
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits))


@registry.register("objective", "composed_retrieval")
class ComposedRetrievalObjective:
  """`query_to_target_loss` of the composer's queries against the target images. Needs `model.composer`."""
  batch_fields = (TARGET_IMAGE,)

  def __call__(self, outputs, batch, step=None):
    del batch, step
    if "composed_embeds" not in outputs:
      raise ValueError("objectives.composed_retrieval needs the model's composer: set model.composer "
                       "(e.g. dict(width=128, depth=2, num_heads=4, num_queries=4))")
    loss = query_to_target_loss(outputs["composed_embeds"], outputs["target_image_embeds"], outputs["logit_scale"])
    return loss, {"logit_scale": jnp.exp(outputs["logit_scale"])}
