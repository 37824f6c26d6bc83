"""The one set of transformer layers every tower is built from.

One attention, one MLP, one block, one stack. Every parameter carries logical axis names
(`embed`, `mlp`, `heads`, `kv`, `layers`) that `vlmjax.sharding` maps onto mesh axes, and activations
get logical constraints under their own names (`activation_batch`, `activation_length`, ...).
Parameters are float32; `dtype` is the compute dtype. Softmax and norms run in float32.
"""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from vlmjax import sharding

Array = jax.Array

ACTIVATIONS: dict[str, Callable] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP's activation
    "relu": nn.relu,
    "silu": nn.silu,
}

# What a rematerialised block keeps for its backward pass; the rest is recomputed from the block's
# input. From most memory to least: everything ('none'); every matmul output without batch
# dimensions, i.e. all but the attention core ('dots'); the attention sub-layer's named
# activations, so only the MLP is recomputed ('save_attention'); the MLP's, so only the attention
# is ('save_mlp'); nothing ('full').
REMAT_POLICIES = {
    "none": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_attention": jax.checkpoint_policies.save_only_these_names(
        "attention_qkv", "attention_context", "attention_out"),
    "save_mlp": jax.checkpoint_policies.save_only_these_names("attention_out", "mlp_in", "mlp_hidden"),
    "full": jax.checkpoint_policies.nothing_saveable,
}

# How the attention core (scores, softmax, weighted values) is computed: 'einsum' (this file's
# matmuls, laid out for CPUs, any dtype), or `jax.nn.dot_product_attention` with XLA's ('xla') or
# cuDNN's fused kernel ('cudnn': NVIDIA GPUs, bfloat16/float16 compute). All three give the same
# function; a fully masked row gives uniform weights in each.
ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn")


def constrain(x: Array, axes: tuple) -> Array:
  """x with the sharding its logical `axes` (activation names, `activation_batch`, ...) map to under
  flax's `nn.logical_axis_rules` context, mesh axes that do not divide a dimension dropped; a no-op
  outside a mesh or without rules. Every apply runs under the rules (`sharding.use`), so train,
  eval, predict and generate place their activations alike."""
  rules, mesh = nn.get_logical_axis_rules(), jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, sharding.fit_spec(nn.logical_to_mesh_axes(axes, rules), x.shape, mesh))


def kernel_init(axes: tuple, init=nn.initializers.xavier_uniform()):
  return nn.with_logical_partitioning(init, axes)


def Norm(kind: str, name: str | None = None, eps: float = 1e-6):
  """LayerNorm ('layer') or RMSNorm ('rms'), computed in float32. `eps`: 1e-6 (big_vision); imported
  CLIP towers use 1e-5 (PyTorch's LayerNorm), Llama-style decoders their config's `rms_norm_eps`."""
  if kind == "layer":
    return nn.LayerNorm(
        epsilon=eps, dtype=jnp.float32, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))
  if kind == "rms":
    return nn.RMSNorm(
        epsilon=eps, dtype=jnp.float32, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)))
  raise ValueError(f"unknown norm '{kind}'; known: layer, rms")


def rope(x: Array, positions: Array, max_wavelength: float = 10_000.0) -> Array:
  """Rotary position embedding. x: [B, T, H, Dh], positions: [B, T] -> [B, T, H, Dh]."""
  half = x.shape[-1] // 2
  freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions[..., None, None].astype(jnp.float32) * freq  # [B, T, 1, half]
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Mlp(nn.Module):
  """Two-layer MLP, or gated (SwiGLU-style) when `gated`. [B, T, D] -> [B, T, D]."""
  mlp_dim: int
  activation: str = "gelu"
  gated: bool = False
  use_bias: bool = True
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    width = x.shape[-1]
    act = ACTIVATIONS[self.activation]
    dense = lambda features, axes, name: nn.Dense(
        features, use_bias=self.use_bias, dtype=self.dtype, name=name,
        kernel_init=kernel_init(axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]))
    h = act(checkpoint_name(dense(self.mlp_dim, ("embed", "mlp"), "fc1")(x), "mlp_hidden"))
    if self.gated:
      h = h * checkpoint_name(dense(self.mlp_dim, ("embed", "mlp"), "gate")(x), "mlp_hidden")
    h = constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
    h = nn.Dropout(self.dropout)(h, deterministic)
    return dense(width, ("mlp", "embed"), "fc2")(h)


