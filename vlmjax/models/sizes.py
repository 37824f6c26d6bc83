"""Standard transformer sizes by name, as in ViT / big_vision: `S/16` is size S with 16-pixel patches."""

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
