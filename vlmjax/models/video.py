"""Video CLIP (X-CLIP, Ni et al. 2022): a dual encoder whose image tower reads the frames of a clip.

videos [B, T, H, W, 3], texts [B, L] -> dict of

- `frame_embeds` [B, T, E]: each frame through the image tower and its projection. With
  `model.image.frames = T` the tower's blocks exchange a message per frame across the clip first
  (`vit.FrameMessageBlock`, X-CLIP's cross-frame communication); without, frames never meet.
- `image_embeds` [B, E], L2-normalised: the clip. With `temporal` (a small transformer over the
  frame embeddings, X-CLIP's multi-frame integration transformer) the mean of its outputs plus
  the mean frame; without, the mean frame embedding (frame averaging, the baseline: it is the same
  for a clip and the clip played backwards).
- `text_embeds` [B, E] and, with `prompts` (X-CLIP's video-specific prompt generator),
  `prompted_text_embeds` [B, B, E]: text j as seen with clip i, w + α ⊙ PG(w, z_i), where each text
  embedding w reads the clip's spatial tokens z_i (its frames' patch tokens, projected, averaged over
  the frames, as X-CLIP's generator reads them) through cross-attention and an MLP; α [E] is
  learned, small at init. Scores of clip i are then against its own prompted texts.
- `negative_text_embeds` [B, K, E] for `negative_texts` [B, K, L] (each clip's hard-negative
  captions), prompted by their own clip when `prompts` is set.
- `logit_scale`, `logit_bias` [] as the dual encoder's.
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vlmjax import batch_spec, registry
from vlmjax.data import pipeline
from vlmjax.models import layers
from vlmjax.models.dual_encoder import DualEncoder, l2_normalize


def _video(example, shape):
  """The record's filmstrip (its decoded `image`, [S, T·S, 3]) as frames float32 [T, S', S', 3] in
  [-1, 1] at the model's frame size; in training one brightness shift for the whole clip."""
  num_frames, size = shape[0], shape[1]
  strip = np.asarray(example.image)
  frames = pipeline.filmstrip_frames(strip)
  if len(frames) != num_frames:
    raise ValueError(f"input.num_frames is {num_frames}, but the data's clips have {len(frames)} frames")
  if frames.shape[1] != size:
    frames = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames])
  pixels = frames.astype(np.float32) / 127.5 - 1.0
  preprocess = example.preprocess
  if preprocess.train and preprocess.brightness:
    pixels = np.clip(pixels + example.rng.uniform(-preprocess.brightness, preprocess.brightness), -1.0, 1.0)
  return pixels


def _draw_videos(rng, batch_size, input_config, vocab_size, batch):
  del vocab_size, batch
  size = input_config.image_size
  return rng.uniform(-1, 1, size=(batch_size, input_config.num_frames, size, size, 3)).astype(np.float32)


def _video_shape(input_config):
  if input_config.get("num_frames", 0) < 1:
    raise ValueError("input.num_frames: a video model needs the clips' frame count (e.g. 8), got "
                     f"{input_config.get('num_frames', 0)}")
  return (input_config.num_frames, input_config.image_size, input_config.image_size, 3)


VIDEO = batch_spec.Field("video", _video_shape, "float32", make=_video, draw=_draw_videos)


class TemporalIntegration(nn.Module):
  """X-CLIP's multi-frame integration transformer: frames [B, T, E] -> clip [B, E], the mean of
  `depth` blocks' outputs over the frames (with a learned position per frame) plus the mean frame.

  The blocks are the only place frame order enters (messages and means treat frames as a set), and
  they read it from the positions after their LayerNorm, where a frame's features are of unit
  scale: `position_init` is the positions' init std (X-CLIP's 0.02 leaves them a hundredth of a
  frame's features, and order barely moves the output until they grow)."""
  num_frames: int
  depth: int = 1
  num_heads: int = 4
  position_init: float = 0.02
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, frames):
    width = frames.shape[-1]
    position = self.param("pos_embedding",
                          nn.with_logical_partitioning(nn.initializers.normal(self.position_init),
                                                       (None, "length", "embed")),
                          (1, self.num_frames, width))
    x = (frames + position).astype(self.dtype)
    x = layers.Transformer(self.depth, dict(num_heads=self.num_heads, mlp_dim=4 * width, dtype=self.dtype),
                           scan=False, final_norm=False, name="encoder")(x)
    return (x + frames).mean(axis=1)


