"""Connectors from image-tower tokens to the decoder's embedding space.

- `linear`: one Dense per token (LiMBeR, VLAP), with LiMBeR's dropout on the prefix.
- `mlp`: Dense -> GELU -> Dense (LLaVA-1.5).
- `hreducer`: DocOwl 1.5's H-Reducer: a 1×k convolution of stride 1×k merges k horizontally adjacent
  tokens (k = `reduce`, 4 in DocOwl), then a Dense into the decoder's width.
- `tome`: SimVLG's "TomeFormer": a Dense into `width`, then `depth` transformer blocks each merging
  `r` tokens by ToMe bipartite soft matching after its attention, a LayerNorm and a Dense into the
  decoder's width. `merge='mean'` averages a destination token with the tokens merged into it
  (SimVLG); 'wavg' weights by how many patches each token already holds (ToMe's `merge_wavg`).

All take tokens [B, N, Dv] on a row-major grid (N = grid²) and return [B, N', D];
`num_output_tokens` gives N' without running anything.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vlmjax.models import layers

KINDS = ("linear", "mlp", "hreducer", "tome")


def tome_schedule(num_tokens: int, depth: int, r: int) -> list[int]:
  """Tokens merged per layer: r, but never more than half of what is left (ToMe's bound)."""
  out = []
  for _ in range(depth):
    out.append(min(r, num_tokens // 2))
    num_tokens -= out[-1]
  return out


def bipartite_soft_matching(metric, r: int):
  """ToMe's matching. metric [B, T, C] -> (src_idx [B, r], dst_idx [B, r], unm_idx [B, Ta − r]) over
  A = even tokens and B = odd tokens: each A token's most similar B token; the r A tokens with the
  most similar partners are merged into them. Index choices only: no gradient flows through them."""
  metric = jax.lax.stop_gradient(metric.astype(jnp.float32))
  metric = metric / jnp.maximum(jnp.linalg.norm(metric, axis=-1, keepdims=True), 1e-6)
  scores = jnp.einsum("bic,bjc->bij", metric[:, ::2], metric[:, 1::2])
  node_max, node_idx = scores.max(-1), scores.argmax(-1)
  edge_idx = jnp.argsort(-node_max, axis=-1, stable=True)
  src_idx, unm_idx = edge_idx[:, :r], edge_idx[:, r:]
  return src_idx, jnp.take_along_axis(node_idx, src_idx, axis=1), unm_idx


def merge_tokens(x, sizes, src_idx, dst_idx, unm_idx, mode: str = "mean"):
  """x [B, T, D], sizes [B, T] (patches per token) -> ([B, T − r, D], [B, T − r]): unmerged A tokens,
  then every B token with its merged A tokens folded in ('mean': plain average; 'wavg': size-weighted)."""
  take = lambda a, idx: jnp.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), axis=1)
  src, dst = x[:, ::2], x[:, 1::2]
  src_sizes, dst_sizes = sizes[:, ::2], sizes[:, 1::2]
  weight = (lambda s: s) if mode == "wavg" else jnp.ones_like
  rows = jnp.arange(x.shape[0])[:, None]
  w_src, w_dst = weight(take(src_sizes, src_idx)), weight(dst_sizes)
  total = (dst * w_dst[..., None]).at[rows, dst_idx].add(take(src, src_idx) * w_src[..., None])
  norm = w_dst.at[rows, dst_idx].add(w_src)
  merged = (total / norm[..., None]).astype(x.dtype)
  new_sizes = dst_sizes.at[rows, dst_idx].add(take(src_sizes, src_idx))
  return (jnp.concatenate([take(src, unm_idx), merged], axis=1),
          jnp.concatenate([take(src_sizes, unm_idx), new_sizes], axis=1))


class MergingBlock(nn.Module):
  """Pre-norm block that merges `r` tokens between attention and MLP (ToMe's ToMeBlock), with the
  attention keys averaged over heads as the similarity metric."""
  num_heads: int
  mlp_dim: int
  r: int
  merge: str = "mean"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, sizes):
    h = layers.Norm("layer", "norm1")(x).astype(self.dtype)
    h, keys = layers.Attention(self.num_heads, return_keys=True, dtype=self.dtype, name="attn")(h)
    x = x + h
    if self.r:
      x, sizes = merge_tokens(x, sizes, *bipartite_soft_matching(keys.mean(axis=2), self.r), self.merge)
    h = layers.Norm("layer", "norm2")(x).astype(self.dtype)
    return x + layers.Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(h), sizes


