"""Batched, jitted generation with the KV cache: greedy, or temperature / top-k sampling.

`generate(model, params, prefix_tokens, ...)` runs one prefill call over the prefix (the image
placeholders and the prompt; a VLM also takes `images`), then one call per new token, each
attending over the cache. Prompts of different lengths are left-padded (the last column is every
row's last prompt token). The prefill attends as the prefix's kinds say (`prefix_mask`: a
bidirectional prefix, PaliGemma's, attends to itself as a whole), each new token causally. After a
row's EOS (`eos_id`: the tokenizer's) it gets padding; the loop stops when every row is done.
"""
import functools

import jax
import jax.numpy as jnp

from vlmjax.data.tokenizer import EOS, PAD
from vlmjax.models.decoder import BIDIRECTIONAL, CAUSAL, IMAGE_TOKEN


def prefix_kinds(prefix_tokens):
  """Default attention kinds of a prefix: image slots bidirectional, other tokens causal, 0 padding."""
  return jnp.where(prefix_tokens == IMAGE_TOKEN, BIDIRECTIONAL, jnp.where(prefix_tokens != PAD, CAUSAL, 0))


def sample_token(logits, rng, temperature: float = 0.0, top_k: int = 0):
  """logits [B, V] -> int32 [B]: argmax when temperature == 0, else a sample of softmax(logits / t)
  restricted to the top_k largest (all when top_k == 0)."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -1e9, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def generate(model, params, prefix_tokens, rng, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, images=None, prefix_mask=None, eos_id: int = EOS):
  """prefix_tokens int [B, P] -> new tokens int32 [B, max_new_tokens] (PAD after EOS).

  `model` is an LM or VLM module (its clone with decode=True is used); `prefix_mask`: attention
  kinds of the prefix (default `prefix_kinds`).
  """
  model = model.clone(decode=True)
  batch, length = prefix_tokens.shape
  kinds = prefix_kinds(prefix_tokens) if prefix_mask is None else prefix_mask

  def call(cache, tokens, kinds, images):
    variables = {"params": params} if cache is None else {"params": params, "cache": cache}
    extra = {} if images is None else {"images": images}
    out, updated = model.apply(variables, tokens=tokens, attention_mask=kinds, **extra, mutable=["cache"])
    return out["logits"], updated["cache"]

  # A call over a full-length input only creates the cache; its shapes are all that is needed.
  full = lambda x: jnp.pad(x, ((0, 0), (0, max_new_tokens)))
  shapes = jax.eval_shape(call, None, full(prefix_tokens), full(kinds), images)[1]
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  logits, cache = call(cache, prefix_tokens, kinds, images)
  rng, sub = jax.random.split(rng)
  token = sample_token(logits[:, -1], sub, temperature, top_k)
  out = jnp.zeros((batch, max_new_tokens), jnp.int32).at[:, 0].set(token)

  def cond(carry):
    step, _, done, _, _, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    step, token, done, out, cache, rng = carry
    logits, cache = call(cache, token[:, None], jnp.full((batch, 1), CAUSAL, jnp.int32), None)
    rng, sub = jax.random.split(rng)
    token = jnp.where(done, PAD, sample_token(logits[:, -1], sub, temperature, top_k))
    out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
    return step + 1, token, done | (token == eos_id), out, cache, rng

  carry = (jnp.int32(1), token, token == eos_id, out, cache, rng)
  return jax.lax.while_loop(cond, body, carry)[3]


def make_generate(model, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, eos_id: int = EOS):
  """-> jitted fn(params, prefix_tokens, rng, images=None, prefix_mask=None) -> int32 [B, max_new_tokens]."""
  fn = functools.partial(generate, model, max_new_tokens=max_new_tokens, temperature=temperature,
                         top_k=top_k, eos_id=eos_id)
  return jax.jit(lambda params, prefix_tokens, rng, images=None, prefix_mask=None: fn(
      params, prefix_tokens, rng, images=images, prefix_mask=prefix_mask))
