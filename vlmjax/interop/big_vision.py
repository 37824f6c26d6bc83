"""big_vision's SigLIP checkpoints: one `.npz` (`big_vision.utils.save_checkpoint`, or a released
`webli_*.npz`) of a `two_towers` model, read into vlmjax (import only).

The file holds flat keys joined by '/', with or without a leading `params/` (a training checkpoint's
optimizer state beside it is left out; a Flax-optimizer checkpoint's `opt/target/` is read as
`params/`); bfloat16 arrays (stored by numpy as 2-byte voids) are read as float32. The model:
`vit` with `pool_type='map'` and learned position embeddings, no class token, no image head
(`out_dim=(None, D)`); `text_transformer` with `pool_type='last'` and a head; `t`, the log
temperature, and `b`, the bias (both [1]). Both towers use flax's defaults: LayerNorm eps 1e-6 and
`nn.gelu`, which is the tanh approximation. That is `sizes.siglip`'s architecture, and the
architecture is read from the array shapes (widths, depths, heads of the [D, H, Dh] attention kernels,
MLP widths, the patch size of the embedding kernel, the image size from the position table, the text
length, the vocabulary). Every layout is flax's on both sides: the import renames and, for scanned
blocks, slices or stacks the leading layer axis.

  vlmjax                                big_vision
  image/patch_embed/{kernel,bias}       img/embedding/{kernel,bias}  (Conv [p, p, 3, D])
  image/pos_embedding [1, N, D]         img/pos_embedding
  image/encoder/<block i>               img/Transformer/encoderblock_i/...  or  .../encoderblock/... [depth, ...]
  image/encoder/final_norm              img/Transformer/encoder_norm
  image/map_head/probe [1, 1, D]        img/MAPHead_0/probe
  image/map_head/attn                   img/MAPHead_0/MultiHeadDotProductAttention_0
  image/map_head/norm                   img/MAPHead_0/LayerNorm_0
  image/map_head/mlp/{fc1,fc2}          img/MAPHead_0/MlpBlock_0/{Dense_0,Dense_1}
  text/token_embed/embedding [V, D]     txt/Embed_0/embedding
  text/pos_embedding [1, L, D]          txt/pos_embedding
  text/encoder/<block i>, final_norm    txt/Encoder_0/encoderblock_i/..., txt/Encoder_0/encoder_norm
  text_proj/{kernel,bias}               txt/head/{kernel,bias}
  logit_scale, logit_bias []            t, b [1]
  a block's norm1, attn/{query,key,value,out}, norm2, mlp/fc1, mlp/fc2
                                        LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out},
                                        LayerNorm_1, MlpBlock_0/Dense_0, MlpBlock_0/Dense_1

The text tower's encoder is `Encoder_0`, not `Transformer`: `text_transformer` calls `vit.Encoder`
without a name, and flax names it after its class. Pixels: big_vision's SigLIP reads
`value_range(-1, 1)`, vlmjax's [-1, 1]. Texts: big_vision's `tokenize(eos="sticky", pad_value=1)`
of the lower-cased text, `tokenizer.BIG_VISION_SIGLIP`; a SentencePiece `*.model` beside the `.npz`
is taken as the tokenizer (`tokenizer_file`).
"""
import glob
import math
import os
import re
import zipfile

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlmjax.interop import layout
from vlmjax.models.dual_encoder import DualEncoder

NORM, DENSE = ("scale", "bias"), ("kernel", "bias")
# What a block and the MAP head share: vlmjax module -> big_vision module (flax's DenseGeneral and Dense
# layouts on both sides, so names alone map).
ATTENTION_MLP = {
    "attn/query": "MultiHeadDotProductAttention_0/query",
    "attn/key": "MultiHeadDotProductAttention_0/key",
    "attn/value": "MultiHeadDotProductAttention_0/value",
    "attn/out": "MultiHeadDotProductAttention_0/out",
    "mlp/fc1": "MlpBlock_0/Dense_0",
    "mlp/fc2": "MlpBlock_0/Dense_1",
}
# One transformer block: vlmjax module -> (big_vision module, its leaves).
BLOCK = {"norm1": ("LayerNorm_0", NORM), "norm2": ("LayerNorm_1", NORM),
         **{ours: (theirs, DENSE) for ours, theirs in ATTENTION_MLP.items()}}