class HeadsProjection(nn.Module):
  """The params of `nn.DenseGeneral((heads, head_dim))` on [.., D] inputs: the same names, shapes and
  initial values (xavier-uniform over the kernel seen as [D, heads·head_dim]), returned instead of
  applied, so that `Attention` can run its query, key and value projections as one matmul.
  -> (kernel [D, heads, head_dim], bias [heads, head_dim] or None)."""
  heads: int
  head_dim: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, width: int):
    def init(rng, shape, dtype=jnp.float32):
      return nn.initializers.xavier_uniform()(rng, (shape[0], shape[1] * shape[2]), dtype).reshape(shape)

    kernel = self.param("kernel", kernel_init(("embed", "heads", "kv"), init), (width, self.heads, self.head_dim))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
                      (self.heads, self.head_dim)) if self.use_bias else None
    return kernel, bias


class OutProjection(nn.Module):
  """`nn.DenseGeneral(width, axis=(-2, -1))` on [B, T, H, Dh] -> [B, T, width]: the same param names,
  shapes and initial values (kernel [H, Dh, width], xavier-uniform over [H·Dh, width]; bias [width])
  and the same output. Its kernel is made in its final shape: flax checks a param's shape during
  apply by evaluating its initialiser, and under the logical axis rules a kernel initialised flat
  (DenseGeneral's) cannot take its three axis names."""
  width: int
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    def init(rng, shape, dtype=jnp.float32):
      return nn.initializers.xavier_uniform()(rng, (shape[0] * shape[1], shape[2]), dtype).reshape(shape)

    kernel = self.param("kernel", kernel_init(("heads", "kv", "embed"), init), (*x.shape[-2:], self.width))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                      (self.width,)) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 2, x.ndim - 1), (0, 1)), ((), ())))
    return y if bias is None else y + bias


def padded_attention(q, k, v, mask, implementation: str, multiple: int = 8):
  """`jax.nn.dot_product_attention` with both lengths padded up to a `multiple`, the padding masked.

  q [B, T, H, Dh], k, v [B, S, K, Dh], mask [B, 1|H, T, S] or None -> [B, T, H, Dh]. jax's cuDNN path
  rejects odd lengths in training (a ViT's 197 tokens, a 77-token caption). Padded keys are masked
  out (by sequence lengths without a mask, cuDNN's cheaper form, else in the mask) and padded query
  rows dropped, so the result is the unpadded attention."""
  t, s = q.shape[1], k.shape[1]
  if not (t % multiple or s % multiple):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, -n % multiple), (0, 0), (0, 0)))
  q, k, v = pad(q, t), pad(k, s), pad(v, s)
  lengths = {}
  if mask is None:
    lengths = dict(query_seq_lengths=jnp.full(q.shape[:1], t, jnp.int32),
                   key_value_seq_lengths=jnp.full(q.shape[:1], s, jnp.int32))
  else:
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, q.shape[1] - t), (0, k.shape[1] - s)))
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation, **lengths)
  return out[:, :t]


