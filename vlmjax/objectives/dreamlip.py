"""DreamLIP (Zheng et al. 2024): several positive texts per image, and sub-caption grouping.

Each image has K texts: slot 0 the raw caption, slots 1..K−1 sentences sampled from its long caption
(the `multi_text` batch field, K = `config.input.subcaptions` + 1). Slots whose text is all padding
are masked out.
"""
import jax
import jax.numpy as jnp

from vlmjax import batch_spec, registry
from vlmjax.data.pipeline import sample_sentences
from vlmjax.models.dual_encoder import l2_normalize
from vlmjax.objectives.contrastive import MAX_LOGIT_SCALE, masked_clip_loss, multi_positive_loss  # noqa: F401


def grouped_patches(patch_embeds, text_embeds, sigma: float = 0.0):
  """Each sub-caption's view of its image: patches weighted by min-max similarity, zero below σ.

  patch_embeds [B, P, D], text_embeds [B, K, D] (L2-normalised) -> [B, K, D] (L2-normalised).
  When all patches are equally similar (max = min) or none passes σ, the weights are uniform.
  """
  sims = jnp.einsum("bkd,bpd->bkp", text_embeds, patch_embeds, preferred_element_type=jnp.float32)
  low, high = sims.min(-1, keepdims=True), sims.max(-1, keepdims=True)
  spread = high - low
  weights = jnp.where(spread > 1e-6, (sims - low) / jnp.where(spread > 1e-6, spread, 1.0), 0.0)
  weights = jnp.where(weights < sigma, 0.0, weights)
  total = weights.sum(-1, keepdims=True)
  weights = jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 1.0 / sims.shape[-1])
  return l2_normalize(jnp.einsum("bkp,bpd->bkd", weights, patch_embeds))


def grouping_loss(patch_embeds, text_embeds, text_valid, logit_scale_local, sigma: float = 0.0):
  """Symmetric InfoNCE over all B·K (grouped image view, sub-caption) pairs, with its own scale.

  patch_embeds [B, P, D], text_embeds [B, K, D] (L2-normalised), text_valid [B, K], θ_local [] -> [].
  """
  views = grouped_patches(patch_embeds, text_embeds, sigma)
  flat = lambda x: x.reshape(-1, x.shape[-1])
  return masked_clip_loss(flat(views), flat(text_embeds), text_valid.reshape(-1), logit_scale_local)


def make_multi_text(example, shape):
  """The caption, then K − 1 sentences sampled from the record's `long_caption` (without
  replacement when it has enough), tokenized: int32 [K, T]."""
  record = example.record
  return example.tokenize([record["caption"]] + sample_sentences(record["long_caption"], shape[0] - 1, example.rng))


MULTI_TEXT = batch_spec.Field(
    "multi_text", lambda inp: (inp.subcaptions + 1, inp.max_text_len), "int32", make=make_multi_text,
    draw=lambda rng, n, inp, vocab, batch: batch_spec.random_texts(rng, (n, inp.subcaptions + 1), inp.max_text_len, vocab))


class DreamlipObjective:
  """λ_mpcl · multi-positive loss + λ_group · grouping loss. The grouping loss needs the model's
  separate `logit_scale_local` (`model.local_logit_scale=True`); both scales are clamped like CLIP's."""
  batch_fields = (MULTI_TEXT,)

  def __init__(self, mpcl_weight: float = 1.0, grouping_weight: float = 1.0, sigma: float = 0.0,
               max_logit_scale: float = MAX_LOGIT_SCALE):
    self.mpcl_weight, self.grouping_weight, self.sigma = mpcl_weight, grouping_weight, sigma
    self.max_logit_scale = max_logit_scale

  def __call__(self, outputs, batch, step=None):
    del batch, step
    texts, valid = outputs["multi_text_embeds"], outputs["multi_text_valid"]
    mpcl = multi_positive_loss(outputs["image_embeds"], texts, valid, outputs["logit_scale"])
    metrics = {"mpcl": mpcl, "logit_scale": jnp.exp(outputs["logit_scale"])}
    loss = self.mpcl_weight * mpcl
    if self.grouping_weight:
      if "logit_scale_local" not in outputs:
        raise ValueError("objectives.dreamlip: the grouping loss needs model.local_logit_scale=True "
                         "(or set grouping_weight=0)")
      group = grouping_loss(l2_normalize(outputs["image_tokens"]), texts, valid, outputs["logit_scale_local"],
                            self.sigma)
      loss = loss + self.grouping_weight * group
      metrics.update(grouping=group, logit_scale_local=jnp.exp(outputs["logit_scale_local"]))
    return loss, metrics

  def project_params(self, params):
    clip = lambda x: jnp.clip(x, 0.0, self.max_logit_scale)
    out = {**params, "logit_scale": clip(params["logit_scale"])}
    if "logit_scale_local" in params:
      out["logit_scale_local"] = clip(params["logit_scale_local"])
    return out


registry.register("objective", "dreamlip")(DreamlipObjective)