# Everything outside the blocks: vlmjax module -> (big_vision module, its leaves; () for an array).
REST = {
    "image/patch_embed": ("img/embedding", DENSE),
    "image/pos_embedding": ("img/pos_embedding", ()),
    "image/encoder/final_norm": ("img/Transformer/encoder_norm", NORM),
    "image/map_head/probe": ("img/MAPHead_0/probe", ()),
    "image/map_head/norm": ("img/MAPHead_0/LayerNorm_0", NORM),
    **{f"image/map_head/{ours}": (f"img/MAPHead_0/{theirs}", DENSE) for ours, theirs in ATTENTION_MLP.items()},
    "text/token_embed/embedding": ("txt/Embed_0/embedding", ()),
    "text/pos_embedding": ("txt/pos_embedding", ()),
    "text/encoder/final_norm": ("txt/Encoder_0/encoder_norm", NORM),
    "text_proj": ("txt/head", DENSE),
    "logit_scale": ("t", ()),
    "logit_bias": ("b", ()),
}
ENCODERS = {"image": "img/Transformer", "text": "txt/Encoder_0"}  # where each tower's blocks are
# Keys of two_towers models outside SigLIP's architecture, and what they are.
UNREPRESENTABLE = {
    "img/cls": "a class token (pool_type='tok'); vlmjax's SigLIP tower pools by its MAP head",
    "img/head": "an image head (out_dim's image entry; SigLIP's is None: the MAP head's output is the embedding)",
    "img/pre_logits": "a pre-logits layer (rep_size)",
    "txt/MAPHead_0": "a MAP head on the text (pool_type='map'); vlmjax's SigLIP text tower pools at the last token",
}


def _leaves(module: str, leaves: tuple) -> list[str]:
  return [f"{module}/{leaf}" for leaf in leaves] if leaves else [module]


def _block_name(key: str) -> str:
  """A block's key with its layer index dropped: `.../encoderblock_3/x` and `.../encoderblock/x` alike."""
  return re.sub(r"/encoderblock(_\d+)?/", "/encoderblock/", key)


KNOWN = ({key for module, leaves in REST.values() for key in _leaves(module, leaves)}
         | {f"{encoder}/encoderblock/{key}" for encoder in ENCODERS.values()
            for module, leaves in BLOCK.values() for key in _leaves(module, leaves)})


# --- files -----------------------------------------------------------------------------------------

def checkpoint_file(src: str) -> str:
  """--src: the .npz itself, or the folder holding exactly one."""
  if os.path.isfile(src):
    return src
  if not os.path.isdir(src):
    raise FileNotFoundError(f"big_vision: --src '{src}' is neither a .npz file nor a folder")
  files = sorted(glob.glob(os.path.join(src, "*.npz")))
  if not files:
    raise FileNotFoundError(f"big_vision: no *.npz checkpoint in '{src}'")
  if len(files) > 1:
    names = ", ".join(os.path.basename(f) for f in files)
    raise ValueError(f"big_vision: '{src}' holds {len(files)} .npz checkpoints ({names}); give --src the one "
                     "to import")
  return files[0]


def tokenizer_file(src: str) -> str | None:
  """The SentencePiece model beside the checkpoint (the one *.model in its folder), or None."""
  folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
  files = sorted(glob.glob(os.path.join(folder, "*.model")))
  if len(files) > 1:
    names = ", ".join(os.path.basename(f) for f in files)
    raise ValueError(f"big_vision: '{folder}' holds {len(files)} tokenizers ({names}); give --tokenizer the "
                     "one to use")
  return files[0] if files else None


def read_arrays(path: str) -> tuple[dict, str]:
  """The .npz -> ({key without its prefix: float32 array}, the prefix: '', 'params/' or 'opt/target/')."""
  try:
    npz = np.load(path, allow_pickle=False)
    if not hasattr(npz, "files"):
      raise ValueError("a single array (np.save), not named arrays")
    with npz:
      names = list(npz.files)
      # A training checkpoint: its params, not its optimizer state (big_vision's `load_params`).
      prefix = next((p for p in ("params/", "opt/target/") if any(n.startswith(p) for n in names)), "")
      arrays = {n[len(prefix):]: _float32(npz[n]) for n in names if n.startswith(prefix)}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"big_vision: cannot read '{path}' as a .npz checkpoint ({str(e).splitlines()[0][:200]})") \
        from None
  return arrays, prefix


