"""Contrastive objectives between image and text embeddings (docs/objectives.md).

Losses are pure functions of L2-normalised embeddings; the registered objectives adapt them to the
model's output dict and hold their hyper-parameters. All logits are float32.

Each loss has a global form (one [B, B] matrix, left to GSPMD) and a distributed form written with
`shard_map` over the batch axes (`data`, `fsdp`) of the mesh in context: CLIP computes its local rows
against the gathered other modality ([b, B] per device), SigLIP passes text shards around a ring
with `lax.ppermute` ([b, b] per device), FILIP scores its local images and texts against the gathered
token embeddings of the other modality. All give the global loss and gradients.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from vlmjax import batch_spec, registry
from vlmjax.data import text_negatives, text_paraphrases
from vlmjax.models.dual_encoder import l2_normalize

BATCH_AXES = ("data", "fsdp")

MAX_LOGIT_SCALE = float(np.log(100.0))  # CLIP clips the scale exp(θ) to at most 100.
NEG = -1e9  # masked similarities: a large finite negative, so an all-padding row stays finite


def smoothed_cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Mean softmax cross-entropy of rows: logits [b, C], labels [b] int -> [].
  With ε = `label_smoothing` the target is (1 − ε)·onehot(label) + ε/C over the C columns (ALIGN)."""
  log_probs = jax.nn.log_softmax(logits, axis=1)
  nll = -jnp.take_along_axis(log_probs, labels[:, None], 1)[:, 0]
  return ((1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(axis=1)).mean()


def clip_loss(image_embeds, text_embeds, logit_scale, label_smoothing: float = 0.0):
  """Symmetric softmax InfoNCE (CLIP).

  image_embeds [B, D], text_embeds [B, D] (L2-normalised), logit_scale θ [] -> loss [].
  L = ½[CE(s·U Vᵀ, I) + CE(s·V Uᵀ, I)] with s = exp(θ); `label_smoothing` ε > 0 replaces the
  one-hot targets by (1 − ε)·I + ε/B (ALIGN).
  """
  logits = jnp.exp(logit_scale) * jnp.einsum(
      "id,jd->ij", image_embeds, text_embeds, preferred_element_type=jnp.float32)
  labels = jnp.arange(logits.shape[0])
  return 0.5 * (smoothed_cross_entropy(logits, labels, label_smoothing) +
                smoothed_cross_entropy(logits.T, labels, label_smoothing))


def _num_shards() -> int:
  mesh = jax.sharding.get_abstract_mesh()
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def _over_batch_shards(per_shard_loss, *arrays_and_scalars):
  """Runs `per_shard_loss(local arrays..., scalars...)` under shard_map over the batch axes of the
  mesh in context and averages it over shards. Arrays are [B, ...]; scalars are replicated."""
  specs = tuple(P(BATCH_AXES) if jnp.ndim(x) else P() for x in arrays_and_scalars)
  fn = jax.shard_map(lambda *args: lax.pmean(per_shard_loss(*args), BATCH_AXES),
                     in_specs=specs, out_specs=P(), check_vma=False)
  return fn(*arrays_and_scalars)


def clip_loss_local(image_embeds, text_embeds, logit_scale, label_smoothing: float = 0.0):
  """CLIP loss with each device computing only its own rows against the gathered other modality.

  Same arguments and value as `clip_loss`; memory per device is O(b·B) instead of O(B²). The
  all-gather is differentiable (its transpose is a reduce-scatter), so gradients are the global ones.
  Must run under a mesh (`jax.set_mesh`) with `data`/`fsdp` axes.
  """

  def per_shard(u, v, theta):
    b = u.shape[0]
    labels = lax.axis_index(BATCH_AXES) * b + jnp.arange(b)
    all_u = lax.all_gather(u, BATCH_AXES, tiled=True)
    all_v = lax.all_gather(v, BATCH_AXES, tiled=True)
    scale = jnp.exp(theta)
    image_rows = scale * jnp.einsum("id,jd->ij", u, all_v, preferred_element_type=jnp.float32)
    text_rows = scale * jnp.einsum("id,jd->ij", v, all_u, preferred_element_type=jnp.float32)
    return 0.5 * (smoothed_cross_entropy(image_rows, labels, label_smoothing) +
                  smoothed_cross_entropy(text_rows, labels, label_smoothing))

  return _over_batch_shards(per_shard, image_embeds, text_embeds, logit_scale)


class ClipObjective:
  """CLIP softmax loss; after every update θ is projected onto [0, ln 100] (not clipped in the forward,
  which would stop its gradient at the bound while Adam's momentum pushes it further).

  `distributed`: 'global' (one [B, B] matrix) or 'local' (`clip_loss_local`). `label_smoothing` ε:
  ALIGN's smoothed targets (it uses 0.1), which soften the pull of a mismatched pair."""

  def __init__(self, max_logit_scale: float = MAX_LOGIT_SCALE, distributed: str = "global",
               label_smoothing: float = 0.0):
    if distributed not in ("global", "local"):
      raise ValueError(f"objectives.clip.distributed must be 'global' or 'local', got '{distributed}'")
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f"objectives.clip.label_smoothing must be in [0, 1), got {label_smoothing}")
    self.max_logit_scale = max_logit_scale
    self.loss = clip_loss if distributed == "global" else clip_loss_local
    self.label_smoothing = label_smoothing

  def __call__(self, outputs, batch, step=None):
    del batch, step
    loss = self.loss(outputs["image_embeds"], outputs["text_embeds"], outputs["logit_scale"],
                     self.label_smoothing)
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


