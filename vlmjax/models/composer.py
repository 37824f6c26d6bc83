"""SPRC's composed query encoder: a reference image and a modification text as one query embedding.

text_states [B, T, Wt] (the text tower's token outputs for the modification, `text_mask` [B, T]) and
image_states [B, N, Wi] (the image tower's tokens for the reference) -> [B, E], L2-normalised.

`num_queries` learned query tokens are put before the text's tokens (both mapped to `width`), and
`depth` transformer blocks let the sequence attend to itself and, through cross-attention
(`layers.Block(cross_attention=True)`), to the reference image's tokens: the Q-Former layout of
BLIP-2 that SPRC trains. The mean of the query tokens' outputs, projected to the shared space, is
the query compared with target images.
"""
import flax.linen as nn
import jax.numpy as jnp

from vlmjax.models import layers


class Composer(nn.Module):
  embed_dim: int
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  num_queries: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, text_states, text_mask, image_states):
    batch = text_states.shape[0]
    dense = lambda name: nn.Dense(self.width, dtype=self.dtype, name=name,  # noqa: E731
                                  kernel_init=layers.kernel_init(("embed", "mlp")),
                                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))
    queries = self.param("queries", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
                         (1, self.num_queries, self.width))
    x = jnp.concatenate([jnp.broadcast_to(queries, (batch, self.num_queries, self.width)).astype(self.dtype),
                         dense("text_in")(text_states)], axis=1)
    keys = jnp.concatenate([jnp.ones((batch, self.num_queries), bool), text_mask], axis=1)
    block = dict(num_heads=self.num_heads, mlp_dim=4 * self.width, cross_attention=True, dtype=self.dtype)
    x = layers.Transformer(self.depth, block, scan=False, name="encoder")(
        x, keys[:, None, None, :], context=dense("image_in")(image_states))
    pooled = x[:, :self.num_queries].mean(axis=1)
    out = nn.Dense(self.embed_dim, dtype=self.dtype, name="proj", kernel_init=layers.kernel_init(("embed", "proj")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("proj",)))(pooled)
    out = out.astype(jnp.float32)
    return out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-6)