class Attention(nn.Module):
  """Multi-head attention with optional grouped-query heads, RoPE and a KV cache.

  x: [B, T, D]; mask: bool [B, 1|H, T, S] (True = attend) or None -> [B, T, D].

  With `decode`, keys and values live in the `cache` collection ([B, S, K, Dh] each, S fixed by the
  first call, which only creates the zero cache): a call writes its T new keys/values at slot
  `cache_index` and attends over all S slots, so `mask` is then [B, 1|H, T, S] over cache slots.
  With `return_keys`, returns (out, keys [B, S, K, Dh]) (ToMe's merge metric). With `rank_queries`
  (bool [B, T]), returns instead the attention each key receives, averaged over heads and over the
  query rows marked True: [B, S] float32 (PyramidDrop's ranking; no value path, no cache).
  With `inputs_kv` [B, S, D'], keys and values are projected from it and queries from x
  (cross-attention, as `nn.MultiHeadDotProductAttention(x, inputs_kv)`; no RoPE, no cache).
  `implementation` computes the core (ATTENTION_IMPLEMENTATIONS); ranking always uses the einsums.
  """
  num_heads: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  use_bias: bool = True
  use_rope: bool = False
  rope_max_wavelength: float = 10_000.0  # RoPE's base (HF's `rope_theta`)
  decode: bool = False
  return_keys: bool = False
  implementation: str = "einsum"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, positions: Array | None = None,
               cache_index: Array | None = None, rank_queries: Array | None = None,
               inputs_kv: Array | None = None):
    width = x.shape[-1]
    head_dim = self.head_dim or width // self.num_heads
    num_kv = self.num_kv_heads or self.num_heads
    if self.num_heads % num_kv:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={num_kv}")
    if inputs_kv is not None and (self.use_rope or self.decode):
      raise ValueError("Attention: inputs_kv (cross-attention) takes neither RoPE nor a KV cache")
    kv = x if inputs_kv is None else inputs_kv
    query = HeadsProjection(self.num_heads, head_dim, self.use_bias, name="query")(width)
    key = HeadsProjection(num_kv, head_dim, self.use_bias, name="key")(kv.shape[-1])
    value = lambda: HeadsProjection(num_kv, head_dim, self.use_bias, name="value")(kv.shape[-1])
    if rank_queries is not None:  # PyramidDrop's ranking: no values
      groups = [(x, [query]), (kv, [key])]
    elif num_kv == self.num_heads and inputs_kv is None:
      groups = [(x, [query, key, value()])]
    else:  # grouped-query (fewer key/value heads than query heads) or cross-attention
      groups = [(x, [query]), (kv, [key, value()])]
    q, k, *v = [checkpoint_name(y, "attention_qkv")
                for inputs, group in groups for y in self.project(inputs, *group)]
    q = constrain(q, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
    k = constrain(k, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
    if self.use_rope:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
      q, k = rope(q, positions, self.rope_max_wavelength), rope(k, positions, self.rope_max_wavelength)
    if rank_queries is not None:
      return self.rank(q, k, mask, rank_queries, num_kv, head_dim)
    v = constrain(v[0], ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
    if self.decode:
      k, v = self.update_cache(k, v, cache_index)
    with jax.named_scope("core"):  # scores, softmax, weighted values: one name for profiles
      out = checkpoint_name(self.core(q, k, v, mask, num_kv, head_dim), "attention_context")
    out = OutProjection(width, self.use_bias, self.dtype, name="out")(out)
    return (out, k) if self.return_keys else out

  def core(self, q, k, v, mask, num_kv, head_dim):
    """q [B, T, H, Dh], k, v [B, S, K, Dh], mask [B, 1|H, T, S] or None -> [B, T, H, Dh]."""
    if self.implementation == "einsum":
      weights = jax.nn.softmax(self.masked_logits(q, k, mask, num_kv, head_dim), axis=-1).astype(self.dtype)
      return self.attend(weights, v)
    if self.implementation not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"attention: unknown implementation {self.implementation!r} "
                       f"(one of {', '.join(ATTENTION_IMPLEMENTATIONS)})")
    if self.implementation == "cudnn" and jnp.dtype(self.dtype) not in (jnp.bfloat16, jnp.float16):
      raise ValueError(f"attention: implementation 'cudnn' needs bfloat16 or float16 compute, not "
                       f"{jnp.dtype(self.dtype).name} (precision.compute_dtype)")
    if self.implementation == "cudnn" and jax.default_backend() != "gpu":
      raise ValueError(f"attention: implementation 'cudnn' runs on NVIDIA GPUs only, not on this "
                       f"{jax.default_backend()} backend (use 'xla' or 'einsum')")
    if self.implementation == "cudnn":
      return padded_attention(q, k, v, mask, "cudnn")
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.implementation)

  def project(self, x, *projections):
    """x [B, T, D] through each (kernel [D, N, Dh], bias [N, Dh]) of the same N -> a list of
    [B, T, N, Dh], computed as one matmul against the kernels stacked on a new axis (one large matmul
    is faster than three on CPU; stacking on a new axis keeps a `heads` sharding local)."""
    kernel = jnp.stack([kernel for kernel, _ in projections], axis=1).astype(self.dtype)  # [D, P, N, Dh]
    y = jnp.einsum("btd,dpnk->pbtnk", x.astype(self.dtype), kernel)
    if self.use_bias:
      y = y + jnp.stack([bias for _, bias in projections]).astype(self.dtype)[:, None, None]
    return list(y)

  @staticmethod
  def masked_logits(q, k, mask, num_kv, head_dim):
    """q [B, T, H, Dh], k [B, S, K, Dh] -> float32 logits [B, K, G, T, S] (G = H / K query heads per
    key/value head), masked entries -1e9."""
    b, t, h, _ = q.shape
    s, g = k.shape[1], h // num_kv
    # One matmul batched over B·K, a group's query heads stacked along its rows: on CPU this runs up to
    # twice as fast as an einsum with several batch dimensions.
    q = q.reshape(b, t, num_kv, g, head_dim).transpose(0, 2, 3, 1, 4).reshape(b * num_kv, g * t, head_dim)
    k = k.transpose(0, 2, 1, 3).reshape(b * num_kv, s, head_dim)
    logits = jnp.einsum("nqd,nsd->nqs", q, k, preferred_element_type=jnp.float32).reshape(b, num_kv, g, t, s)
    logits = logits / jnp.sqrt(head_dim).astype(jnp.float32)
    if mask is not None:
      mask = mask.reshape(mask.shape[0], -1, 1, *mask.shape[-2:]) if mask.shape[1] == 1 else \
          mask.reshape(mask.shape[0], num_kv, -1, *mask.shape[-2:])
      # A large finite negative, not -inf: a fully masked row then gives a uniform softmax, not NaN.
      logits = jnp.where(mask, logits, -1e9)
    return logits

  @staticmethod
  def attend(weights, v):
    """weights [B, K, G, T, S], v [B, S, K, Dh] -> [B, T, K·G, Dh], batched over B·K as `masked_logits`."""
    b, num_kv, g, t, s = weights.shape
    head_dim = v.shape[-1]
    v = v.transpose(0, 2, 1, 3).reshape(b * num_kv, s, head_dim)
    out = jnp.einsum("nqs,nsd->nqd", weights.reshape(b * num_kv, g * t, s), v)
    return out.reshape(b, num_kv, g, t, head_dim).transpose(0, 3, 1, 2, 4).reshape(b, t, num_kv * g, head_dim)

  def update_cache(self, k, v, cache_index):
    """Writes k, v [B, T, K, Dh] at slot `cache_index` -> the whole cache [B, S, K, Dh] each.

    The first call (from `init`) only creates the zero cache, sized by its own input, and attends
    over its own keys."""
    initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    if not initialized:
      return k, v
    if cache_index is None:
      raise ValueError("Attention(decode=True) needs a cache_index")
    start = (0, cache_index, 0, 0)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype), start)
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype), start)
    return cached_k.value, cached_v.value

  def rank(self, q, k, mask, rank_queries, num_kv, head_dim):
    """PyramidDrop's ranking: softmax attention in float32, averaged over heads, then over the
    query rows in `rank_queries` [B, T] -> [B, S]. Only an index choice depends on it."""
    probs = jax.nn.softmax(self.masked_logits(q, k, mask, num_kv, head_dim), axis=-1)
    probs = probs.mean(axis=(1, 2))  # [B, T, S]
    rows = rank_queries.astype(jnp.float32)[..., None]
    return (probs * rows).sum(1) / jnp.maximum(rows.sum(1), 1.0)


