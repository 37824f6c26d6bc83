"""ISA's image-to-sentence student: a light image encoder that writes an image as pseudo-words.

images [B, H, W, 3] -> pseudo-words [B, K, Wt], K = `num_words`, Wt the width of a text tower's token
embeddings, so that the words can be put before a text's tokens (`TextTransformer(prefix=...)`).

Two parts, both trained; nothing else is (the towers they feed are frozen):

- `student`: a small ViT (vlmjax/models/vit.py; its keyword arguments, e.g. width 64, depth 1) whose
  patch tokens [B, N, Ws] are the image's spatial features;
- the adaptive token learner: K learned queries [K, Ws] through `depth` blocks that attend to each
  other and, by cross-attention (`layers.Block(cross_attention=True)`), to the student's patch
  tokens; query k's output, mapped to Wt by a linear layer, is pseudo-word k. Each word thus pools
  the spatial features it chooses.
"""
import flax.linen as nn
import jax.numpy as jnp

from vlmjax.models import layers
from vlmjax.models.vit import ViT

STUDENT = dict(width=64, depth=1, mlp_dim=256, num_heads=2, patch_size=8, stem="conv", pool="gap")


class PseudoWordEncoder(nn.Module):
  """images [B, H, W, 3] in [-1, 1] -> pseudo-words [B, num_words, word_width], float32.

  `student`: the light ViT's keyword arguments over `STUDENT` (its params under `student`);
  `depth`, `num_heads`: the token learner's blocks (params under `token_learner`, its queries under
  `queries` [1, K, Ws], the output map under `to_words`).
  """
  word_width: int  # Wt: the text tower's width (given by the dual encoder)
  num_words: int = 4
  student: dict | None = None
  depth: int = 1
  num_heads: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    config = {**STUDENT, **(self.student or {})}
    _, patches = ViT(**config, dtype=self.dtype, name="student")(images, train)  # [B, N, Ws]
    batch, width = patches.shape[0], config["width"]
    queries = self.param("queries", layers.kernel_init((None, None, "embed"), nn.initializers.normal(0.02)),
                         (1, self.num_words, width))
    x = jnp.broadcast_to(queries, (batch, self.num_words, width)).astype(self.dtype)
    block = dict(num_heads=self.num_heads, mlp_dim=4 * width, cross_attention=True, dtype=self.dtype)
    x = layers.Transformer(self.depth, block, scan=False, name="token_learner")(
        x, deterministic=not train, context=patches)  # [B, K, Ws]
    words = nn.Dense(self.word_width, dtype=self.dtype, name="to_words",
                     kernel_init=layers.kernel_init(("mlp", "embed")),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(x)
    return words.astype(jnp.float32)
