"""Vision Transformer image tower: patches -> transformer -> pooled embedding and patch tokens."""
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vlmjax.models import layers


def sincos2d(height: int, width: int, dim: int, temperature: float = 10_000.0):
  """Fixed 2-D sine-cosine position embedding (MoCo v3 / big_vision) -> [1, height*width, dim]."""
  if dim % 4:
    raise ValueError(f"sincos2d position embedding needs a width divisible by 4, got {dim}")
  y, x = jnp.mgrid[:height, :width]
  omega = 1.0 / temperature ** (jnp.arange(dim // 4) / (dim // 4 - 1 or 1))
  y = y.reshape(-1)[:, None] * omega[None, :]
  x = x.reshape(-1)[:, None] * omega[None, :]
  return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)[None]


def resample_posemb(posemb, new_grid: tuple[int, int], num_prefix_tokens: int = 0,
                    grid: tuple[int, int] | None = None):
  """A learned position table [1, prefix + gh·gw, D] -> [1, prefix + new_h·new_w, D] for another patch
  grid: big_vision's `resample_posemb` (high-resolution fine-tuning). The first `num_prefix_tokens`
  rows (the class token's, when `pool='cls'`) are kept; the grid part, row-major [gh, gw, D] (`grid`,
  default the square), is resized linearly along each side with the corner rows fixed, as
  `scipy.ndimage.zoom(grid, (new_h / gh, new_w / gw, 1), order=1)` does, which is what big_vision calls.
  That is not `jax.image.resize(..., 'bilinear')`: it samples half-pixel centres, and averages when
  shrinking. The same grid returns `posemb` itself. ValueError for a table that is not such a grid.
  """
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise ValueError(f"resample_posemb: a position table is [1, N, D], got shape {tuple(posemb.shape)}")
  new_h, new_w = (int(n) for n in new_grid)
  if new_h < 1 or new_w < 1 or not 0 <= num_prefix_tokens <= posemb.shape[1]:
    raise ValueError(f"resample_posemb: grid {tuple(new_grid)} with {num_prefix_tokens} prefix tokens for a table "
                     f"of shape {tuple(posemb.shape)}")
  length = posemb.shape[1] - num_prefix_tokens
  old_h, old_w = (int(n) for n in grid) if grid is not None else (math.isqrt(length),) * 2
  if old_h * old_w != length or length == 0:
    what = f"the grid {old_h}x{old_w}" if grid is not None else "a square grid"
    raise ValueError(f"resample_posemb: the {length} positions after {num_prefix_tokens} prefix tokens of a table "
                     f"of shape {tuple(posemb.shape)} are not {what}")
  if (old_h, old_w) == (new_h, new_w):
    return posemb
  prefix, table = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  table = table.reshape(old_h, old_w, -1).astype(jnp.float32)
  table = _linear_resize(_linear_resize(table, 0, new_h), 1, new_w)
  table = table.reshape(1, new_h * new_w, -1).astype(posemb.dtype)
  return jnp.concatenate([jnp.asarray(prefix), table], axis=1)


def _linear_resize(x, axis: int, new: int):
  """`x` resized to `new` along `axis` by linear interpolation with the end samples fixed: output i
  reads input i·(old-1)/(new-1) (scipy.ndimage.zoom's order=1, grid_mode=False mapping; 0 for new=1)."""
  old = x.shape[axis]
  # The position as a whole part and a remainder, in integers: no rounding puts a sample that falls
  # on an input row (a corner, or every row of an integer zoom) a hair before it.
  scaled = np.arange(new) * (old - 1)
  lo, rest = (scaled // (new - 1), scaled % (new - 1)) if new > 1 else (np.zeros(1, int), np.zeros(1, int))
  hi = np.minimum(lo + 1, old - 1)
  shape = [1] * x.ndim
  shape[axis] = new
  frac = jnp.asarray((rest / max(new - 1, 1)).reshape(shape), x.dtype)
  a, b = jnp.take(x, lo, axis=axis), jnp.take(x, hi, axis=axis)
  return a + (b - a) * frac


def conv_stem_channels(patch_size: int, width: int) -> list[int]:
  """Output channels of ViTc's log2(p) stride-2 3×3 convolutions: doubling up to `width`, at least 8."""
  steps = patch_size.bit_length() - 1
  if patch_size < 2 or 2 ** steps != patch_size:
    raise ValueError(f"ViT stem 'conv' needs a power-of-two patch_size, got {patch_size}")
  return [max(width >> (steps - 1 - i), 8) for i in range(steps)]


class PatchConv(nn.Module):
  """A 2-D convolution with `nn.Conv`'s parameters ({kernel: [k, k, C, F], bias: [F]}) and output,
  computed as image patches [B, H', W', k·k·C] @ kernel [k·k·C, F].

  Why not `nn.Conv`: XLA:CPU runs a convolution's weight gradient far slower than the same
  contraction as a matmul, with batch-to-minor transposes around it (the demo's stem convolutions
  dominated its profiled step, benchmarks/README.md). Patches are a reshape when the kernel tiles
  the image (k == stride, the patch embedding) and k·k strided slices otherwise.
  """
  features: int
  kernel_size: int
  stride: int
  padding: str = "VALID"  # or "SAME" (TensorFlow's: output ceil(H / stride), extra padding after)
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  kernel_init: callable = nn.initializers.lecun_normal()
  bias_init: callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    k, s = self.kernel_size, self.stride
    batch, height, width, channels = x.shape
    kernel = self.param("kernel", self.kernel_init, (k, k, channels, self.features)).astype(self.dtype)
    if self.padding not in ("VALID", "SAME"):
      raise ValueError(f"PatchConv padding must be VALID or SAME, got {self.padding!r}")
    if self.padding == "SAME":
      out_h, out_w = -(-height // s), -(-width // s)
      pad_h, pad_w = max((out_h - 1) * s + k - height, 0), max((out_w - 1) * s + k - width, 0)
      x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    else:
      out_h, out_w = (height - k) // s + 1, (width - k) // s + 1
    if k == s:
      x = x[:, :out_h * s, :out_w * s]
      patches = x.reshape(batch, out_h, s, out_w, s, channels).transpose(0, 1, 3, 2, 4, 5)
    else:
      patches = jnp.stack([x[:, i:i + (out_h - 1) * s + 1:s, j:j + (out_w - 1) * s + 1:s]
                           for i in range(k) for j in range(k)], axis=3)
    patches = patches.reshape(batch, out_h, out_w, k * k * channels).astype(self.dtype)
    y = patches @ kernel.reshape(k * k * channels, self.features)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,)).astype(self.dtype)
    return y


class FrameMessageBlock(layers.Block):
  """X-CLIP's cross-frame communication block: a transformer block over each frame's tokens that
  also reads one message per frame, exchanged between the frames of a clip first.

  x [B·T, N, D] (the frames of B clips of `frames` frames, clip-major) -> [B·T, N, D]. Each frame's
  message is a linear map of its mean token (X-CLIP maps the class token; this tower may pool
  without one); the T messages of a clip attend to each other (pre-norm self-attention across
  frames, the `Attention` every tower uses); each frame then runs the block (`layers.Block`: its
  attention and MLP, the same params and names as an image block) on its N tokens with its message
  appended, and the message's output is dropped. So an image tower's trained blocks are this
  block's, and the messages are the only new params.
  """
  frames: int = 1

  @nn.compact
  def __call__(self, x, mask=None, positions=None, deterministic=True, cache_index=None, rank_queries=None,
               context=None, context_mask=None):
    rows, length, width = x.shape
    if rows % self.frames:
      raise ValueError(f"FrameMessageBlock: {rows} frames are not clips of {self.frames}")
    message = nn.Dense(width, dtype=self.dtype, name="message_proj", kernel_init=layers.kernel_init(("embed", "mlp")),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(x.mean(axis=1))
    message = message.reshape(rows // self.frames, self.frames, width)
    h = layers.Norm(self.norm, "message_norm", self.norm_eps)(message).astype(self.dtype)
    message = message + layers.Attention(self.num_heads, use_bias=self.use_bias, implementation=self.attention,
                                         dtype=self.dtype, name="message_attn")(h)
    x = jnp.concatenate([x, message.reshape(rows, 1, width).astype(x.dtype)], axis=1)
    mask = None if mask is None else jnp.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, 1)], constant_values=True)
    return super().__call__(x, mask, positions, deterministic, cache_index, rank_queries, context,
                            context_mask)[:, :length]