class Block(nn.Module):
  """Pre-norm transformer block: x + Attn(Norm(x)), then x + Mlp(Norm(x)).

  With `cross_attention`, between the two: x + CrossAttn(Norm(x), context), queries from x and keys
  and values from `context` [B, S, D'] (another sequence: a fusion encoder's other modality),
  `context_mask` bool [B, S] (True = attend) masking its padding.

  `decode` and `cache_index` are the attention's KV cache (see `Attention`). With `rank_queries`
  [B, T], returns only the attention ranking [B, S] of this block's (stop-gradient) input, as
  PyramidDrop ranks tokens with the next layer's query/key projections.
  """
  num_heads: int
  mlp_dim: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  norm: str = "layer"
  norm_eps: float = 1e-6
  activation: str = "gelu"
  gated_mlp: bool = False
  use_bias: bool = True
  use_rope: bool = False
  rope_max_wavelength: float = 10_000.0
  decode: bool = False
  dropout: float = 0.0
  attention: str = "einsum"  # the attention core's implementation (ATTENTION_IMPLEMENTATIONS)
  cross_attention: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, positions=None, deterministic=True, cache_index=None,
               rank_queries=None, context=None, context_mask=None):
    x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    if rank_queries is not None:
      x = jax.lax.stop_gradient(x)
    h = Norm(self.norm, "norm1", self.norm_eps)(x).astype(self.dtype)
    h = Attention(self.num_heads, self.num_kv_heads, self.head_dim, use_bias=self.use_bias,
                  use_rope=self.use_rope, rope_max_wavelength=self.rope_max_wavelength,
                  decode=self.decode, implementation=self.attention, dtype=self.dtype, name="attn")(
                      h, mask, positions, cache_index, rank_queries)
    if rank_queries is not None:
      return h
    x = x + nn.Dropout(self.dropout)(checkpoint_name(h, "attention_out"), deterministic)
    if self.cross_attention:
      if context is None:
        raise ValueError("Block(cross_attention=True) needs a context [B, S, D]")
      keys = None if context_mask is None else context_mask[:, None, None, :]
      h = Norm(self.norm, "norm_cross", self.norm_eps)(x).astype(self.dtype)
      h = Attention(self.num_heads, use_bias=self.use_bias, implementation=self.attention, dtype=self.dtype,
                    name="cross_attn")(h, keys, inputs_kv=context.astype(self.dtype))
      x = x + nn.Dropout(self.dropout)(h, deterministic)
    h = checkpoint_name(Norm(self.norm, "norm2", self.norm_eps)(x).astype(self.dtype), "mlp_in")
    h = Mlp(self.mlp_dim, self.activation, self.gated_mlp, self.use_bias, self.dropout, self.dtype,
            name="mlp")(h, deterministic)
    x = x + nn.Dropout(self.dropout)(h, deterministic)
    return constrain(x, ("activation_batch", "activation_length", "activation_embed"))