def siglip_loss_ring(image_embeds, text_embeds, logit_scale, logit_bias):
  """SigLIP loss with text shards passed around a ring of devices (`lax.ppermute`, D−1 hops).

  Same arguments and value as `siglip_loss`; each device holds one [b, b] block at a time, so
  memory is O(b²) per device, plus the D−1 received [b, d] text shards the backward pass needs
  (O(B·d)). The diagonal block has the positives; the others are all negatives.
  Must run under a mesh (`jax.set_mesh`) with `data`/`fsdp` axes.
  """
  num_shards = _num_shards()
  ring = [(i, (i + 1) % num_shards) for i in range(num_shards)]

  def per_shard(u, v, t_prime, bias):
    scale = jnp.exp(t_prime)
    block = lambda texts: scale * jnp.einsum(
        "id,jd->ij", u, texts, preferred_element_type=jnp.float32) + bias
    logits = block(v)
    # −log σ(x) = softplus(−x); positives on the diagonal: −log σ(x) = softplus(x) − x.
    total = jax.nn.softplus(logits).sum() - jnp.trace(logits)
    # Without remat the backward keeps every hop's [b, b] block (O(b·B), no better than the global
    # form); recomputing each block from its text shard keeps one at a time. A scan, not a Python
    # loop: XLA then cannot schedule all the recomputed blocks at once.
    negatives = jax.checkpoint(lambda texts: jax.nn.softplus(block(texts)).sum())

    def hop(carry, _):
      total, v = carry
      v = lax.ppermute(v, BATCH_AXES, ring)
      return (total + negatives(v), v), None

    (total, _), _ = lax.scan(hop, (total, v), None, length=num_shards - 1)
    return total / u.shape[0]

  return _over_batch_shards(per_shard, image_embeds, text_embeds, logit_scale, logit_bias)


