"""Structure-CLIP's knowledge-enhanced encoder: a caption's scene graph as one embedding.

triplet_text int [B, M, 3, T] (each of M (subject, relation, object) triplets as three tokenized
texts, all-padding rows absent) -> [B, E], added to the caption's embedding during training.

Each part is the mean of its tokens' embeddings (a table of its own), a triplet is
subject + relation − object (TransE's translation, so exchanging subject and object changes it),
and a few transformer blocks (`layers.Block`) let the triplets of one scene attend to each other;
their mean over the scene's triplets is projected to the shared space. A scene with no triplet
gives zeros.
"""
import flax.linen as nn
import jax.numpy as jnp

from vlmjax.models import layers


class KnowledgeEncoder(nn.Module):
  vocab_size: int
  width: int
  embed_dim: int
  depth: int = 1
  num_heads: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, triplet_text, swap: bool = False):
    """`swap`: each triplet read as (object, relation, subject), the relation reversed."""
    tokens = triplet_text[:, :, ::-1] if swap else triplet_text
    embed = nn.Embed(self.vocab_size, self.width, name="token_embed",
                     embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
    present = (tokens > 0).astype(jnp.float32)[..., None]                          # [B, M, 3, T, 1]
    parts = (embed(tokens) * present).sum(-2) / jnp.maximum(present.sum(-2), 1.0)  # [B, M, 3, W]
    triplets = (parts[:, :, 0] + parts[:, :, 1] - parts[:, :, 2]).astype(self.dtype)
    valid = (tokens > 0).any(axis=(-1, -2))                                        # [B, M]
    mask = valid[:, None, None, :]                                                 # keys: the scene's triplets
    x = triplets
    for i in range(self.depth):
      x = layers.Block(self.num_heads, 4 * self.width, dtype=self.dtype, name=f"block_{i}")(x, mask)
    x = layers.Norm("layer", "norm")(x)
    weights = valid.astype(jnp.float32)[..., None]
    pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    out = nn.Dense(self.embed_dim, dtype=self.dtype, name="proj",
                   kernel_init=layers.kernel_init(("embed", "proj")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("proj",)))(pooled)
    return out.astype(jnp.float32) * valid.any(axis=1, keepdims=True)
