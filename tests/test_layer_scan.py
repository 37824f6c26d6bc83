"""The transformer stack scanned over layers (`nn.scan`) or unrolled (a Python loop), with each remat
policy: the same function, and with scan the compile time does not grow with depth."""
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax.models.layers import Transformer

BLOCK = dict(num_heads=2, mlp_dim=64)


def _stack(depth, scan, remat="none"):
  return Transformer(depth, BLOCK, scan=scan, remat=remat)


def _unstack(params, depth):
  """Scanned params ({'blocks': leaves [depth, ...]}) -> unrolled ({'block_0': ..., ...})."""
  out = {k: v for k, v in params.items() if k != "blocks"}
  for i in range(depth):
    out[f"block_{i}"] = jax.tree.map(lambda x: x[i], params["blocks"])
  return out


@pytest.mark.parametrize("remat", ["none", "dots", "full"])
def test_scan_and_unrolled_stacks_are_the_same_function(remat):
  depth = 3
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 32))
  mask = jnp.tril(jnp.ones((5, 5), bool))[None, None]
  scanned, unrolled = _stack(depth, True, remat), _stack(depth, False, remat)
  params = nn.meta.unbox(scanned.init(jax.random.PRNGKey(0), x, mask)["params"])
  assert jax.tree.leaves(params["blocks"])[0].shape[0] == depth
  params_unrolled = _unstack(params, depth)
  assert jax.tree.structure(params_unrolled) == jax.tree.structure(
      nn.meta.unbox(unrolled.init(jax.random.PRNGKey(0), x, mask)["params"]))

  def loss(model, p):
    return jnp.sum(model.apply({"params": p}, x, mask) ** 2)

  out_scan, grads_scan = jax.value_and_grad(lambda p: loss(scanned, p))(params)
  out_unrolled, grads_unrolled = jax.value_and_grad(lambda p: loss(unrolled, p))(params_unrolled)
  np.testing.assert_allclose(out_scan, out_unrolled, rtol=1e-5)
  for path, g in jax.tree_util.tree_flatten_with_path(_unstack(grads_scan, depth))[0]:
    expected = dict(jax.tree_util.tree_flatten_with_path(grads_unrolled)[0])[path]
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("unroll", [2, 4])
def test_unrolled_scan_is_the_same_function_without_a_loop(unroll):
  """`unroll` keeps the stacked params and their initial values and computes the same function and
  gradients; with unroll = depth the compiled step has no loop left (what makes it faster on CPU)."""
  depth = 4
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 32))
  looped, unrolled = _stack(depth, True, "dots"), Transformer(depth, BLOCK, scan=True, remat="dots", unroll=unroll)
  params = nn.meta.unbox(looped.init(jax.random.PRNGKey(0), x)["params"])
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(nn.meta.unbox(unrolled.init(jax.random.PRNGKey(0), x)["params"]))):
    np.testing.assert_array_equal(a, b)

  def step(model):
    return jax.jit(jax.value_and_grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)))

  (out_looped, grads_looped), (out_unrolled, grads_unrolled) = step(looped)(params), step(unrolled)(params)
  np.testing.assert_allclose(out_unrolled, out_looped, rtol=1e-6)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_looped))
  for got, want in zip(jax.tree.leaves(grads_unrolled), jax.tree.leaves(grads_looped)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale)
  hlo = lambda model: step(model).lower(params).compile().as_text()
  assert " while(" in hlo(looped)
  assert (" while(" in hlo(unrolled)) == (unroll < depth)


def test_unroll_must_be_a_positive_integer():
  with pytest.raises(ValueError, match="unroll: 0 is not a positive integer"):
    Transformer(2, BLOCK, unroll=0).init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 32)))


def _compile_seconds(depths, scan, repeats=3):
  """Seconds to lower and compile a train-like step (value and grad) of the stack at each depth, best
  of `repeats`; the depths take turns, so that load from other processes falls on all alike."""
  best = {depth: float("inf") for depth in depths}
  for _ in range(repeats):
    for depth in depths:
      model = _stack(depth, scan, remat="dots")
      x = jnp.zeros((2, 8, 32))
      params = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.PRNGKey(0), x)["params"]))
      step = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(model.apply({"params": p}, x) ** 2)))
      start = time.perf_counter()
      step.lower(params, x).compile()
      best[depth] = min(best[depth], time.perf_counter() - start)
  return [best[depth] for depth in depths]


def test_scan_compile_time_is_flat_in_depth(no_compilation_cache):
  shallow, deep = _compile_seconds((2, 24), scan=True, repeats=3)
  assert deep < 1.5 * shallow, f"24 layers took {deep:.2f}s to compile, 2 layers {shallow:.2f}s"
  # And the test can tell: unrolled, the same 24 layers take several times as long as 2 (too few
  # layers would not separate the two under a parallel worker's load).
  shallow, deep = _compile_seconds((2, 24), scan=False, repeats=2)
  assert deep > 1.5 * shallow, f"unrolled: 24 layers {deep:.2f}s, 2 layers {shallow:.2f}s"