class SiglipObjective:
  """SigLIP sigmoid loss. The model's `logit_scale`/`logit_bias` params are t' and b; initialise
  them to ln 10 and −10 (`model.logit_scale_init`, `model.logit_bias_init`). Not clamped, as in
  big_vision. `distributed`: 'global' or 'ring' (`siglip_loss_ring`). A pair's probability is
  sigmoid(t·cos + b), each pair on its own (`probability`: how predict reports class scores)."""
  probability = "sigmoid"

  def __init__(self, distributed: str = "global"):
    if distributed not in ("global", "ring"):
      raise ValueError(f"objectives.siglip.distributed must be 'global' or 'ring', got '{distributed}'")
    self.loss = siglip_loss if distributed == "global" else siglip_loss_ring

  def __call__(self, outputs, batch, step=None):
    del batch, step
    loss = self.loss(outputs["image_embeds"], outputs["text_embeds"], outputs["logit_scale"],
                     outputs["logit_bias"])
    return loss, {"logit_scale": jnp.exp(outputs["logit_scale"]), "logit_bias": outputs["logit_bias"]}


registry.register("objective", "siglip")(SiglipObjective)


def clip_loss_with_negatives(image_embeds, text_embeds, negative_embeds, logit_scale):
  """CLIP loss where image i's own hard-negative captions are extra columns of its row only.

  image_embeds [B, D], text_embeds [B, D], negative_embeds [B, K, D] (L2-normalised), θ [] -> [].
  Image→text: softmax over the B captions and image i's K negatives; text→image as in CLIP.
  """
  scale = jnp.exp(logit_scale)
  logits = scale * jnp.einsum("id,jd->ij", image_embeds, text_embeds, preferred_element_type=jnp.float32)
  negatives = scale * jnp.einsum("id,ikd->ik", image_embeds, negative_embeds,
                                 preferred_element_type=jnp.float32)
  labels = jnp.arange(logits.shape[0])
  rows = jax.nn.log_softmax(jnp.concatenate([logits, negatives], axis=1), axis=1)
  image_to_text = -jnp.take_along_axis(rows, labels[:, None], 1).mean()
  text_to_image = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], 0).mean()
  return 0.5 * (image_to_text + text_to_image)


# The built-in dataset's negative captions per example: an attribute, a relation and a count swap.
NEGATIVES_PER_EXAMPLE = 3

NEGATIVE_TEXT = batch_spec.Field(
    "negative_text", lambda inp: (NEGATIVES_PER_EXAMPLE, inp.max_text_len), "int32",
    make=lambda example, shape: example.tokenize(example.record["negative_captions"]),
    draw=lambda rng, n, inp, vocab, batch: batch_spec.random_texts(
        rng, (n, NEGATIVES_PER_EXAMPLE), inp.max_text_len, vocab))


class ClipNegativesObjective(ClipObjective):
  """CLIP with hard-negative captions (SVLC / Structure-CLIP): the batch carries `negative_text`
  [B, K, T], the record's `negative_captions` tokenized."""
  batch_fields = (NEGATIVE_TEXT,)

  def __init__(self, max_logit_scale: float = MAX_LOGIT_SCALE):
    super().__init__(max_logit_scale)

  def __call__(self, outputs, batch, step=None):
    del batch, step
    loss = clip_loss_with_negatives(outputs["image_embeds"], outputs["text_embeds"],
                                    outputs["negative_text_embeds"], outputs["logit_scale"])
    return loss, {"logit_scale": jnp.exp(outputs["logit_scale"])}


registry.register("objective", "clip_negatives")(ClipNegativesObjective)


# The same batch key made from the caption text alone (`text_negatives.rule_negatives`), for any data.
RULE_NEGATIVE_TEXT = batch_spec.Field(
    "negative_text", NEGATIVE_TEXT.shape, "int32",
    make=lambda example, shape: example.tokenize(
        text_negatives.rule_negatives(example.record["caption"], shape[0], example.rng)),
    draw=NEGATIVE_TEXT.draw)


class ClipRuleNegativesObjective(ClipNegativesObjective):
  """SVLC's rule-based negatives: CLIP with hard-negative captions made from each caption's own text
  (a colour or shape replaced, two colours exchanged, a size or a relation reversed), with no
  access to the scene, as extra columns of each image's row."""
  batch_fields = (RULE_NEGATIVE_TEXT,)


registry.register("objective", "clip_rule_negatives")(ClipRuleNegativesObjective)


