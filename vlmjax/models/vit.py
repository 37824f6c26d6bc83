"""Vision Transformer image tower: patches -> transformer -> pooled embedding and patch tokens."""
import flax.linen as nn
import jax.numpy as jnp

from vlmjax.models import layers


class ViT(layers.Tower):
  """images [B, H, W, 3] float in [-1, 1] -> (pooled [B, D], tokens [B, N, D]).

  `pool`: 'cls' (class token, CLIP), 'gap' (mean of patch tokens) or 'map' is not offered; the
  returned tokens exclude the class token. `pre_norm` is CLIP's LayerNorm before the transformer.
  """
  patch_size: int = 16
  pool: str = "gap"
  pre_norm: bool = False

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.pool not in ("cls", "gap"):
      raise ValueError(f"unknown ViT pool '{self.pool}'; known: cls, gap")
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="patch_embed",
                kernel_init=layers.kernel_init((None, None, "patch", "embed"),
                                               nn.initializers.lecun_normal()),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(
                    images.astype(self.dtype))
    x = x.reshape(x.shape[0], -1, self.width)
    if self.pool == "cls":
      cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros, (None, None, "embed")),
                       (1, 1, self.width))
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)).astype(x.dtype), x], 1)
    pos = self.param("pos_embedding",
                     nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "length", "embed")),
                     (1, x.shape[1], self.width))
    x = (x + pos).astype(self.dtype)
    if self.pre_norm:
      x = layers.Norm("layer", "pre_norm")(x).astype(self.dtype)
    x = nn.Dropout(self.dropout)(x, not train)
    x = self.encoder()(x, deterministic=not train)
    if self.pool == "cls":
      return x[:, 0], x[:, 1:]
    return x.mean(axis=1), x