class PromptGenerator(nn.Module):
  """X-CLIP's video-specific prompting: texts [Bt, E] and each clip's spatial tokens [Bv, N, E] ->
  [Bv, Bt, E], every text conditioned on every clip (or texts [Bv, K, E], each clip's own: [Bv, K, E]):
  w + α ⊙ (cross-attention of w to the clip's tokens, then an MLP, `depth` times, pre-norm with
  residuals). No attention between texts, so a text's prompt does not depend on which other texts
  are scored."""
  depth: int = 1
  num_heads: int = 4
  alpha_init: float = 0.1
  norm_eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, texts, tokens):
    width = texts.shape[-1]
    context = layers.Norm("layer", "context_norm", self.norm_eps)(tokens).astype(self.dtype)
    x = texts if texts.ndim == 3 else jnp.broadcast_to(texts[None], (tokens.shape[0], *texts.shape))
    x = x.astype(self.dtype)
    prompt = x
    for i in range(self.depth):
      h = layers.Norm("layer", f"norm_cross_{i}", self.norm_eps)(prompt).astype(self.dtype)
      prompt = prompt + layers.Attention(self.num_heads, dtype=self.dtype, name=f"cross_attn_{i}")(h, inputs_kv=context)
      h = layers.Norm("layer", f"norm_mlp_{i}", self.norm_eps)(prompt).astype(self.dtype)
      prompt = prompt + layers.Mlp(4 * width, dtype=self.dtype, name=f"mlp_{i}")(h)
    alpha = self.param("alpha", nn.with_logical_partitioning(nn.initializers.constant(self.alpha_init), ("embed",)),
                       (width,))
    return x + alpha * (prompt - x)


@registry.register("model", "video_clip")
class VideoCLIP(DualEncoder):
  """A dual encoder of clips and texts: the outputs of this module's docstring."""
  # TemporalIntegration's options (num_frames, depth, num_heads, position_init); None: frame averaging
  temporal: dict | None = None
  prompts: dict | None = None  # PromptGenerator's options (depth, num_heads, alpha_init); None: none

  batch_keys = {"videos": "video", "texts": "text", "negative_texts": "negative_text"}

  def batch_fields(self, input_config, prompt_len: int = 0) -> tuple:
    del prompt_len
    frames = _video_shape(input_config)[0]
    if self.image.get("frames", 0) not in (0, frames):
      raise ValueError(f"model.image.frames is {self.image['frames']}, but input.num_frames is {frames}")
    return (VIDEO, batch_spec.TEXT)

  def setup(self):
    super().setup()
    if self.temporal is not None:
      self.integration = TemporalIntegration(**self.temporal, dtype=self.dtype, name="temporal")
    if self.prompts is not None:
      self.prompt_generator = PromptGenerator(**self.prompts, dtype=self.dtype, name="prompts")

  def __call__(self, videos=None, texts=None, negative_texts=None, train: bool = False):
    out = {"logit_scale": self.logit_scale, "logit_bias": self.logit_bias}
    if videos is not None:
      batch, frames = videos.shape[:2]
      messages = self.image.get("frames", 0)
      if messages and messages != frames:
        raise ValueError(f"model.image.frames is {messages}, but the clips have {frames} frames")
      pooled, tokens = self.image_tower(videos.reshape(batch * frames, *videos.shape[2:]), train)
      frame_embeds = self.image_proj(pooled).reshape(batch, frames, -1).astype(jnp.float32)
      out["frame_embeds"] = frame_embeds
      clip = self.integration(frame_embeds) if self.temporal is not None else frame_embeds.mean(axis=1)
      out["image_embeds"] = l2_normalize(clip)
      spatial = self.image_proj(tokens).reshape(batch, frames, *tokens.shape[1:-1], -1).mean(axis=1)
    if texts is not None:
      pooled, _, _ = self.text_tower(texts, train)
      text = self.text_proj(pooled)
      out["text_embeds"] = l2_normalize(text)
      if self.prompts is not None and videos is not None:
        out["prompted_text_embeds"] = l2_normalize(self.prompt_generator(text, spatial))
    if negative_texts is not None:
      batch, count, length = negative_texts.shape
      negatives = self.text_proj(self.text_tower(negative_texts.reshape(batch * count, length), train)[0])
      negatives = negatives.reshape(batch, count, -1)
      if self.prompts is not None and videos is not None:
        negatives = self.prompt_generator(negatives, spatial)
      out["negative_text_embeds"] = l2_normalize(negatives)
    return out

  def prompted(self, texts, videos):
    """Class texts [C, L] (pass the same ones for every clip) and clips [B, T, H, W, 3] -> (clip
    embeddings [B, E], each clip's text embeddings [B, C, E]): what zero-shot classification scores."""
    out = self(videos=videos, texts=texts)
    prompted = out.get("prompted_text_embeds")
    if prompted is None:
      prompted = jnp.broadcast_to(out["text_embeds"][None], (videos.shape[0], *out["text_embeds"].shape))
    return out["image_embeds"], prompted
