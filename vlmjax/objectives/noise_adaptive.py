"""Noise-adaptive contrastive learning (NEVLP's noise-adaptive learning, after DivideMix).

Networks fit clean pairs before they memorise noisy ones, so early in training a mismatched
image–caption pair keeps a high loss. The objective keeps each training record's latest CLIP loss
in the train state (`init_state`: one float per record of the train split, checkpointed with the
rest, so a resumed run continues with the same statistics), fits a two-component Gaussian mixture
to the losses of the records seen so far (`fit_two_gaussians`), and weights each pair's rows of the
CLIP loss by the posterior probability that it belongs to the low-loss ("clean") component.

Simplified from NEVLP: no concept-enhanced captions, and the mixture is refitted at every step on
the stored losses (NEVLP and DivideMix refit once per epoch).
"""
import jax
import jax.numpy as jnp

from vlmjax import batch_spec, registry
from vlmjax.objectives.contrastive import MAX_LOGIT_SCALE, ClipObjective


def clip_pair_losses(image_embeds, text_embeds, logit_scale):
  """Each pair's CLIP loss: image_embeds [B, D], text_embeds [B, D] (L2-normalised), θ [] ->
  (image→text CE [B], text→image CE [B]); their mean over the batch, averaged, is `clip_loss`."""
  logits = jnp.exp(logit_scale) * jnp.einsum(
      "id,jd->ij", image_embeds, text_embeds, preferred_element_type=jnp.float32)
  image_to_text = jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits)
  text_to_image = jax.nn.logsumexp(logits, axis=0) - jnp.diagonal(logits)
  return image_to_text, text_to_image


def weighted_clip_loss(image_embeds, text_embeds, logit_scale, weights):
  """CLIP with per-pair weights: weights [B] (no gradient flows through them) ->
  ½ Σ_i w_i (CE_i→t + CE_t→i) / Σ_i w_i; all weights 1 is `clip_loss`."""
  image_to_text, text_to_image = clip_pair_losses(image_embeds, text_embeds, logit_scale)
  weights = jax.lax.stop_gradient(weights)
  return 0.5 * jnp.sum(weights * (image_to_text + text_to_image)) / jnp.maximum(jnp.sum(weights), 1e-6)


def fit_two_gaussians(values, mask, iterations: int = 10, min_variance: float = 5e-4):
  """EM for a two-component 1-D Gaussian mixture on values [N] where mask [N] (bool).

  The values are min–max normalised over the masked ones first (DivideMix); the fit starts from
  means μ ∓ σ, both variances σ², equal weights (μ, σ² the masked mean and variance) and runs
  `iterations` EM steps, each variance floored at `min_variance`. -> (normalise: values -> the
  normalised scale, means [2], variances [2], mixing weights [2]), component 0 the lower mean.
  """
  mask = mask.astype(jnp.float32)
  count = jnp.maximum(mask.sum(), 1.0)
  low = jnp.min(jnp.where(mask > 0, values, jnp.inf))
  high = jnp.max(jnp.where(mask > 0, values, -jnp.inf))
  span = jnp.maximum(high - low, 1e-6)
  normalise = lambda v: (v - low) / span
  x = jnp.where(mask > 0, normalise(values), 0.0)
  mu = jnp.sum(x * mask) / count
  var = jnp.maximum(jnp.sum(mask * (x - mu) ** 2) / count, min_variance)
  params = (jnp.stack([mu - jnp.sqrt(var), mu + jnp.sqrt(var)]), jnp.stack([var, var]), jnp.array([0.5, 0.5]))

  def em_step(params, _):
    resp = mask[:, None] * _responsibilities(x, *params)           # [N, 2]
    total = jnp.maximum(resp.sum(0), 1e-9)
    means = (resp * x[:, None]).sum(0) / total
    variances = jnp.maximum((resp * (x[:, None] - means) ** 2).sum(0) / total, min_variance)
    return (means, variances, total / count), None

  (means, variances, mixing), _ = jax.lax.scan(em_step, params, None, length=iterations)
  order = jnp.argsort(means)
  return normalise, means[order], variances[order], mixing[order]