def masked_clip_loss(image_embeds, text_embeds, valid, logit_scale):
  """CLIP loss over the pairs whose text is `valid`.

  image_embeds [B, D], text_embeds [B, D] (L2-normalised), valid bool [B], θ [] -> [].
  Invalid texts are neither positives nor negatives; the mean runs over valid pairs (0 if none).
  """
  logits = jnp.exp(logit_scale) * jnp.einsum("id,jd->ij", image_embeds, text_embeds,
                                             preferred_element_type=jnp.float32)
  logits = jnp.where(valid[None, :], logits, NEG)
  labels = jnp.arange(logits.shape[0])
  image_to_text = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], 1)[:, 0]
  text_to_image = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], 0)[0]
  weights = valid.astype(jnp.float32)
  count = jnp.maximum(weights.sum(), 1.0)
  return 0.5 * ((image_to_text * weights).sum() + (text_to_image * weights).sum()) / count


def multi_positive_loss(image_embeds, text_embeds, text_valid, logit_scale):
  """Mean over the K slots of the CLIP loss between the images and that slot's texts (DreamLIP's
  multi-positive loss; SVLC's paraphrases).

  image_embeds [B, D], text_embeds [B, K, D] (L2-normalised), text_valid [B, K], θ [] -> [].
  """
  per_slot = jax.vmap(masked_clip_loss, in_axes=(None, 1, 1, None))(
      image_embeds, text_embeds, text_valid, logit_scale)
  slot_used = text_valid.any(axis=0).astype(jnp.float32)
  return (per_slot * slot_used).sum() / jnp.maximum(slot_used.sum(), 1.0)


PARAPHRASES_PER_EXAMPLE = 2


def _paraphrase_tokens(example, shape):
  """The caption's rule paraphrases tokenized, int32 [K, T]; a slot no rule filled is all padding
  (not a positive)."""
  paraphrases = text_paraphrases.rule_paraphrases(example.record["caption"], shape[0], example.rng)
  tokens = example.tokenize([p or "" for p in paraphrases])
  tokens[np.array([p is None for p in paraphrases])] = 0
  return tokens


# Paraphrases as the model's `multi_texts` (several positive texts per image).
RULE_PARAPHRASE_TEXT = batch_spec.Field(
    "multi_text", lambda inp: (PARAPHRASES_PER_EXAMPLE, inp.max_text_len), "int32", make=_paraphrase_tokens,
    draw=lambda rng, n, inp, vocab, batch: batch_spec.random_texts(
        rng, (n, PARAPHRASES_PER_EXAMPLE), inp.max_text_len, vocab))


class SvlcObjective(ClipRuleNegativesObjective):
  """SVLC from the caption text alone: the rule negatives (`clip_rule_negatives`) plus
  `paraphrase_weight` × the multi-positive loss over the caption's rule paraphrases
  (`text_paraphrases`: the same assertions reworded), so that rewording moves an embedding less
  than the one-word changes of the negatives do. Paraphrases stand in for the paper's LLM ones."""
  batch_fields = (RULE_NEGATIVE_TEXT, RULE_PARAPHRASE_TEXT)

  def __init__(self, paraphrase_weight: float = 1.0, max_logit_scale: float = MAX_LOGIT_SCALE):
    super().__init__(max_logit_scale)
    self.paraphrase_weight = paraphrase_weight

  def __call__(self, outputs, batch, step=None):
    loss, metrics = super().__call__(outputs, batch, step)
    paraphrases = multi_positive_loss(outputs["image_embeds"], outputs["multi_text_embeds"],
                                      outputs["multi_text_valid"], outputs["logit_scale"])
    return loss + self.paraphrase_weight * paraphrases, {**metrics, "negatives": loss, "paraphrases": paraphrases}


registry.register("objective", "svlc")(SvlcObjective)