def _float32(a):
  if a.dtype.kind == "V" and a.dtype.itemsize == 2:  # how numpy stores bfloat16 (big_vision's recover_dtype)
    a = a.view(jnp.bfloat16)
  return np.asarray(a, np.float32)


# --- architecture from the shapes ------------------------------------------------------------------

def _tower(arrays: dict, encoder: str, get, name) -> tuple[dict, bool]:
  """A tower's depth, heads and MLP width from its blocks -> (kwargs, whether the file stacks its blocks)."""
  scanned = f"{encoder}/encoderblock/LayerNorm_0/scale" in arrays
  if scanned:
    first = f"{encoder}/encoderblock"
    depth = get(f"{first}/LayerNorm_0/scale").shape[0]
  else:
    first = f"{encoder}/encoderblock_0"
    depth = 0
    while f"{encoder}/encoderblock_{depth}/LayerNorm_0/scale" in arrays:
      depth += 1
  query_key = f"{first}/MultiHeadDotProductAttention_0/query/kernel"
  query = get(query_key)
  if query.ndim != 3 + scanned or query.shape[-2] * query.shape[-1] != query.shape[-3]:
    raise ValueError(f"big_vision: {name(query_key)} is {query.shape}; vlmjax's attention takes "
                     f"{'[depth, ' if scanned else '['}width, heads, width / heads]")
  width, heads, _ = query.shape[-3:]
  mlp_dim = get(f"{first}/MlpBlock_0/Dense_0/kernel").shape[-1]
  return dict(width=int(width), depth=int(depth), mlp_dim=int(mlp_dim), num_heads=int(heads)), scanned


def architecture(arrays: dict, get, name, scan: bool = True) -> tuple[dict, dict, dict]:
  """The arrays -> (config.model, dict(image_size, max_text_len, vocab_size), {tower: whether the file
  stacks its blocks}); `get(key)` reads one array or raises the missing-key error, `name(key)` names
  one in an error."""
  image, image_scanned = _tower(arrays, ENCODERS["image"], get, name)
  text, text_scanned = _tower(arrays, ENCODERS["text"], get, name)
  kernel = get("img/embedding/kernel")
  if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != 3:
    raise ValueError(f"big_vision: {name('img/embedding/kernel')} is {kernel.shape}; vlmjax takes a square patch "
                     "convolution on RGB, [p, p, 3, D]")
  positions = get("img/pos_embedding").shape[1]
  grid = math.isqrt(positions)
  if grid * grid != positions:
    raise ValueError(f"big_vision: {name('img/pos_embedding')} has {positions} positions, not a square grid")
  get("img/MAPHead_0/probe")  # without it the image tower is not MAP-pooled: name the key now
  tokens = get("txt/Embed_0/embedding")
  embed_dim = int(get("txt/head/kernel").shape[-1])
  if embed_dim != image["width"]:
    raise ValueError(f"big_vision: {name('txt/head/kernel')} maps to {embed_dim}, not to the image width "
                     f"{image['width']} SigLIP compares it with")
  max_len = int(get("txt/pos_embedding").shape[1])
  model = dict(
      name="dual_encoder", embed_dim=embed_dim, image_head="none", text_head="proj_bias",
      logit_scale_init=math.log(10.0), logit_bias_init=-10.0,
      image=dict(**image, patch_size=int(kernel.shape[0]), pool="map", posemb="learn", pre_norm=False,
                 stem="patch", activation="gelu_tanh", norm_eps=1e-6, scan=scan),
      text=dict(**text, max_len=max_len, pool="last", causal=False, mask_padding=False, activation="gelu_tanh",
                norm_eps=1e-6, scan=scan))
  sizes = dict(image_size=grid * int(kernel.shape[0]), max_text_len=max_len, vocab_size=int(tokens.shape[0]))
  return model, sizes, dict(image=image_scanned, text=text_scanned)