class Projector(nn.Module):
  """tokens [B, N, Dv] (row-major grid, N = grid²) -> [B, N', out_dim]; see the module docstring."""
  kind: str
  out_dim: int
  hidden_dim: int = 0         # mlp: hidden width (default out_dim)
  reduce: int = 4             # hreducer: tokens merged along each row
  width: int = 0              # tome: connector width (default Dv)
  depth: int = 2              # tome: merging blocks
  num_heads: int = 4          # tome
  mlp_dim: int = 0            # tome (default 4·width)
  r: int = 8                  # tome: tokens merged per block
  merge: str = "mean"         # tome: 'mean' (SimVLG) or 'wavg' (ToMe)
  dropout: float = 0.0        # on the output tokens (LiMBeR: 0.1)
  dtype: jnp.dtype = jnp.float32

  def validate(self, num_tokens: int):
    if self.kind not in KINDS:
      raise ValueError(f"unknown projector kind '{self.kind}'; known: {', '.join(KINDS)}")
    grid = int(round(num_tokens ** 0.5))
    if self.kind == "hreducer" and (grid * grid != num_tokens or grid % self.reduce):
      raise ValueError(f"projector 'hreducer' needs a square token grid whose width divides by reduce="
                       f"{self.reduce}; got {num_tokens} tokens")
    if self.kind == "tome" and self.merge not in ("mean", "wavg"):
      raise ValueError(f"projector 'tome': unknown merge '{self.merge}'; known: mean, wavg")

  def num_output_tokens(self, num_tokens: int) -> int:
    self.validate(num_tokens)
    if self.kind == "hreducer":
      return num_tokens // self.reduce
    if self.kind == "tome":
      return num_tokens - sum(tome_schedule(num_tokens, self.depth, self.r))
    return num_tokens

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    batch, num_tokens, _ = tokens.shape
    self.validate(num_tokens)
    dense = lambda features, name, axes=("embed", "mlp"): nn.Dense(
        features, dtype=self.dtype, name=name, kernel_init=layers.kernel_init(axes))
    x = tokens.astype(self.dtype)
    if self.kind == "linear":
      x = dense(self.out_dim, "linear", ("mlp", "embed"))(x)
    elif self.kind == "mlp":
      x = dense(self.hidden_dim or self.out_dim, "fc1")(x)
      x = dense(self.out_dim, "fc2", ("mlp", "embed"))(nn.gelu(x, approximate=False))
    elif self.kind == "hreducer":
      grid = int(round(num_tokens ** 0.5))
      x = x.reshape(batch, grid, grid, -1)
      x = nn.Conv(x.shape[-1], (1, self.reduce), strides=(1, self.reduce), padding="VALID",
                  dtype=self.dtype, name="conv",
                  kernel_init=layers.kernel_init((None, None, "embed", "mlp")))(x)
      x = dense(self.out_dim, "fc", ("mlp", "embed"))(x.reshape(batch, num_tokens // self.reduce, -1))
    else:
      width = self.width or x.shape[-1]
      x = dense(width, "in_proj", ("embed", "mlp"))(x)
      sizes = jnp.ones((batch, num_tokens), jnp.float32)
      for i, r in enumerate(tome_schedule(num_tokens, self.depth, self.r)):
        x, sizes = MergingBlock(self.num_heads, self.mlp_dim or 4 * width, r, self.merge, self.dtype,
                                name=f"block_{i}")(x, sizes)
      x = dense(self.out_dim, "out_proj", ("mlp", "embed"))(layers.Norm("layer", "norm")(x).astype(self.dtype))
    return nn.Dropout(self.dropout)(x, not train)