class ViT(layers.Tower):
  """images [B, H, W, 3] float in [-1, 1] -> (pooled [B, D], tokens [B, N, D]).

  `stem`: 'patch' (one p×p convolution of stride p) or 'conv' (ViTc, Xiao et al. 2021: log2(p)
  stride-2 3×3 convolutions with instance norm + ReLU, then a 1×1 projection; a few % of the FLOPs, and
  it learns local shape far faster from scratch than a linear patch embedding).
  `pool`: 'cls' (class token, CLIP), 'gap' (mean of patch tokens) or 'map' (attention pooling with a
  learned probe, `layers.MAPHead` as `map_head`: SigLIP's image pooling); the returned tokens exclude
  the class token. `posemb`: 'learn' (one learned vector per position, the class token's included,
  as in CLIP) or 'sincos2d' (fixed, big_vision's default; it converges faster from scratch on small
  data since nothing about 2-D layout has to be learned). `pre_norm` is CLIP's LayerNorm before the
  transformer.

  `frames` > 0: the images are the frames of clips of that many frames, clip-major ([B·T, H, W, 3]),
  and every block exchanges messages across a clip's frames (`FrameMessageBlock`, X-CLIP); 0: images.
  """
  patch_size: int = 16
  pool: str = "gap"
  posemb: str = "learn"
  pre_norm: bool = False
  stem: str = "patch"
  frames: int = 0

  def conv_stem(self, images):
    """[B, H, W, 3] -> [B, H/p, W/p, width]: stride-2 3×3 convs doubling channels up to `width`."""
    x = images
    for i, channels in enumerate(conv_stem_channels(self.patch_size, self.width)):
      x = PatchConv(channels, 3, 2, padding="SAME", use_bias=False, dtype=self.dtype, name=f"stem_conv{i}",
                    kernel_init=layers.kernel_init((None, None, None, None), nn.initializers.he_normal()))(x)
      # Instance norm (each channel over the image), not LayerNorm over a pixel's channels: the
      # latter rescales every pixel to the same norm, erasing the contrast that outlines a shape
      # (the demo tower's shape probe, docs/results.md).
      x = nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-6, dtype=jnp.float32, name=f"stem_norm{i}",
                       scale_init=nn.with_logical_partitioning(nn.initializers.ones, (None,)),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))(x)
      x = nn.relu(x).astype(self.dtype)
    return x

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.pool not in ("cls", "gap", "map"):
      raise ValueError(f"unknown ViT pool '{self.pool}'; known: cls, gap, map")
    if self.posemb not in ("learn", "sincos2d"):
      raise ValueError(f"unknown ViT posemb '{self.posemb}'; known: learn, sincos2d")
    if self.stem not in ("patch", "conv"):
      raise ValueError(f"unknown ViT stem '{self.stem}'; known: patch, conv")
    x = images.astype(self.dtype)
    p = self.patch_size
    if self.stem == "conv":
      x, p = self.conv_stem(x), 1
    x = PatchConv(self.width, p, p, padding="VALID", dtype=self.dtype, name="patch_embed",
                  kernel_init=layers.kernel_init((None, None, "patch", "embed"), nn.initializers.lecun_normal()),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(x)
    grid_h, grid_w = x.shape[1:3]
    x = x.reshape(x.shape[0], -1, self.width)
    if self.posemb == "sincos2d":
      x = x + sincos2d(grid_h, grid_w, self.width).astype(x.dtype)
    if self.pool == "cls":
      cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros, (None, None, "embed")),
                       (1, 1, self.width))
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)).astype(x.dtype), x], 1)
    if self.posemb == "learn":
      x = x + self.param(
          "pos_embedding",
          nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "length", "embed")),
          (1, x.shape[1], self.width)).astype(x.dtype)
    x = x.astype(self.dtype)
    if self.pre_norm:
      x = layers.Norm("layer", "pre_norm", self.norm_eps)(x).astype(self.dtype)
    x = nn.Dropout(self.dropout)(x, not train)
    encoder = self.encoder(FrameMessageBlock, frames=self.frames) if self.frames else self.encoder()
    x = encoder(x, deterministic=not train)
    if self.pool == "cls":
      return x[:, 0], x[:, 1:]
    if self.pool == "map":
      return layers.MAPHead(self.num_heads, self.mlp_dim, self.norm_eps, self.activation, self.dtype,
                            name="map_head")(x), x
    return x.mean(axis=1), x