class MAPHead(nn.Module):
  """Multi-head attention pooling (big_vision's `MAPHead`, SigLIP's image pooling): a learned probe
  attends over the tokens, then a residual MLP on its LayerNorm. x [B, N, D] -> [B, D].

  The same sub-layers and shapes as big_vision's (`probe` [1, 1, D]; attention kernels [D, H, Dh],
  out [H, Dh, D]; MLP [D, mlp_dim], [mlp_dim, D]), under this file's names: probe, attn, norm, mlp.
  No norm before the attention: the tokens come out of the encoder's final norm.
  """
  num_heads: int
  mlp_dim: int
  norm_eps: float = 1e-6
  activation: str = "gelu"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    batch, _, width = x.shape
    probe = self.param("probe", kernel_init((None, None, "embed")), (1, 1, width))
    # Split over the batch as every activation is, not over `embed` as the probe param is.
    probe = constrain(jnp.broadcast_to(probe, (batch, 1, width)).astype(self.dtype),
                      ("activation_batch", "activation_length", "activation_embed"))
    x = Attention(self.num_heads, dtype=self.dtype, name="attn")(probe, inputs_kv=x.astype(self.dtype))
    h = Norm("layer", "norm", self.norm_eps)(x).astype(self.dtype)
    x = x + Mlp(self.mlp_dim, self.activation, dtype=self.dtype, name="mlp")(h)
    return x[:, 0]


def block_class(remat: str, block=None):
  """`block` (default Block), wrapped in `nn.remat` with the named policy unless 'none'."""
  block = block or Block
  if remat not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy '{remat}'; known: {', '.join(REMAT_POLICIES)}")
  if remat == "none":
    return block
  return nn.remat(block, policy=REMAT_POLICIES[remat], static_argnums=(4,))


