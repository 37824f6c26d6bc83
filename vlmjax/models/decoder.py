"""Causal decoder LM (RMSNorm, RoPE, SwiGLU, grouped-query attention, KV cache), and PyramidDrop.

The decoder reads token ids with `IMAGE_TOKEN` placeholders; the image embeddings a VLM passes are
put at those positions, in order. With `scale_token_embeddings` (Gemma's) only the token embeddings
are multiplied by sqrt(width): the image embeddings go in as the projector makes them, as in
PaliGemma. `attention_mask` is one int per token (`batch_spec`'s kinds):

  0 = padding (never attended), 1 = a bidirectional block (the image tokens: each block of 1s
  attends to itself as a whole), 2 = causal.

This is big_vision's `mask_ar` (1 where kind is 2) plus an input mask: a query attends to every
valid key whose running count of causal tokens is at most its own.

PyramidDrop (Xing et al. 2025): the layers are split into stages at `pdrop_layers` (e.g. (8, 16, 24)
for 32 layers). Before stage s > 0, the image tokens are ranked by the attention they get from the
ranking queries (training: the last token before each supervised span; prefill: the last token),
computed with that stage's first layer's query/key projections on the stop-gradient hidden states,
and only `int(N · pdrop_ratios[s−1])` of the original N image tokens are kept, in their original
order. Positions are re-numbered contiguously after each drop. Every row must hold the same number of
image tokens (shapes stay static). Outputs come back at the input positions: a dropped position gets
zero logits and zero hidden state (image positions are never supervised).

Decoding (`decode=True`): every stage keeps its own KV cache (its length fixed by the first call,
which only creates it), its own slot index and key mask; a call appends its T tokens. RoPE positions
are cache slots, so left padding in a prompt shifts every real token alike and changes nothing.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vlmjax import batch_spec, registry
from vlmjax.batch_spec import BIDIRECTIONAL, CAUSAL, IMAGE_TOKEN, PAD  # noqa: F401  (the decoder layout)
from vlmjax.models import layers
from vlmjax.models.sizes import decode_variant



def attention_mask_matrix(kinds):
  """kinds int [B, T] (0 pad, 1 bidirectional block, 2 causal) -> bool [B, 1, T, T], True = attend."""
  block = jnp.cumsum(kinds == CAUSAL, axis=1)
  mask = (block[:, None, :] <= block[:, :, None]) & (kinds > PAD)[:, None, :]
  return mask[:, None]


def take_rows(x, index):
  """x [B, T, ...], index int [B, T'] -> x[b, index[b]] [B, T', ...]."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def rank_query_mask(kinds, loss_weights=None):
  """PyramidDrop's ranking queries, bool [B, T]: the positions whose target starts a supervised
  span (their prediction is the span's first token: the last instruction token), or, without
  `loss_weights` (prefill), each row's last valid token."""
  if loss_weights is not None:
    supervised = loss_weights > 0
    before = jnp.pad(supervised[:, :-1], ((0, 0), (1, 0)))
    return supervised & ~before
  last = jnp.maximum((kinds > PAD).sum(1) - 1, 0)
  return jnp.arange(kinds.shape[1])[None, :] == last[:, None]


def drop_image_tokens(scores, image_mask, keep: int, length: int):
  """Keeps the `keep` best-scoring image tokens of each row and every other token, in order.

  scores float [B, T]; image_mask bool [B, T] with the same count n >= keep in every row
  -> the kept positions, ascending, int [B, length] (length = T − (n − keep)).
  """
  _, top = jax.lax.top_k(jnp.where(image_mask, scores, -1e9), keep)
  kept = (~image_mask).at[jnp.arange(image_mask.shape[0])[:, None], top].set(True)
  return jnp.argsort(~kept, axis=1, stable=True)[:, :length]


