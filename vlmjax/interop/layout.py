"""Weight-layout conversions between PyTorch modules and vlmjax's Flax modules, on numpy arrays.

Every transpose, head split and q/k/v merge the format converters need is here, each with its
inverse, so the name maps in `open_clip.py`, `hf_clip.py` and `hf_llama.py` stay one line per tensor.

  torch nn.Linear weight      [out, in]            <-> flax Dense kernel            [in, out]
  torch q/k/v_proj weight     [H·Dh, D]            <-> flax DenseGeneral kernel     [D, H, Dh]
  torch q/k/v_proj bias       [H·Dh]               <-> flax DenseGeneral bias       [H, Dh]
  torch out_proj weight       [D, H·Dh]            <-> flax DenseGeneral kernel     [H, Dh, D]
  torch MultiheadAttention in_proj_weight [3·D, D]  = q, k, v weights stacked on axis 0
  torch nn.Conv2d weight      [out, in, kh, kw]    <-> flax Conv kernel             [kh, kw, in, out]

`to_numpy_state` reads a state dict of either kind; `check_shapes` compares imported params with the
shapes the module makes.
"""
import flax.linen as nn
import jax
import numpy as np


def to_numpy_state(state: dict) -> dict:
  """A state dict of torch tensors (float32 on the CPU) or arrays -> numpy arrays."""
  return {k: (a.detach().float().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)) for k, a in state.items()}


def check_shapes(fmt: str, module, params: dict, **inputs):
  """Every param's shape against what `module` makes when initialised on `inputs` (abstractly: nothing
  computed). ValueError naming the first param whose shape differs, or which is missing."""
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), **inputs)
  want = {jax.tree_util.keystr(k, simple=True, separator="/"): tuple(v.shape)
          for k, v in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(shapes)["params"])}
  got = {jax.tree_util.keystr(k, simple=True, separator="/"): tuple(np.shape(v))
         for k, v in jax.tree_util.tree_leaves_with_path(params)}
  for name in sorted(want):
    if got.get(name) != want[name]:
      raise ValueError(f"{fmt}: param {name} is {got.get(name)} from the state dict; config.json makes it "
                       f"{want[name]}")


def linear_to_dense(weight):
  """torch Linear weight [out, in] -> flax Dense kernel [in, out]."""
  return np.ascontiguousarray(np.asarray(weight).T)


def dense_to_linear(kernel):
  """flax Dense kernel [in, out] -> torch Linear weight [out, in]."""
  return np.ascontiguousarray(np.asarray(kernel).T)


def linear_to_heads_in(weight, num_heads: int):
  """torch q/k/v projection weight [H·Dh, D] -> DenseGeneral kernel [D, H, Dh]."""
  weight = np.asarray(weight)
  return np.ascontiguousarray(weight.T.reshape(weight.shape[1], num_heads, -1))


def heads_in_to_linear(kernel):
  """DenseGeneral kernel [D, H, Dh] -> torch projection weight [H·Dh, D]."""
  kernel = np.asarray(kernel)
  return np.ascontiguousarray(kernel.reshape(kernel.shape[0], -1).T)


def bias_to_heads(bias, num_heads: int):
  """torch projection bias [H·Dh] -> DenseGeneral bias [H, Dh]."""
  return np.asarray(bias).reshape(num_heads, -1)


def heads_to_bias(bias):
  """DenseGeneral bias [H, Dh] -> [H·Dh]."""
  return np.asarray(bias).reshape(-1)


def linear_to_heads_out(weight, num_heads: int):
  """torch output projection weight [D, H·Dh] -> DenseGeneral kernel [H, Dh, D]."""
  weight = np.asarray(weight)
  return np.ascontiguousarray(weight.T.reshape(num_heads, -1, weight.shape[0]))


def heads_out_to_linear(kernel):
  """DenseGeneral kernel [H, Dh, D] -> torch output projection weight [D, H·Dh]."""
  kernel = np.asarray(kernel)
  return np.ascontiguousarray(kernel.reshape(-1, kernel.shape[-1]).T)


def split_qkv(packed):
  """torch MultiheadAttention in_proj weight [3·D, D] (or bias [3·D]) -> (q, k, v), each [D, ...]."""
  q, k, v = np.split(np.asarray(packed), 3, axis=0)
  return q, k, v


def merge_qkv(q, k, v):
  """(q, k, v) torch projection weights [D, D] (or biases [D]) -> in_proj [3·D, D] (or [3·D])."""
  return np.concatenate([np.asarray(q), np.asarray(k), np.asarray(v)], axis=0)


def conv_to_flax(weight):
  """torch Conv2d weight [out, in, kh, kw] -> flax Conv kernel [kh, kw, in, out]."""
  return np.ascontiguousarray(np.asarray(weight).transpose(2, 3, 1, 0))


def flax_to_conv(kernel):
  """flax Conv kernel [kh, kw, in, out] -> torch Conv2d weight [out, in, kh, kw]."""
  return np.ascontiguousarray(np.asarray(kernel).transpose(3, 2, 0, 1))


def fold_pixel_normalization(kernel, bias, mean, std):
  """A patch embedding trained on `(x01 − mean) / std` pixels -> the same one on vlmjax's pixels.

  vlmjax feeds x = 2·x01 − 1 (in [−1, 1]). The patch convolution is linear and unpadded, so
  W·((x + 1)/2 − m)/s + b = (W / 2s)·x + [b + Σ W·(½ − m)/s] exactly: the per-channel scale goes
  into the kernel and the shift into the bias. kernel [p, p, 3, D], bias [D] or None, mean and std
  [3] -> (kernel, bias).
  """
  kernel = np.asarray(kernel, np.float64)
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  bias = np.zeros(kernel.shape[-1]) if bias is None else np.asarray(bias, np.float64)
  new_bias = bias + np.einsum("hwco,c->o", kernel, (0.5 - mean) / std)
  return (kernel / (2.0 * std)[None, None, :, None]).astype(np.float32), new_bias.astype(np.float32)


def unstack_layers(encoder: dict, depth: int) -> list[dict]:
  """A `layers.Transformer`'s params -> one param tree per block: slices of the scanned 'blocks'
  (a leading layer axis) or the 'block_{i}' entries of an unscanned stack."""
  if "blocks" in encoder:
    return [tree_map(lambda x, i=i: np.asarray(x)[i], encoder["blocks"]) for i in range(depth)]
  return [encoder[f"block_{i}"] for i in range(depth)]


def stack_layers(blocks: list[dict], scan: bool) -> dict:
  """One param tree per block -> a `layers.Transformer`'s params ('blocks' stacked on a leading
  layer axis when `scan`, else 'block_{i}')."""
  if not scan:
    return {f"block_{i}": block for i, block in enumerate(blocks)}
  return {"blocks": tree_map(lambda *xs: np.stack(xs), *blocks)}


def tree_map(fn, tree, *rest):
  if isinstance(tree, dict):
    return {k: tree_map(fn, v, *(r[k] for r in rest)) for k, v in tree.items()}
  return fn(tree, *rest)
