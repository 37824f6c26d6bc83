"""The one set of transformer layers every tower is built from.

One attention, one MLP, one block, one stack. Every parameter carries logical axis names
(`embed`, `mlp`, `heads`, `kv`, `layers`) that `vlmjax.sharding` maps onto mesh axes, and activations
get logical constraints on (`batch`, `length`, `embed`). Parameters are float32; `dtype` is the
compute dtype. Softmax and norms run in float32.
"""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

ACTIVATIONS: dict[str, Callable] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP's activation
    "relu": nn.relu,
    "silu": nn.silu,
}

REMAT_POLICIES = {
    "none": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def constrain(x: Array, axes: tuple) -> Array:
  return nn.with_logical_constraint(x, axes)


def kernel_init(axes: tuple, init=nn.initializers.xavier_uniform()):
  return nn.with_logical_partitioning(init, axes)


def Norm(kind: str, name: str | None = None):
  """LayerNorm ('layer') or RMSNorm ('rms'), computed in float32."""
  if kind == "layer":
    return nn.LayerNorm(
        dtype=jnp.float32, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))
  if kind == "rms":
    return nn.RMSNorm(
        dtype=jnp.float32, name=name,
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
    h = act(dense(self.mlp_dim, ("embed", "mlp"), "fc1")(x))
    if self.gated:
      h = h * dense(self.mlp_dim, ("embed", "mlp"), "gate")(x)
    h = constrain(h, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout)(h, deterministic)
    return dense(width, ("mlp", "embed"), "fc2")(h)


class Attention(nn.Module):
  """Multi-head attention with optional grouped-query heads and RoPE.

  x: [B, T, D]; mask: bool [B, 1|H, T, S] (True = attend) or None -> [B, T, D].
  """
  num_heads: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  use_bias: bool = True
  use_rope: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, positions: Array | None = None) -> Array:
    width = x.shape[-1]
    head_dim = self.head_dim or width // self.num_heads
    num_kv = self.num_kv_heads or self.num_heads
    if self.num_heads % num_kv:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={num_kv}")

    def project(heads, name):
      return nn.DenseGeneral(
          (heads, head_dim), use_bias=self.use_bias, dtype=self.dtype, name=name,
          kernel_init=kernel_init(("embed", "heads", "kv")),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")))(x)

    q, k, v = project(self.num_heads, "query"), project(num_kv, "key"), project(num_kv, "value")
    if self.use_rope:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
      q, k = rope(q, positions), rope(k, positions)
    # Grouped-query attention: each group of query heads shares one key/value head.
    q = q.reshape(*q.shape[:2], num_kv, self.num_heads // num_kv, head_dim)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(head_dim).astype(jnp.float32)
    if mask is not None:
      mask = mask.reshape(mask.shape[0], -1, 1, *mask.shape[-2:]) if mask.shape[1] == 1 else \
          mask.reshape(mask.shape[0], num_kv, -1, *mask.shape[-2:])
      # A large finite negative, not -inf: a fully masked row then gives a uniform softmax, not NaN.
      logits = jnp.where(mask, logits, -1e9)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, v).reshape(*x.shape[:2], self.num_heads, head_dim)
    return nn.DenseGeneral(
        width, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype, name="out",
        kernel_init=kernel_init(("heads", "kv", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(out)


class Block(nn.Module):
  """Pre-norm transformer block: x + Attn(Norm(x)), then x + Mlp(Norm(x))."""
  num_heads: int
  mlp_dim: int
  num_kv_heads: int | None = None
  norm: str = "layer"
  activation: str = "gelu"
  gated_mlp: bool = False
  use_bias: bool = True
  use_rope: bool = False
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, positions=None, deterministic=True):
    x = constrain(x, ("batch", "length", "embed"))
    h = Norm(self.norm, "norm1")(x).astype(self.dtype)
    h = Attention(self.num_heads, self.num_kv_heads, use_bias=self.use_bias, use_rope=self.use_rope,
                  dtype=self.dtype, name="attn")(h, mask, positions)
    x = x + nn.Dropout(self.dropout)(h, deterministic)
    h = Norm(self.norm, "norm2")(x).astype(self.dtype)
    h = Mlp(self.mlp_dim, self.activation, self.gated_mlp, self.use_bias, self.dropout, self.dtype,
            name="mlp")(h, deterministic)
    x = x + nn.Dropout(self.dropout)(h, deterministic)
    return constrain(x, ("batch", "length", "embed"))


class Transformer(nn.Module):
  """`depth` blocks, scanned over layers (compile time flat in depth) with a remat policy.

  x: [B, T, D] -> [B, T, D] (with the final norm applied when `final_norm`).
  """
  depth: int
  block: dict  # keyword arguments of Block
  scan: bool = True
  remat: str = "none"
  final_norm: bool = True

  @nn.compact
  def __call__(self, x, mask=None, positions=None, deterministic=True):
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy '{self.remat}'; known: {', '.join(REMAT_POLICIES)}")
    block_cls = Block
    if self.remat != "none":
      block_cls = nn.remat(Block, policy=REMAT_POLICIES[self.remat], static_argnums=(4,))
    if self.scan:
      def body(module, carry, _):
        return module(carry, mask, positions, deterministic), None

      stack = nn.scan(
          body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(block_cls(**self.block, name="blocks"), x, None)
    else:
      for i in range(self.depth):
        x = block_cls(**self.block, name=f"block_{i}")(x, mask, positions, deterministic)
    if self.final_norm:
      x = Norm(self.block.get("norm", "layer"), "final_norm")(x)
    return x


class Tower(nn.Module):
  """What the image and text towers share: a transformer stack's size and how it is run."""
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  activation: str = "gelu"
  dropout: float = 0.0
  scan: bool = True
  remat: str = "none"
  dtype: jnp.dtype = jnp.float32

  def encoder(self) -> Transformer:
    return Transformer(
        self.depth, dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, activation=self.activation,
                         dropout=self.dropout, dtype=self.dtype),
        scan=self.scan, remat=self.remat, name="encoder")
