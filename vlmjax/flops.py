"""Analytic model FLOPs of a dual-encoder or VLM train step, the numerator of MFU.

Counts the matrix multiplies only (2·m·n·k each), the usual convention for model FLOPs utilisation
(PaLM, big_vision): norms, activations, softmax and the optimizer are left out, and so is the work
rematerialisation repeats (that is hardware FLOPs, not model FLOPs). Per tower and per sequence of
length T, with width W, depth L, MLP width M, and H heads of size Dh (H·Dh = W for these towers):

  patch embedding (ViT)    2 · N · (p·p·3) · W           N = (image_size / p)² patches
    or conv stem (ViTc)    Σ_i 2 · N_i · 9 · C_i · C_i+1  + 2 · N · W · W   (stride-2 3×3 convs, then 1×1)
  attention projections    L · 2 · T · W · 4·H·Dh         query, key, value and output
  attention scores         L · 2 · 2 · T² · H·Dh          q·kᵀ and weights·v (the causal text mask
                                                          is applied to a full T×T block)
  MLP                      L · 2 · 2 · T · W · M
  projection to the shared space: 2 · W · E per example (pooled features only)
  similarity matrix: 2 · B · B · E per step (one [B, B] matrix; how the loss is sharded does not
  change its FLOPs)

A train step is forward + backward = 3 × forward (the backward computes gradients with respect to
both the activations and the weights: two matmuls per forward matmul). The projections of *token*
embeddings (`image_tokens`, `text_tokens`) are not counted: objectives that use only the pooled
embeddings never compute them (XLA removes them as dead code); FILIP and DreamLIP's grouping loss do.

A VLM (`vlm_flops`): the image tower as above on its patches; the projector (`linear`: 2·N·Wi·Wd;
`mlp`: 2·N·Wi·Wh + 2·N·Wh·Wd); the decoder on its T tokens (image slots included), with grouped-query
attention (query and output 2·T·W·H·Dh each, key and value 2·T·W·K·Dh each), the SwiGLU MLP's three
matmuls (3 · 2·T·W·M) and the output head 2·T·W·V. With `stop_image_gradient` nothing flows back
into the tower: it counts its forward only, and the projector forward + weight gradients (2 ×).
"""
import dataclasses

from vlmjax.models.decoder import decoder_kwargs
from vlmjax.models.sizes import decode_variant
from vlmjax.models.text import TextTransformer
from vlmjax.models.vit import ViT, conv_stem_channels

# Batch keys by the tower that encodes them, and how many leading dims are examples.
IMAGE_KEYS = ("image", "image_view2")                                  # [B, S, S, 3]
TEXT_KEYS = ("text", "text_view2", "negative_text", "multi_text")      # [B, T] or [B, K, T]

TRAIN_STEP_FACTOR = 3  # forward + backward


def _defaults(module_cls) -> dict:
  return {f.name: f.default for f in dataclasses.fields(module_cls) if f.default is not dataclasses.MISSING}


def tower_settings(tower_config: dict, module_cls) -> dict:
  """A tower's config (`variant` plus overrides) -> its full settings, as `DualEncoder.setup` builds
  them: the module's defaults, then the variant's size, then the explicit keys."""
  tower_config = dict(tower_config)
  variant = decode_variant(tower_config.pop("variant", "S/16" if module_cls is ViT else "S"))
  return {**_defaults(module_cls), **variant, **tower_config}