class Decoder(layers.Tower, kw_only=True):
  """tokens [B, T] int (0 = padding, IMAGE_TOKEN = image slot), attention_mask [B, T] int kinds
  (default: causal where tokens != 0), image_embeddings [B, N, D] (one per IMAGE_TOKEN, in order)
  -> {'logits' [B, T, V] float32, 'hidden' [B, T, D] float32 (after the final norm),
      'embedding' [V, D] (the input word-embedding table)}.

  `rank_queries` bool [B, T]: PyramidDrop's ranking queries (default: `rank_query_mask(kinds)`).
  """
  vocab_size: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  activation: str = "silu"
  tie_embeddings: bool = True
  # Gemma: the token embeddings (not the image embeddings at IMAGE_TOKEN slots, as in PaliGemma)
  # times sqrt(width), in the compute dtype as HF and big_vision compute it.
  scale_token_embeddings: bool = False
  rope_max_wavelength: float = 10_000.0  # RoPE base (HF `rope_theta`)
  pdrop_layers: tuple = ()    # PyramidDrop: layers before each drop, increasing, e.g. (8, 16, 24)
  pdrop_ratios: tuple = ()    # fraction of the original image tokens kept after each, e.g. (.5, .25, .125)
  decode: bool = False

  def stage_bounds(self) -> tuple:
    layers_ = tuple(int(l) for l in self.pdrop_layers)
    if len(layers_) != len(self.pdrop_ratios):
      raise ValueError(f"decoder: pdrop_layers {layers_} and pdrop_ratios {tuple(self.pdrop_ratios)} "
                       "must have the same length")
    bounds = (0,) + layers_ + (self.depth,)
    if any(a >= b for a, b in zip(bounds[:-1], bounds[1:])):
      raise ValueError(f"decoder: pdrop_layers {layers_} must increase strictly within (0, depth="
                       f"{self.depth})")
    if any(not 0.0 < r <= 1.0 for r in self.pdrop_ratios):
      raise ValueError(f"decoder: pdrop_ratios {tuple(self.pdrop_ratios)} must lie in (0, 1]")
    return bounds

  def block_config(self) -> dict:
    return dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, num_kv_heads=self.num_kv_heads,
                head_dim=self.head_dim, norm="rms", norm_eps=self.norm_eps, activation=self.activation,
                gated_mlp=True, use_bias=False, use_rope=True,
                rope_max_wavelength=self.rope_max_wavelength, decode=self.decode, dropout=self.dropout,
                attention=self.attention, dtype=self.dtype)

  def stage_context(self, stage: int, kinds):
    """-> (mask [B, 1, T, S], positions [B, T], cache_index) for a stage's current tokens."""
    batch, length = kinds.shape
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    if not self.decode:
      return attention_mask_matrix(kinds), positions, None
    initialized = self.has_variable("cache", f"index_{stage}")
    index = self.variable("cache", f"index_{stage}", lambda: jnp.zeros((), jnp.int32))
    key_mask = self.variable("cache", f"key_mask_{stage}", jnp.zeros, (batch, length), jnp.bool_)
    if not initialized:  # the call that sizes the cache attends only to its own tokens
      return attention_mask_matrix(kinds), positions, None
    start, slots = index.value, key_mask.value.shape[1]
    keys = jax.lax.dynamic_update_slice(key_mask.value, kinds > PAD, (0, start))
    new = jax.lax.dynamic_update_slice(
        jnp.zeros((batch, length, slots), jnp.bool_), attention_mask_matrix(kinds)[:, 0], (0, 0, start))
    earlier = (jnp.arange(slots) < start)[None, None, :] & keys[:, None, :]
    key_mask.value, index.value = keys, start + length
    return (new | earlier)[:, None], positions + start, start

  @nn.compact
  def __call__(self, tokens, attention_mask=None, image_embeddings=None, rank_queries=None,
               train: bool = False):
    batch, length = tokens.shape
    kinds = jnp.where(tokens != PAD, CAUSAL, PAD) if attention_mask is None else attention_mask
    bounds = self.stage_bounds()
    embed = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(self.width ** -0.5), ("vocab", "embed")), (self.vocab_size, self.width))
    x = jnp.take(embed, jnp.maximum(tokens, 0), axis=0).astype(self.dtype)
    if self.scale_token_embeddings:
      x = x * jnp.asarray(self.width ** 0.5, self.dtype)
    image_mask = tokens == IMAGE_TOKEN
    num_image = 0
    if image_embeddings is not None:
      num_image = image_embeddings.shape[1]
      slot = jnp.clip(jnp.cumsum(image_mask, axis=1) - 1, 0, num_image - 1)
      x = jnp.where(image_mask[..., None], take_rows(image_embeddings.astype(self.dtype), slot), x)
    x = nn.Dropout(self.dropout)(x, not train)
    if rank_queries is None:
      rank_queries = rank_query_mask(kinds)
    index = jnp.broadcast_to(jnp.arange(length), (batch, length))  # input position of each token
    if self.output_layer:
      raise ValueError("decoder: output_layer picks an encoder tower's layer; a decoder has none")
    block_cls, block = layers.block_class(self.remat), self.block_config()
    current, positions = num_image, None
    for stage in range(len(bounds) - 1):
      depth = bounds[stage + 1] - bounds[stage]
      first = None
      if stage > 0:
        first = block_cls(**block, name=f"layers_{stage}_first")
        keep = int(num_image * self.pdrop_ratios[stage - 1])
        if num_image and keep < current:
          # Rank with this stage's first layer on the tokens as they are (their current positions).
          scores = first(x, attention_mask_matrix(kinds), positions, True, None, rank_queries)
          order = drop_image_tokens(scores, image_mask, keep, x.shape[1] - (current - keep))
          x, kinds, image_mask, index, rank_queries = (
              take_rows(a, order) for a in (x, kinds, image_mask, index, rank_queries))
          current = keep
      mask, positions, cache_index = self.stage_context(stage, kinds)
      if first is not None:
        x = first(x, mask, positions, not train, cache_index)
        depth -= 1
      if depth:
        x = layers.Transformer(depth, block, scan=self.scan, remat=self.remat, final_norm=False,
                               unroll=self.unroll, name="layers" if stage == 0 else f"layers_{stage}")(
                                   x, mask, positions, not train, cache_index)
    hidden = layers.Norm("rms", "final_norm", self.norm_eps)(x)
    if self.tie_embeddings:
      logits = jnp.einsum("btd,vd->btv", hidden.astype(self.dtype), embed.astype(self.dtype),
                          preferred_element_type=jnp.float32)
    else:
      logits = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype, name="head",
                        kernel_init=layers.kernel_init(("embed", "vocab")))(hidden.astype(self.dtype))
    logits = layers.constrain(logits.astype(jnp.float32), ("activation_batch", "activation_length", "activation_vocab"))
    hidden = hidden.astype(jnp.float32)
    if hidden.shape[1] != length:  # tokens were dropped: back to the input positions, zeros there
      rows = jnp.arange(batch)[:, None]
      logits = jnp.zeros((batch, length, logits.shape[-1]), logits.dtype).at[rows, index].set(logits)
      hidden = jnp.zeros((batch, length, hidden.shape[-1]), hidden.dtype).at[rows, index].set(hidden)
    return {"logits": logits, "hidden": hidden, "embedding": embed}