# --- weights ---------------------------------------------------------------------------------------

def sources(model: dict, scanned: dict) -> dict:
  """Every param of the unscanned vlmjax model -> (big_vision key, layer index into a stacked array or
  None). `scanned`: {'image': bool, 'text': bool}, whether the file stacks that tower's blocks."""
  out = {}
  for target, (module, leaves) in REST.items():
    for leaf in leaves or ("",):
      out[f"{target}/{leaf}".rstrip("/")] = (f"{module}/{leaf}".rstrip("/"), None)
  for tower, encoder in ENCODERS.items():
    for i in range(model[tower]["depth"]):
      block, index = (f"{encoder}/encoderblock", i) if scanned[tower] else (f"{encoder}/encoderblock_{i}", None)
      for target, (module, leaves) in BLOCK.items():
        for leaf in leaves:
          out[f"{tower}/encoder/block_{i}/{target}/{leaf}"] = (f"{block}/{module}/{leaf}", index)
  return out


def expected_shapes(model: dict, sizes: dict) -> dict:
  """Every param's shape in the unscanned model (abstract init: nothing computed)."""
  towers = {tower: {**model[tower], "scan": False} for tower in ("image", "text")}
  module = DualEncoder(**{k: v for k, v in {**model, **towers}.items() if k != "name"},
                       vocab_size=sizes["vocab_size"])
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                          images=jnp.zeros((1, sizes["image_size"], sizes["image_size"], 3)),
                          texts=jnp.zeros((1, sizes["max_text_len"]), jnp.int32))
  return {jax.tree_util.keystr(k, simple=True, separator="/"): tuple(v.shape)
          for k, v in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(shapes)["params"])}


def load(path: str, scan: bool = True) -> tuple[dict, dict, dict]:
  """A big_vision SigLIP .npz -> (config.model, params as numpy, dict(image_size, max_text_len)).
  One-line ValueError naming the key for a tensor vlmjax cannot represent, one that is missing, or one
  whose shape the others contradict."""
  arrays, prefix = read_arrays(path)
  name = lambda key: f"'{prefix}{key}' in '{path}'"
  for key in sorted(arrays):
    if _block_name(key) not in KNOWN:
      why = next((w for known, w in UNREPRESENTABLE.items() if key == known or key.startswith(known + "/")),
                 "no param of vlmjax's SigLIP dual encoder")
      raise ValueError(f"big_vision: {name(key)} is {why}")

  def get(key):
    if key not in arrays:
      raise ValueError(f"big_vision: '{path}' has no tensor '{prefix}{key}' (a SigLIP two_towers checkpoint "
                       "has one)")
    return arrays[key]

  model, sizes, scanned = architecture(arrays, get, name, scan)
  want = expected_shapes(model, sizes)
  flat, used = {}, set()
  for target, (key, index) in sources(model, scanned).items():
    array = get(key)
    if index is not None:
      depth = model[target.split("/")[0]]["depth"]
      if array.ndim == 0 or array.shape[0] != depth:
        raise ValueError(f"big_vision: {name(key)} is {array.shape}; the tower's other blocks "
                         f"stack {depth} layers")
      array = array[index]
    if target in ("logit_scale", "logit_bias"):
      array = array.reshape(()) if array.size == 1 else array
    if array.shape != want[target]:
      per_layer = " a layer" if index is not None else ""
      raise ValueError(f"big_vision: {name(key)} is {array.shape}{per_layer}; the model the other tensors "
                       f"describe needs {want[target]} (vlmjax's {target})")
    flat[target] = array
    used.add(key)
  for key in sorted(set(arrays) - used):  # a block beyond the depth, or both block layouts in one file
    raise ValueError(f"big_vision: {name(key)} is not a block of the {model['image']['depth']} image and "
                     f"{model['text']['depth']} text layers the other tensors describe")
  params = traverse_util.unflatten_dict(flat, sep="/")
  if scan:
    for tower in ("image", "text"):
      encoder = params[tower]["encoder"]
      blocks = [encoder.pop(f"block_{i}") for i in range(model[tower]["depth"])]
      encoder.update(layout.stack_layers(blocks, True))
  return model, params, dict(image_size=sizes["image_size"], max_text_len=sizes["max_text_len"])