def transformer_flops(width: int, depth: int, mlp_dim: int, num_heads: int, length: int) -> dict:
  """Forward FLOPs of one sequence of `length` tokens through `depth` blocks, by part."""
  inner = (width // num_heads) * num_heads  # H·Dh
  return {
      "attention_proj": depth * 2 * length * width * 4 * inner,
      "attention_scores": depth * 2 * 2 * length * length * inner,
      "mlp": depth * 2 * 2 * length * width * mlp_dim,
  }


def vit_flops(image: dict, shape) -> dict:
  """Forward FLOPs of one image of `shape` [..., H, W, C] through a ViT with these settings, by
  part: 'patch_embed' (patch matmul, or ViTc's conv stem) and `transformer_flops`' parts."""
  (height, width_px), p = shape[-3:-1], image["patch_size"]
  patches = (height // p) * (width_px // p)
  tokens = patches + (1 if image["pool"] == "cls" else 0)
  if image.get("stem", "patch") == "conv":
    # ViTc (vit.ViT.conv_stem): log2(p) stride-2 3×3 convs doubling channels up to W, then 1×1 to W.
    channels, size, stem = shape[-1], height * width_px, 0
    for out_channels in conv_stem_channels(p, image["width"]):
      size //= 4
      stem += 2 * size * 9 * channels * out_channels
      channels = out_channels
    patch_embed = stem + 2 * patches * channels * image["width"]
  else:
    patch_embed = 2 * patches * p * p * shape[-1] * image["width"]
  return {"patch_embed": patch_embed,
          **transformer_flops(image["width"], image["depth"], image["mlp_dim"], image["num_heads"], tokens)}


def _examples(shape, trailing: int) -> int:
  count = 1
  for dim in shape[:len(shape) - trailing]:
    count *= int(dim)
  return count


def dual_encoder_flops(model_config, batch_shapes: dict) -> dict:
  """Forward FLOPs of the dual encoder on a batch, by part, for the whole (global) batch.

  model_config: the config's `model` section (name 'dual_encoder'); batch_shapes: {batch key: shape},
  e.g. {'image': (B, 224, 224, 3), 'text': (B, 64)}; keys the towers do not read are ignored.
  Returns {'image/patch_embed', 'image/attention_proj', ..., 'text/mlp', 'projections', 'similarity',
  'forward', 'train_step'}; 'train_step' = 3 × 'forward'.
  """
  if model_config.get("name", "dual_encoder") != "dual_encoder":
    raise ValueError(f"flops: no analytic FLOP count for model '{model_config['name']}' "
                     "(only dual_encoder)")
  image = tower_settings(model_config.get("image", {}), ViT)
  text = tower_settings(model_config.get("text", {}), TextTransformer)
  embed_dim = int(model_config["embed_dim"])
  out = {}

  def add(prefix, parts, count):
    for name, value in parts.items():
      out[f"{prefix}/{name}"] = out.get(f"{prefix}/{name}", 0) + count * value

  projections = 0
  for key in IMAGE_KEYS:
    if key not in batch_shapes:
      continue
    shape = batch_shapes[key]
    count = _examples(shape, 3)
    add("image", vit_flops(image, shape), count)
    projections += count * 2 * image["width"] * embed_dim
  for key in TEXT_KEYS:
    if key not in batch_shapes:
      continue
    shape = batch_shapes[key]
    add("text", transformer_flops(text["width"], text["depth"], text["mlp_dim"], text["num_heads"],
                                  int(shape[-1])), _examples(shape, 1))
    projections += _examples(shape, 1) * 2 * text["width"] * embed_dim
  if not out:
    raise ValueError(f"flops: the batch has none of the dual encoder's inputs "
                     f"({', '.join(IMAGE_KEYS + TEXT_KEYS)}); got {', '.join(batch_shapes)}")
  out["projections"] = projections
  if "image" in batch_shapes and "text" in batch_shapes:
    batch = int(batch_shapes["image"][0])
    out["similarity"] = 2 * batch * batch * embed_dim
  out["forward"] = sum(out.values())
  out["train_step"] = TRAIN_STEP_FACTOR * out["forward"]
  return out


def vlm_flops(model_config, batch_shapes: dict, vocab_size: int) -> dict:
  """FLOPs of the VLM on a batch, by part, for the whole (global) batch: {'image/...', 'projector',
  'decoder/attention_proj', 'decoder/attention_scores', 'decoder/mlp', 'decoder/head', 'forward',
  'train_step'}. batch_shapes: {'image': (B, S, S, 3), 'tokens': (B, T), ...}."""
  decoder = decoder_kwargs(model_config["decoder"])
  if decoder.get("pdrop_layers") or model_config.get("assignment_codes"):
    raise ValueError("flops: no analytic FLOP count for a VLM with PyramidDrop or assignment codes")
  projector = dict(model_config.get("projector") or {"kind": "mlp"})
  if projector["kind"] not in ("linear", "mlp"):
    raise ValueError(f"flops: no analytic FLOP count for the '{projector['kind']}' projector")
  image = tower_settings(model_config["image"], ViT)
  shape, length = batch_shapes["image"], int(batch_shapes["tokens"][-1])
  batch, width, p = shape[0], image["width"], image["patch_size"]
  patches = (shape[-3] // p) * (shape[-2] // p)
  out = {f"image/{name}": batch * value for name, value in vit_flops(image, shape).items()}
  d = decoder["width"]
  hidden = projector.get("hidden_dim") or d
  out["projector"] = batch * 2 * patches * (width * d if projector["kind"] == "linear" else width * hidden + hidden * d)
  heads = decoder["num_heads"]
  kv_heads, head_dim = decoder.get("num_kv_heads") or heads, decoder.get("head_dim") or d // heads
  depth = decoder["depth"]
  out["decoder/attention_proj"] = batch * depth * 2 * length * d * 2 * (heads + kv_heads) * head_dim
  out["decoder/attention_scores"] = batch * depth * 2 * 2 * length * length * heads * head_dim
  out["decoder/mlp"] = batch * depth * 3 * 2 * length * d * decoder["mlp_dim"]
  out["decoder/head"] = batch * 2 * length * d * vocab_size
  out["forward"] = sum(out.values())
  image_forward = sum(v for k, v in out.items() if k.startswith("image/"))
  if model_config.get("stop_image_gradient"):
    out["train_step"] = (TRAIN_STEP_FACTOR * (out["forward"] - image_forward - out["projector"])
                         + image_forward + 2 * out["projector"])
  else:
    out["train_step"] = TRAIN_STEP_FACTOR * out["forward"]
  return out


def train_step_flops(model_config, batch_shapes: dict, vocab_size: int | None = None) -> int:
  """Model FLOPs of one train step (forward + backward) on a global batch of these shapes; a VLM's
  needs the `vocab_size` of its output head."""
  if model_config.get("name") == "vlm":
    if vocab_size is None:
      raise ValueError("flops: a VLM's FLOP count needs the vocabulary size")
    return vlm_flops(model_config, batch_shapes, vocab_size)["train_step"]
  return dual_encoder_flops(model_config, batch_shapes)["train_step"]