class Transformer(nn.Module):
  """`depth` blocks, scanned over layers (compile time flat in depth) with a remat policy.

  x: [B, T, D] -> [B, T, D] (with the final norm applied when `final_norm`).

  `unroll` layers run per iteration of the scanned loop: `unroll=depth` emits the layers as
  straight-line code (no loop; compile time grows with depth again) with the same stacked params
  and initialisation. On a CPU that is faster for shallow stacks: the loop saves each layer's
  residuals into stacked buffers and slices them out again, copies a shallow stack pays for on every
  step (benchmarks/README.md).

  `output_layer` k in 1..depth returns the k-th block's output instead of the last one's (the final
  norm still applied): a frozen tower's intermediate layer as its features (STRUCTURE aligns the
  layer `vlmjax.select_layer` picks). Every block is still built and run, so params and
  checkpoints are those of the whole stack.
  """
  depth: int
  block: dict  # keyword arguments of Block
  scan: bool = True
  remat: str = "none"
  final_norm: bool = True
  unroll: int = 1
  output_layer: int = 0  # 0: the last block's output
  block_type: type | None = None  # a Block subclass built with `block` instead (None: Block)

  @nn.compact
  def __call__(self, x, mask=None, positions=None, deterministic=True, cache_index=None, context=None,
               context_mask=None):
    """`context` [B, S, D'], `context_mask` [B, S]: what blocks built with `cross_attention` attend to."""
    block_cls = block_class(self.remat, self.block_type)
    if not 0 <= self.output_layer <= self.depth:
      raise ValueError(f"output_layer: {self.output_layer} is not in 0..{self.depth} (0: the last layer)")
    keep = bool(self.output_layer)
    if self.scan:
      if not isinstance(self.unroll, int) or isinstance(self.unroll, bool) or self.unroll < 1:
        raise ValueError(f"unroll: {self.unroll!r} is not a positive integer (layers per loop iteration)")

      def body(module, carry, _):
        y = module(carry, mask, positions, deterministic, cache_index, None, context, context_mask)
        return y, (y if keep else None)

      stack = nn.scan(
          body, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True, "dropout": True},
          length=self.depth, unroll=min(self.unroll, self.depth),
          metadata_params={nn.PARTITION_NAME: "layers"})
      x, outputs = stack(block_cls(**self.block, name="blocks"), x, None)
    else:
      outputs = []
      for i in range(self.depth):
        x = block_cls(**self.block, name=f"block_{i}")(x, mask, positions, deterministic, cache_index, None,
                                                       context, context_mask)
        outputs.append(x)
    if keep:
      x = outputs[self.output_layer - 1]
    if self.final_norm:
      x = Norm(self.block.get("norm", "layer"), "final_norm", self.block.get("norm_eps", 1e-6))(x)
    return x


class Tower(nn.Module):
  """What the image and text towers share: a transformer stack's size and how it is run."""
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  activation: str = "gelu"        # 'quick_gelu' for OpenAI CLIP weights
  norm_eps: float = 1e-6          # 1e-5 for PyTorch-trained (open_clip / HF) weights
  dropout: float = 0.0
  scan: bool = True
  unroll: int = 1                 # layers per iteration of the scanned loop (see Transformer)
  remat: str = "none"
  attention: str = "einsum"       # the attention core's implementation (ATTENTION_IMPLEMENTATIONS)
  output_layer: int = 0           # the block whose output the tower returns (0: the last; Transformer)
  dtype: jnp.dtype = jnp.float32

  sized_by_variant = True  # `variant` ('S/16', 'B') gives width, depth, mlp_dim and num_heads

  def encoder(self, block_type=None, **block) -> Transformer:
    """The stack; `block_type` a Block subclass to build instead of Block, `block` its own options."""
    return Transformer(
        self.depth, dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, activation=self.activation,
                         norm_eps=self.norm_eps, dropout=self.dropout, attention=self.attention,
                         dtype=self.dtype, **block),
        scan=self.scan, remat=self.remat, unroll=self.unroll, output_layer=self.output_layer,
        block_type=block_type, name="encoder")
