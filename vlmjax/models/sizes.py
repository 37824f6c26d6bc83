"""Standard transformer sizes by name, as in ViT / big_vision: `S/16` is size S with 16-pixel patches."""
import math

# name: (width, depth, mlp_dim, num_heads)
SIZES = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
}


def decode_variant(variant: str) -> dict:
  """'S/16' -> dict(width=384, depth=12, mlp_dim=1536, num_heads=6, patch_size=16); 'S' has no patch."""
  size, _, patch = variant.partition("/")
  if size not in SIZES:
    raise ValueError(f"unknown model size '{size}' in variant '{variant}'; known: {', '.join(SIZES)}")
  width, depth, mlp_dim, num_heads = SIZES[size]
  out = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
  if patch:
    if not patch.isdigit():
      raise ValueError(f"patch size in variant '{variant}' must be an integer")
    out["patch_size"] = int(patch)
  return out


# SigLIP's released English checkpoints (big_vision's SigLIP_demo.ipynb), by image variant and image
# size in pixels: the text tower's size, the embedding width, the text length and the vocabulary.
# The image towers are the ViT sizes above with the patch size named; So400m/14 at 384 px has a
# 27 × 27 grid, the last 6 pixels of each side dropped as by big_vision's VALID patch convolution.
SIGLIP = {
    ("B/16", 224): dict(text="B", embed_dim=768, max_len=64, vocab_size=32_000),
    ("B/16", 256): dict(text="B", embed_dim=768, max_len=64, vocab_size=32_000),
    ("B/16", 384): dict(text="B", embed_dim=768, max_len=64, vocab_size=32_000),
    ("B/16", 512): dict(text="B", embed_dim=768, max_len=64, vocab_size=32_000),
    ("L/16", 256): dict(text="L", embed_dim=1024, max_len=64, vocab_size=32_000),
    ("L/16", 384): dict(text="L", embed_dim=1024, max_len=64, vocab_size=32_000),
    ("So400m/14", 224): dict(text="So400m", embed_dim=1152, max_len=16, vocab_size=32_000),
    ("So400m/14", 384): dict(text="So400m", embed_dim=1152, max_len=64, vocab_size=32_000),
}


def siglip(variant: str, image_size: int) -> dict:
  """SigLIP's architecture as config sections: dict(model=..., input=dict(image_size, max_text_len),
  vocab_size=...). MAP-pooled image tower with no projection; a text tower without a causal or
  padding mask, pooled at its last position, then a dense head with a bias; tanh-GELU (flax's
  default `nn.gelu`, which big_vision uses) and LayerNorm eps 1e-6 in both; t' = ln 10, b = -10."""
  if (variant, image_size) not in SIGLIP:
    raise ValueError(f"no SigLIP checkpoint {variant} at {image_size} px; known: "
                     f"{', '.join(f'{v} at {s}' for v, s in SIGLIP)}")
  spec = SIGLIP[variant, image_size]
  image = dict(variant=variant, pool="map", posemb="learn", activation="gelu_tanh")
  text = dict(variant=spec["text"], max_len=spec["max_len"], pool="last", causal=False, mask_padding=False,
              activation="gelu_tanh")
  model = dict(name="dual_encoder", image=image, text=text, embed_dim=spec["embed_dim"], image_head="none",
               text_head="proj_bias", logit_scale_init=math.log(10.0), logit_bias_init=-10.0)
  return dict(model=model, input=dict(image_size=image_size, max_text_len=spec["max_len"]),
              vocab_size=spec["vocab_size"])
