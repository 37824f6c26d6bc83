"""Terms that sit beside a cross-modal loss: TCL's intra-modal contrast and the STRUCTURE regulariser."""
import jax
import jax.numpy as jnp

from vlmjax import batch_spec, registry
from vlmjax.objectives.contrastive import clip_loss


# TCL's second views: another draw of the image augmentation, and the caption again (a second
# dropout pass through the text tower).
IMAGE_VIEW2 = batch_spec.Field("image_view2", batch_spec.IMAGE.shape, "float32",
                               make=lambda example, shape: example.augment(), draw=batch_spec.draw_images)
TEXT_VIEW2 = batch_spec.Field("text_view2", batch_spec.TEXT.shape, "int32",
                              make=lambda example, shape: example.made["text"],
                              draw=lambda rng, n, inp, vocab, batch: batch["text"])


class TclObjective:
  """TCL intra-modal contrast (Yang et al. 2022): two augmented views of each image, and two dropout
  passes of each text, contrasted within their modality with the symmetric InfoNCE and CLIP's
  temperature. Use beside a cross-modal objective: `objectives = {'clip': ..., 'tcl': ...}`.

  Simplified from the paper: in-batch negatives (no momentum encoder, no queue) and no local-MI term.
  """
  batch_fields = (IMAGE_VIEW2, TEXT_VIEW2)

  def __init__(self, image_weight: float = 1.0, text_weight: float = 1.0):
    self.image_weight, self.text_weight = image_weight, text_weight

  def __call__(self, outputs, batch, step=None):
    del batch, step
    theta = outputs["logit_scale"]
    image = clip_loss(outputs["image_embeds"], outputs["image_embeds_view2"], theta)
    text = clip_loss(outputs["text_embeds"], outputs["text_embeds_view2"], theta)
    return self.image_weight * image + self.text_weight * text, {"image": image, "text": text}


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