def filip_similarities(image_tokens, text_tokens, text_mask, chunk_size: int = 0):
  """FILIP's two token-wise similarity matrices.

  image_tokens [B, N, D], text_tokens [B, T, D] (L2-normalised), text_mask bool [B, T] ->
  (s_image [B, B], s_text [B, B]), both indexed [image i, text j]:
    s_image[i, j] = mean_k max_{valid r} x_ik·y_jr        (each image token's best text token)
    s_text[i, j]  = mean_{valid r} max_k x_ik·y_jr        (each valid text token's best image token)
  With `chunk_size` > 0 the texts are processed `chunk_size` at a time (lax.map), so the [B, b, N, T]
  token-similarity block never exists at once for the whole batch.
  """

  def against(texts, mask):  # texts [c, T, D], mask [c, T] -> two [B, c] blocks
    sims = jnp.einsum("ikd,jrd->ijkr", image_tokens, texts, preferred_element_type=jnp.float32)
    best_text = jnp.where(mask[None, :, None, :], sims, NEG).max(axis=3)  # [B, c, N]
    best_image = sims.max(axis=2)                                         # [B, c, T]
    valid = mask[None].astype(jnp.float32)
    s_text = (best_image * valid).sum(-1) / jnp.maximum(valid.sum(-1), 1.0)
    # A caption with no valid token has no best match: its image-side similarity is 0, not −1e9.
    s_image = jnp.where(mask.any(-1)[None], best_text.mean(-1), 0.0)
    return s_image, s_text

  batch = text_tokens.shape[0]
  if not chunk_size or chunk_size >= batch:
    return against(text_tokens, text_mask)
  if batch % chunk_size:
    raise ValueError(f"FILIP chunk_size {chunk_size} does not divide the batch {batch}")
  chunks = lambda x: x.reshape(batch // chunk_size, chunk_size, *x.shape[1:])
  s_image, s_text = lax.map(lambda a: against(*a), (chunks(text_tokens), chunks(text_mask)))
  merge = lambda s: jnp.moveaxis(s, 0, 1).reshape(image_tokens.shape[0], batch)
  return merge(s_image), merge(s_text)


def filip_loss(image_tokens, text_tokens, text_mask, logit_scale, chunk_size: int = 0):
  """FILIP token-wise contrastive loss.

  image_tokens [B, N, D], text_tokens [B, T, D] (L2-normalised), text_mask [B, T], θ [] -> [].
  L = ½[CE_rows(s·S_image, I) + CE_cols(s·S_text, I)] with s = exp(θ): image i picks its text among
  all j by S_image[i, :], text j picks its image among all i by S_text[:, j].
  """
  s_image, s_text = filip_similarities(image_tokens, text_tokens, text_mask, chunk_size)
  scale = jnp.exp(logit_scale)
  labels = jnp.arange(s_image.shape[0])
  image_to_text = -jnp.take_along_axis(jax.nn.log_softmax(scale * s_image, axis=1), labels[:, None], 1)
  text_to_image = -jnp.take_along_axis(jax.nn.log_softmax(scale * s_text, axis=0), labels[None, :], 0)
  return 0.5 * (image_to_text.mean() + text_to_image.mean())


def filip_select_tokens(image_tokens, text_tokens, text_mask, fraction: float):
  """FILIP's token reduction before the all-gather: each sample keeps its ⌈fraction·n⌉ tokens with the
  highest token-wise max similarity against all samples of the other modality in the same group.

  image_tokens [b, N, D], text_tokens [b, T, D], text_mask [b, T] -> the same with N' and T' tokens.
  Padding never outranks a valid token (a caption shorter than T' keeps some padding, still masked).
  The choice of indices carries no gradient; the kept tokens do.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"FILIP top_token_fraction must be in (0, 1], got {fraction}")
  if fraction == 1.0:
    return image_tokens, text_tokens, text_mask
  sims = lax.stop_gradient(jnp.einsum("ikd,jrd->ikjr", image_tokens, text_tokens,
                                      preferred_element_type=jnp.float32))
  image_score = jnp.where(text_mask[None, None], sims, NEG).max(axis=(2, 3))        # [b, N]
  text_score = jnp.where(text_mask, sims.max(axis=(0, 1)), 2 * NEG)                 # [b, T]
  keep = lambda n: max(1, int(np.ceil(fraction * n)))
  _, image_idx = lax.top_k(image_score, keep(image_tokens.shape[1]))
  _, text_idx = lax.top_k(text_score, keep(text_tokens.shape[1]))
  take = lambda x, idx: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
  return take(image_tokens, image_idx), take(text_tokens, text_idx), take(text_mask, text_idx)


def filip_loss_local(image_tokens, text_tokens, text_mask, logit_scale, chunk_size: int = 0,
                     top_token_fraction: float = 1.0):
  """FILIP with each device scoring its own images and texts against the gathered other modality.

  Same arguments and value as `filip_loss` (with `top_token_fraction` < 1, as `filip_loss` on the tokens
  `filip_select_tokens` keeps, the groups being the devices' shards). Per device the token-similarity
  block is [b, c, N, T] for a text chunk of c (`chunk_size`, 0 = all B at once), never [B, B, N, T].
  Must run under a mesh (`jax.set_mesh`) with `data`/`fsdp` axes.
  """

  def per_shard(u, v, mask, theta):
    u, v, mask = filip_select_tokens(u, v, mask, top_token_fraction)
    b = u.shape[0]
    labels = lax.axis_index(BATCH_AXES) * b + jnp.arange(b)
    gather = lambda x: lax.all_gather(x, BATCH_AXES, tiled=True)
    s_image, _ = filip_similarities(u, gather(v), gather(mask), chunk_size)      # [b, B]
    _, s_text = filip_similarities(gather(u), v, mask, min(chunk_size, b))       # [B, b]
    scale = jnp.exp(theta)
    image_to_text = -jnp.take_along_axis(jax.nn.log_softmax(scale * s_image, axis=1), labels[:, None], 1)
    text_to_image = -jnp.take_along_axis(jax.nn.log_softmax(scale * s_text, axis=0), labels[None, :], 0)
    return 0.5 * (image_to_text.mean() + text_to_image.mean())

  return _over_batch_shards(per_shard, image_tokens, text_tokens, text_mask, logit_scale)


class FilipObjective(ClipObjective):
  """FILIP on the model's projected token embeddings (class token excluded, padding masked); the
  temperature θ is CLIP's, clamped to [0, ln 100] after each update.

  `distributed`: 'global' (`filip_loss`, texts in chunks of `chunk_size`) or 'local'
  (`filip_loss_local`). `top_token_fraction` < 1 keeps that share of each sample's tokens (FILIP uses
  0.25) before the gather in 'local', or over the whole batch in 'global'.
  """

  def __init__(self, chunk_size: int = 0, max_logit_scale: float = MAX_LOGIT_SCALE,
               distributed: str = "global", top_token_fraction: float = 1.0):
    if distributed not in ("global", "local"):
      raise ValueError(f"objectives.filip.distributed must be 'global' or 'local', got '{distributed}'")
    if not 0.0 < top_token_fraction <= 1.0:
      raise ValueError(f"objectives.filip.top_token_fraction must be in (0, 1], got {top_token_fraction}")
    super().__init__(max_logit_scale)
    self.chunk_size, self.distributed, self.top_token_fraction = chunk_size, distributed, top_token_fraction

  def __call__(self, outputs, batch, step=None):
    del batch, step
    tokens = (l2_normalize(outputs["image_tokens"]), l2_normalize(outputs["text_tokens"]), outputs["text_mask"])
    if self.distributed == "local":
      loss = filip_loss_local(*tokens, outputs["logit_scale"], self.chunk_size, self.top_token_fraction)
    else:
      tokens = filip_select_tokens(*tokens, self.top_token_fraction)
      loss = filip_loss(*tokens, outputs["logit_scale"], self.chunk_size)
    return loss, {"logit_scale": jnp.exp(outputs["logit_scale"])}


registry.register("objective", "filip")(FilipObjective)
