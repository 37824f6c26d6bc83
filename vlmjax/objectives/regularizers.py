"""Terms that sit beside a cross-modal loss: TCL's intra-modal contrast and the STRUCTURE regulariser."""
import jax
import jax.numpy as jnp

from vlmjax import batch_spec, registry
from vlmjax.models.dual_encoder import l2_normalize
from vlmjax.objectives.contrastive import clip_loss


# TCL's second views: another draw of the image augmentation, and the caption again (a second
# dropout pass through the text tower).
IMAGE_VIEW2 = batch_spec.Field("image_view2", batch_spec.IMAGE.shape, "float32",
                               make=lambda example, shape: example.augment(), draw=batch_spec.draw_images)
TEXT_VIEW2 = batch_spec.Field("text_view2", batch_spec.TEXT.shape, "int32",
                              make=lambda example, shape: example.made["text"],
                              draw=lambda rng, n, inp, vocab, batch: batch["text"])


def local_mi_loss(global_embeds, local_embeds, local_mask, logit_scale):
  """TCL's local mutual-information term: each sample's global embedding picks out its own local
  embeddings against every other sample's locals (global-to-local InfoNCE, in-batch negatives).

  global_embeds [B, D], local_embeds [B, K, D] (L2-normalised), local_mask [B, K] bool, θ [] -> [].
  With u_ijk = exp(θ)·g_i·l_jk, local k of sample i has the loss
  −log(e^{u_iik} / (e^{u_iik} + Σ_{j≠i, valid k'} e^{u_ijk'})), averaged over i's valid locals
  (a sample without any contributes 0), then over the batch.
  """
  scores = jnp.exp(logit_scale) * jnp.einsum("id,jkd->ijk", global_embeds, local_embeds,
                                             preferred_element_type=jnp.float32)
  batch = scores.shape[0]
  positive = scores[jnp.arange(batch), jnp.arange(batch)]                            # [B, K]
  is_negative = (~jnp.eye(batch, dtype=bool))[:, :, None] & local_mask[None, :, :]   # [B, B, K]
  negatives = jax.nn.logsumexp(jnp.where(is_negative, scores, -jnp.inf), axis=(1, 2))  # [B]
  per_local = jnp.logaddexp(positive, negatives[:, None]) - positive
  valid = local_mask.astype(jnp.float32)
  return jnp.mean(jnp.sum(per_local * valid, axis=1) / jnp.maximum(valid.sum(axis=1), 1.0))


def pooled_image_locals(image_tokens, grid: int):
  """image_tokens [B, N, D] (a square patch grid) -> [B, grid², D]: L2-normalised, then averaged
  over non-overlapping windows down to a grid × grid grid (TCL's 16 image locals at grid 4)."""
  batch, num, dim = image_tokens.shape
  side = int(round(num ** 0.5))
  if side * side != num or side % grid:
    raise ValueError(f"objectives.tcl.local_grid {grid} must divide the {side}×{side} patch grid ({num} image "
                     "tokens)")
  x = l2_normalize(image_tokens)
  window = side // grid
  x = x.reshape(batch, grid, window, grid, window, dim).mean(axis=(2, 4))
  return x.reshape(batch, grid * grid, dim)


