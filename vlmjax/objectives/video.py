"""Video-text contrastive loss (X-CLIP): CLIP's symmetric InfoNCE with each clip's own prompted texts.

With video-specific prompts (`model.prompts`, vlmjax/models/video.py) text j has an embedding per
clip i, w_ij, and the logits are s · v_i · w_ij; without, w_ij = w_j and this is CLIP's loss.
`video_text_negatives` adds each clip's hard-negative captions (vlmjax_shapes_video's: its caption
with the directions changed) as extra columns of its own row, as `clip_negatives` does for images.
"""
import jax.numpy as jnp

from vlmjax import registry
from vlmjax.objectives.contrastive import NEGATIVE_TEXT, ClipObjective, smoothed_cross_entropy


def video_text_loss(video_embeds, text_embeds, logit_scale, negative_embeds=None):
  """video_embeds [B, E], text_embeds [B, B, E] (row i: every text prompted by clip i) or [B, E],
  negative_embeds [B, K, E] (clip i's own negatives) or None, all L2-normalised; θ [] -> []:
  ½[CE([S, N], I) + CE(Sᵀ, I)] with S_ij = exp(θ) · v_i · w_ij and N_ik = exp(θ) · v_i · n_ik
  (the negatives only in clip i's row, the video→text direction)."""
  if text_embeds.ndim == 2:
    text_embeds = jnp.broadcast_to(text_embeds[None], (video_embeds.shape[0], *text_embeds.shape))
  scale = jnp.exp(logit_scale)
  logits = scale * jnp.einsum("id,ijd->ij", video_embeds, text_embeds, preferred_element_type=jnp.float32)
  labels = jnp.arange(logits.shape[0])
  rows = logits
  if negative_embeds is not None:
    rows = jnp.concatenate([logits, scale * jnp.einsum("id,ikd->ik", video_embeds, negative_embeds,
                                                       preferred_element_type=jnp.float32)], axis=1)
  return 0.5 * (smoothed_cross_entropy(rows, labels) + smoothed_cross_entropy(logits.T, labels))


@registry.register("objective", "video_text")
class VideoTextObjective(ClipObjective):
  """`video_text_loss` of the clips against the prompted texts (the plain texts without prompts);
  θ projected onto [0, ln 100] after each update as CLIP's."""

  def __init__(self, max_logit_scale: float | None = None):
    super().__init__(**({} if max_logit_scale is None else {"max_logit_scale": max_logit_scale}))

  def __call__(self, outputs, batch, step=None):
    del batch, step
    texts = outputs.get("prompted_text_embeds", outputs["text_embeds"])
    loss = video_text_loss(outputs["image_embeds"], texts, outputs["logit_scale"])
    return loss, {"logit_scale": jnp.exp(outputs["logit_scale"])}


@registry.register("objective", "video_text_negatives")
class VideoTextNegativesObjective(VideoTextObjective):
  """`video_text_loss` with each clip's `negative_text` [B, K, L] (its record's `negative_captions`)."""
  batch_fields = (NEGATIVE_TEXT,)

  def __call__(self, outputs, batch, step=None):
    del batch, step
    texts = outputs.get("prompted_text_embeds", outputs["text_embeds"])
    loss = video_text_loss(outputs["image_embeds"], texts, outputs["logit_scale"], outputs["negative_text_embeds"])
    return loss, {"logit_scale": jnp.exp(outputs["logit_scale"])}
