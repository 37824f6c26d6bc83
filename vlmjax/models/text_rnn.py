"""Recurrent text tower (Merkx & Frank's sentence encoder): token ids -> bidirectional GRUs -> attention pooling.

Meant for character-level text (`tokenizer.model_type = 'char'`): the model gets no word boundaries
or word embeddings and has to learn words, and what a sentence means, from the images alone.
"""
import flax.linen as nn
import jax.numpy as jnp

from vlmjax import registry


@registry.register("text_tower", "gru")
class TextGRU(nn.Module):
  """tokens [B, T] int (0 = padding) -> (pooled [B, D], tokens [B, T, D], token_mask [B, T]).

  An embedding of `width`, then `depth` bidirectional GRU layers of width / 2 units per direction
  (each direction reads only the text's own tokens: `seq_lengths`), then vectorial self-attention
  pooling: each token gets a weight per feature, softmax(W₂ tanh(W₁ h)) over the text's tokens, and
  the pooled vector is the weighted sum of the token states. D = width.
  """
  vocab_size: int
  width: int = 256
  depth: int = 1
  max_len: int = 64
  attention_hidden: int = 128  # the pooling's W₁ width
  dtype: jnp.dtype = jnp.float32

  sized_by_variant = False  # its size is width and depth, not a transformer variant

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    del train
    if self.width % 2:
      raise ValueError(f"gru text tower: width {self.width} must be even (two directions of width / 2)")
    if tokens.shape[1] > self.max_len:
      raise ValueError(f"text length {tokens.shape[1]} exceeds the text tower's max_len {self.max_len}")
    token_mask = tokens != 0
    lengths = token_mask.sum(axis=1)
    x = nn.Embed(self.vocab_size, self.width, name="token_embed",
                 embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))(tokens)
    x = x.astype(self.dtype)
    for i in range(self.depth):
      forward, backward = (nn.RNN(nn.GRUCell(self.width // 2, dtype=self.dtype, name=f"gru_{i}_{d}"))
                           for d in ("forward", "backward"))
      x = nn.Bidirectional(forward, backward)(x, seq_lengths=lengths)
    scores = nn.Dense(self.width, name="pool_out")(jnp.tanh(nn.Dense(self.attention_hidden, name="pool_hidden")(x)))
    scores = jnp.where(token_mask[..., None], scores.astype(jnp.float32), -1e9)
    weights = nn.softmax(scores, axis=1) * token_mask[..., None]
    pooled = (weights * x.astype(jnp.float32)).sum(axis=1).astype(self.dtype)
    x = jnp.where(token_mask[..., None], x, 0)
    return pooled, x, token_mask