def decoder_kwargs(config: dict) -> dict:
  """config.model.decoder (with an optional size `variant`, e.g. 'S') -> Decoder keyword arguments."""
  config = dict(config)
  return {**decode_variant(config.pop("variant", "S")), **config}


@registry.register("model", "lm")
class LanguageModel(nn.Module):
  """A text-only decoder LM: tokens [B, T], attention_mask [B, T] -> the Decoder's output dict.

  Its params live under `decoder/`, as in the VLM, so a VLM can start its decoder from an LM run
  (`config.init`), and PRIOR's reference LM is one of these.
  """
  decoder: dict
  vocab_size: int
  decode: bool = False
  dtype: jnp.dtype = jnp.float32

  batch_keys = {"tokens": "tokens", "attention_mask": "attention_mask"}
  towers = {"decoder": Decoder}

  @nn.compact
  def __call__(self, tokens, attention_mask=None, train: bool = False):
    return Decoder(**decoder_kwargs(self.decoder), vocab_size=self.vocab_size, decode=self.decode,
                   dtype=self.dtype, name="decoder")(tokens, attention_mask, train=train)

  def num_image_tokens(self, image_size: int) -> int:
    del image_size
    return 0

  def batch_fields(self, input_config, prompt_len: int = 0) -> tuple:
    del input_config
    return batch_spec.caption_fields(0, prompt_len)


def layer_list(decoder_params) -> list:
  """A decoder's params (its `decoder/` subtree, scanned stacks) -> its blocks' params in layer order,
  whatever its PyramidDrop stages: stage 0's `layers` stack, then for each later stage s its
  `layers_{s}_first` block and its `layers_{s}` stack."""
  out, stage = [], 0
  while stage == 0 or f"layers_{stage}_first" in decoder_params or f"layers_{stage}" in decoder_params:
    if stage > 0 and f"layers_{stage}_first" in decoder_params:
      out.append(decoder_params[f"layers_{stage}_first"])
    stack = decoder_params.get("layers" if stage == 0 else f"layers_{stage}")
    if stack is not None:
      if "blocks" not in stack:
        raise ValueError("decoder params: re-staging needs scanned layers (scan=True)")
      out += [jax.tree.map(lambda a, i=i: a[i], stack["blocks"])
              for i in range(jax.tree.leaves(stack["blocks"])[0].shape[0])]
    stage += 1
  return out


def restage(source_params, target_params):
  """The decoder `source_params` laid out in the stages of `target_params` (a tree of the same
  decoder with other PyramidDrop stages; arrays or shape structs): the same layers in the same
  order, so an LM run starts a PyramidDrop VLM. -> a tree shaped like `target_params`."""
  layers_ = layer_list(source_params)
  count = sum(1 if k.endswith("_first") else jax.tree.leaves(v["blocks"])[0].shape[0]
              for k, v in target_params.items() if k.startswith("layers"))
  if len(layers_) != count:
    raise ValueError(f"decoder params: the source has {len(layers_)} layers, this model {count}")
  out, position = {}, 0
  for name in target_params:
    if not name.startswith("layers"):
      out[name] = source_params[name]
  stage = 0
  while stage == 0 or any(k in target_params for k in (f"layers_{stage}_first", f"layers_{stage}")):
    if stage > 0 and f"layers_{stage}_first" in target_params:
      out[f"layers_{stage}_first"] = layers_[position]
      position += 1
    name = "layers" if stage == 0 else f"layers_{stage}"
    if name in target_params:
      count = jax.tree.leaves(target_params[name]["blocks"])[0].shape[0]
      out[name] = {"blocks": jax.tree.map(lambda *a: jnp.stack(a), *layers_[position:position + count])}
      position += count
    stage += 1
  return out
