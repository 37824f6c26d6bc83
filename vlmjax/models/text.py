"""Transformer text tower: token ids -> transformer -> pooled embedding and token embeddings."""
import flax.linen as nn
import jax.numpy as jnp

from vlmjax import registry
from vlmjax.models import layers


@registry.register("text_tower", "transformer")
class TextTransformer(layers.Tower, kw_only=True):
  """tokens [B, T] int (0 = padding) -> (pooled [B, D], tokens [B, T, D], token_mask [B, T]).

  `pool`: 'eos' takes the last non-padding token (CLIP's EOT pooling; with `causal` it has seen the
  whole caption), 'mean' averages the non-padding tokens, 'last' takes position max_len - 1 whatever
  the caption's length (big_vision's `pool_type='last'`, SigLIP's: its tokenizer pads with EOS, so
  that position holds one; texts must then be max_len long). SigLIP's text tower is `causal=False`,
  `pool='last'`, and with `mask_padding=False` every position attends to every other, padding
  included, as big_vision's (which has no attention mask at all).

  `eos_id`: for tokenizers whose padding is not a token apart at id 0 (CLIP's BPE pads with its
  end-of-text token, and its id 0 is "!"), the text ends at the first `eos_id` of the row, as Hugging
  Face's CLIPTextModel pools: the tokens up to it are the text (`token_mask`), the rest padding. A row
  without one falls back to `tokens != 0`. -1: vlmjax's own tokenizers, padding is id 0.

  `prefix` [B, K, D] (optional): embeddings placed before the tokens' embeddings, e.g. an image's
  pseudo-words (ISA, vlmjax/models/pseudo_words.py). They take positions 0..K-1 and the tokens
  K..K+T-1 (K + T <= max_len); the mask counts them as real tokens. The outputs then cover all K + T
  positions: tokens [B, K+T, D], token_mask [B, K+T]. Without a prefix, nothing changes.
  """
  vocab_size: int
  max_len: int = 64
  causal: bool = True
  pool: str = "eos"
  mask_padding: bool = True
  eos_id: int = -1

  @nn.compact
  def __call__(self, tokens, train: bool = False, prefix=None):
    if self.pool not in ("eos", "mean", "last"):
      raise ValueError(f"unknown text pool '{self.pool}'; known: eos, mean, last")
    length = tokens.shape[1] + (0 if prefix is None else prefix.shape[1])
    if length > self.max_len:
      what = "text length" if prefix is None else f"prefix {prefix.shape[1]} + text length"
      raise ValueError(f"{what} {length} exceeds the text tower's max_len {self.max_len}")
    if self.pool == "last" and length != self.max_len:
      raise ValueError(f"text pool 'last' reads position max_len - 1 = {self.max_len - 1}; texts are "
                       f"{length} long (pad them to max_len, input.max_text_len = model.text.max_len)")
    token_mask = tokens != 0
    if self.eos_id >= 0:
      is_eos = tokens == self.eos_id
      end = jnp.argmax(is_eos, axis=1)
      upto_eos = jnp.arange(tokens.shape[1])[None, :] <= end[:, None]
      token_mask = jnp.where(is_eos.any(axis=1, keepdims=True), upto_eos, token_mask)
    embed = nn.Embed(self.vocab_size, self.width, name="token_embed",
                     embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                 ("vocab", "embed")))
    pos = self.param("pos_embedding",
                     nn.with_logical_partitioning(nn.initializers.normal(0.01), (None, "length", "embed")),
                     (1, self.max_len, self.width))
    x = embed(tokens)
    if prefix is not None:  # pseudo-words first; they count as text
      x = jnp.concatenate([prefix.astype(x.dtype), x], axis=1)
      token_mask = jnp.concatenate([jnp.ones(prefix.shape[:2], bool), token_mask], axis=1)
    x = (x + pos[:, :length]).astype(self.dtype)
    x = nn.Dropout(self.dropout)(x, not train)
    mask = token_mask[:, None, None, :] if self.mask_padding else None  # with it, padding keys are never attended
    if self.causal:
      causal = nn.make_causal_mask(token_mask, dtype=jnp.bool_)
      mask = causal if mask is None else mask & causal
    x = self.encoder()(x, mask, deterministic=not train)
    if self.pool == "eos":
      last = jnp.maximum(token_mask.sum(axis=1) - 1, 0)
      pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    elif self.pool == "last":
      pooled = x[:, -1]
    else:
      weights = token_mask[..., None].astype(x.dtype)
      pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    return pooled, x, token_mask