class TclObjective:
  """TCL (Yang et al. 2022) beside a cross-modal objective (`objectives = {'clip': ..., 'tcl': ...}`),
  with CLIP's temperature:

  - intra-modal contrast: two augmented views of each image, and two dropout passes of each text,
    contrasted within their modality with the symmetric InfoNCE (`image_weight`, `text_weight`);
  - local mutual information (`local_weight`, 0: off): the image's global embedding against its own
    pooled patch embeddings (`local_grid`²), the text's against its own valid token embeddings,
    other samples' locals as negatives (`local_mi_loss`).

  Simplified from the paper: in-batch negatives and the online model's own locals, with no gradient
  through them, where TCL has a momentum encoder and a queue.
  """
  batch_fields = (IMAGE_VIEW2, TEXT_VIEW2)

  def __init__(self, image_weight: float = 1.0, text_weight: float = 1.0, local_weight: float = 0.0,
               local_grid: int = 4):
    if local_grid < 1:
      raise ValueError(f"local_grid must be at least 1, got {local_grid}")
    self.image_weight, self.text_weight = image_weight, text_weight
    self.local_weight, self.local_grid = local_weight, local_grid

  def __call__(self, outputs, batch, step=None):
    del batch, step
    theta = outputs["logit_scale"]
    image = clip_loss(outputs["image_embeds"], outputs["image_embeds_view2"], theta)
    text = clip_loss(outputs["text_embeds"], outputs["text_embeds_view2"], theta)
    total, metrics = self.image_weight * image + self.text_weight * text, {"image": image, "text": text}
    if self.local_weight:
      image_locals = jax.lax.stop_gradient(pooled_image_locals(outputs["image_tokens"], self.local_grid))
      text_locals = jax.lax.stop_gradient(l2_normalize(outputs["text_tokens"]))
      local_image = local_mi_loss(outputs["image_embeds"], image_locals,
                                  jnp.ones(image_locals.shape[:2], bool), theta)
      local_text = local_mi_loss(outputs["text_embeds"], text_locals, outputs["text_mask"], theta)
      total = total + self.local_weight * (local_image + local_text)
      metrics.update(local_image=local_image, local_text=local_text)
    return total, metrics


registry.register("objective", "tcl")(TclObjective)


def _kl(p, q, eps=1e-12):
  """KL(p‖q) of row-stochastic [N, N] matrices, averaged over rows."""
  return jnp.sum(p * (jnp.log(p + eps) - jnp.log(q + eps))) / p.shape[0]


def structure_transitions(features, temperature: float):
  """features [N, D] -> row-softmax of the centred, L2-normalised similarity / τ, [N, N] float32."""
  x = features.astype(jnp.float32)
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
  x = x - x.mean(axis=0, keepdims=True)
  return jax.nn.softmax(x @ x.T / temperature, axis=-1)


def structure_divergence(frozen, aligned, temperature: float = 0.05, levels: int = 1,
                         weighting: str = "none", margin: float = 0.0):
  """STRUCTURE (Gröger et al. 2025): how much aligning changed the batch's neighbourhood structure.

  frozen [N, Dx], aligned [N, Dz] -> []. With P_X, P_Z the transition matrices of each, for
  l = 1..L: JS(P_X^l, P_Z^l) = ½[KL(P_X^l‖M) + KL(P_Z^l‖M)], M = their mean (the textbook JS; the
  reference code's reversed KLs are not copied), relu(JS − margin), divided by l for 'inverse';
  averaged over levels. The frozen side carries no gradient.
  """
  if weighting not in ("none", "inverse"):
    raise ValueError(f"STRUCTURE weighting must be 'none' or 'inverse', got '{weighting}'")
  p_x = jax.lax.stop_gradient(structure_transitions(frozen, temperature))
  p_z = structure_transitions(aligned, temperature)
  a, b, total = p_x, p_z, 0.0
  for level in range(1, levels + 1):
    if level > 1:
      a, b = a @ p_x, b @ p_z
    m = 0.5 * (a + b)
    js = jax.nn.relu(0.5 * (_kl(a, m) + _kl(b, m)) - margin)
    total = total + (js / level if weighting == "inverse" else js)
  return total / levels


class StructureObjective:
  """λ(step) · ½[R(image features, image embeds) + R(text features, text embeds)], λ warmed up
  linearly over `warmup_steps`; for aligning frozen towers (LiT-style, `optimizer.frozen`)."""

  def __init__(self, temperature: float = 0.05, levels: int = 1, weighting: str = "none",
               margin: float = 0.0, warmup_steps: int = 500):
    self.kwargs = dict(temperature=temperature, levels=levels, weighting=weighting, margin=margin)
    self.warmup_steps = warmup_steps

  def __call__(self, outputs, batch, step=None):
    del batch
    image = structure_divergence(outputs["image_features"], outputs["image_embeds"], **self.kwargs)
    text = structure_divergence(outputs["text_features"], outputs["text_embeds"], **self.kwargs)
    ramp = 1.0 if step is None or not self.warmup_steps else jnp.minimum(1.0, step / self.warmup_steps)
    return ramp * 0.5 * (image + text), {"image": image, "text": text, "ramp": ramp}


registry.register("objective", "structure")(StructureObjective)