def _responsibilities(x, means, variances, mixing):
  """x [N] -> p(component k | x) [N, 2] for a 1-D Gaussian mixture."""
  log_density = (-0.5 * (x[:, None] - means) ** 2 / variances - 0.5 * jnp.log(2 * jnp.pi * variances)
                 + jnp.log(jnp.maximum(mixing, 1e-9)))
  return jax.nn.softmax(log_density, axis=1)


def clean_probability(values, stored, seen, iterations: int = 10):
  """values [b] (this batch's losses), stored [N] and seen [N] (every record's latest loss, and
  whether it has one) -> p(clean | value) [b]: the low-loss component's posterior of a mixture fitted
  to the stored losses."""
  normalise, means, variances, mixing = fit_two_gaussians(stored, seen, iterations)
  return _responsibilities(normalise(values), means, variances, mixing)[:, 0]


class NoiseAdaptiveObjective(ClipObjective):
  """CLIP whose pairs are weighted by their probability of being clean (NEVLP, DivideMix).

  State: `loss` [N] (each record's latest pair loss) and `seen` [N] int32. Before `warmup_steps`
  every weight is 1 and the losses are only recorded (the memorisation effect needs a model that
  has fitted the clean pairs first). Reads the batch's `record_index`; `caption_noisy` (known only
  when the noise was made by `data.caption_noise`) feeds the metrics, never the loss."""
  batch_fields = (batch_spec.RECORD_INDEX, batch_spec.CAPTION_NOISY)

  def __init__(self, warmup_steps: int = 100, em_iterations: int = 10, max_logit_scale: float = MAX_LOGIT_SCALE):
    if warmup_steps < 0 or em_iterations < 1:
      raise ValueError(f"warmup_steps must be >= 0 and em_iterations >= 1, got {warmup_steps} and {em_iterations}")
    super().__init__(max_logit_scale)
    self.warmup_steps, self.em_iterations = warmup_steps, em_iterations

  def init_state(self, num_examples: int) -> dict:
    if num_examples < 1:
      raise ValueError("objectives.nevlp keeps a loss per training record: the train split's size is unknown")
    return {"loss": jnp.zeros((num_examples,), jnp.float32), "seen": jnp.zeros((num_examples,), jnp.int32)}

  def __call__(self, outputs, batch, step=None, state=None):
    image_to_text, text_to_image = clip_pair_losses(outputs["image_embeds"], outputs["text_embeds"],
                                                    outputs["logit_scale"])
    pair_loss = jax.lax.stop_gradient(0.5 * (image_to_text + text_to_image))
    index = batch["record_index"]
    new_state = {"loss": state["loss"].at[index].set(pair_loss), "seen": state["seen"].at[index].set(1)}
    clean = clean_probability(pair_loss, new_state["loss"], new_state["seen"] > 0, self.em_iterations)
    started = jnp.asarray(True) if step is None else step >= self.warmup_steps
    weights = jnp.where(started, clean, 1.0)
    loss = weighted_clip_loss(outputs["image_embeds"], outputs["text_embeds"], outputs["logit_scale"], weights)
    noisy = batch["caption_noisy"].astype(jnp.float32)
    mean_over = lambda m: jnp.sum(m * clean) / jnp.maximum(jnp.sum(m), 1.0)
    metrics = {"logit_scale": jnp.exp(outputs["logit_scale"]), "weight": jnp.mean(weights),
               "clean_probability/clean_pairs": mean_over(1.0 - noisy),
               "clean_probability/noisy_pairs": mean_over(noisy)}
    return loss, metrics, new_state


registry.register("objective", "nevlp")(NoiseAdaptiveObjective)
