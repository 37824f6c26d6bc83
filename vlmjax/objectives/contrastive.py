"""Contrastive objectives between image and text embeddings (DESIGN.md §4).

Losses are pure functions of L2-normalised embeddings; the registered objectives adapt them to the
model's output dict and hold their hyper-parameters. All logits are float32.
"""
import jax
import jax.numpy as jnp
import numpy as np

from vlmjax import registry

MAX_LOGIT_SCALE = float(np.log(100.0))  # CLIP clips the scale exp(θ) to at most 100.


def clip_loss(image_embeds, text_embeds, logit_scale):
  """Symmetric softmax InfoNCE (CLIP).

  image_embeds [B, D], text_embeds [B, D] (L2-normalised), logit_scale θ [] -> loss [].
  L = ½[CE(s·U Vᵀ, I) + CE(s·V Uᵀ, I)] with s = exp(θ).
  """
  logits = jnp.exp(logit_scale) * jnp.einsum(
      "id,jd->ij", image_embeds, text_embeds, preferred_element_type=jnp.float32)
  labels = jnp.arange(logits.shape[0])
  image_to_text = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], 1).mean()
  text_to_image = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], 0).mean()
  return 0.5 * (image_to_text + text_to_image)


class ClipObjective:
  """CLIP softmax loss; after every update θ is projected onto [0, ln 100] (not clipped in the forward,
  which would stop its gradient at the bound while Adam's momentum pushes it further)."""

  def __init__(self, max_logit_scale: float = MAX_LOGIT_SCALE):
    self.max_logit_scale = max_logit_scale

  def __call__(self, outputs, batch):
    del batch
    loss = clip_loss(outputs["image_embeds"], outputs["text_embeds"], outputs["logit_scale"])
    return loss, {"logit_scale": jnp.exp(outputs["logit_scale"])}

  def project_params(self, params):
    return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, self.max_logit_scale)}


registry.register("objective", "clip")(ClipObjective)


def siglip_loss(image_embeds, text_embeds, logit_scale, logit_bias):
  """Pairwise sigmoid loss (SigLIP).

  image_embeds [B, D], text_embeds [B, D] (L2-normalised), logit_scale t' [], logit_bias b [] -> [].
  L = −(1/B) Σ_i Σ_j log σ(z_ij (exp(t')·u_i·v_j + b)), z = +1 on the diagonal and −1 off it;
  normalised by B (rows), not B².
  """
  logits = jnp.exp(logit_scale) * jnp.einsum(
      "id,jd->ij", image_embeds, text_embeds, preferred_element_type=jnp.float32) + logit_bias
  signs = 2.0 * jnp.eye(logits.shape[0]) - 1.0
  return -jax.nn.log_sigmoid(signs * logits).sum() / logits.shape[0]


class SiglipObjective:
  """SigLIP sigmoid loss. The model's `logit_scale`/`logit_bias` params are t' and b; initialise
  them to ln 10 and −10 (`model.logit_scale_init`, `model.logit_bias_init`). Not clamped, as in
  big_vision."""

  def __call__(self, outputs, batch):
    del batch
    loss = siglip_loss(outputs["image_embeds"], outputs["text_embeds"], outputs["logit_scale"],
                       outputs["logit_bias"])
    return loss, {"logit_scale": jnp.exp(outputs["logit_scale"]), "logit_bias": outputs["logit_bias"]}


registry.register("objective", "siglip")(SiglipObjective)
