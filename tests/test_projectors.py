"""Projectors: ToMe merging against a numpy port of facebookresearch/ToMe, token counts, H-Reducer."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax.models.projectors import Projector, bipartite_soft_matching, merge_tokens, tome_schedule


def tome_reference(metric, x, size, r, mode):
  """ToMe's bipartite_soft_matching + merge (no class token), one example at a time, in numpy:
  'mean' is scatter_reduce(mean, include_self=True); 'wavg' is merge_wavg."""
  metric = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
  a, b = metric[::2], metric[1::2]
  scores = a @ b.T
  node_max, node_idx = scores.max(-1), scores.argmax(-1)
  edge_idx = np.argsort(-node_max, kind="stable")
  unm_idx, src_idx = edge_idx[r:], edge_idx[:r]
  dst_idx = node_idx[src_idx]
  weights = size if mode == "wavg" else np.ones_like(size)
  src, dst = x[::2], x[1::2]
  total, norm = dst * weights[1::2, None], weights[1::2].copy()
  new_size = size[1::2].copy()
  for s, d in zip(src_idx, dst_idx):
    total[d] += src[s] * weights[::2][s]
    norm[d] += weights[::2][s]
    new_size[d] += size[::2][s]
  return (np.concatenate([src[unm_idx], total / norm[:, None]]),
          np.concatenate([size[::2][unm_idx], new_size]))


@pytest.mark.parametrize("tokens,r,mode", [(10, 3, "mean"), (9, 4, "wavg"), (16, 8, "wavg")])
def test_tome_merge_matches_reference(tokens, r, mode):
  rng = np.random.default_rng(tokens)
  metric = rng.standard_normal((2, tokens, 6)).astype(np.float32)
  x = rng.standard_normal((2, tokens, 5)).astype(np.float32)
  size = rng.integers(1, 4, (2, tokens)).astype(np.float32)  # as after an earlier merge
  got_x, got_size = merge_tokens(jnp.asarray(x), jnp.asarray(size),
                                 *bipartite_soft_matching(jnp.asarray(metric), r), mode)
  assert got_x.shape == (2, tokens - r, 5)
  for i in range(2):
    want_x, want_size = tome_reference(metric[i], x[i], size[i], r, mode)
    np.testing.assert_allclose(np.asarray(got_x[i]), want_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_size[i]), want_size)
    assert float(got_size[i].sum()) == float(size[i].sum())  # every patch is still counted once


def test_tome_merges_identical_tokens_first():
  """Two tokens that are copies of each other are the first pair merged, into their own average."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 8, 4)).astype(np.float32)
  x[0, 5] = x[0, 2]  # token 2 (in A) duplicates token 5 (in B)
  src, dst, _ = bipartite_soft_matching(jnp.asarray(x), 1)
  assert int(src[0, 0]) == 1 and int(dst[0, 0]) == 2  # A index 1 = token 2, B index 2 = token 5


@pytest.mark.parametrize("projector,expected", [
    (dict(kind="linear"), 64), (dict(kind="mlp", hidden_dim=48), 64), (dict(kind="hreducer", reduce=4), 16),
    (dict(kind="tome", depth=2, r=24, width=16, num_heads=2), 64 - 24 - 20),
    (dict(kind="tome", depth=3, r=30, width=16, num_heads=2), 64 - 30 - 17 - 8),  # at most half each time
])
def test_projector_token_counts(projector, expected):
  model = Projector(out_dim=24, **projector)
  tokens = jnp.ones((2, 64, 20))
  out = jax.jit(lambda x: model.apply(model.init(jax.random.PRNGKey(0), x), x))(tokens)  # one compile, not per op
  assert out.shape == (2, expected, 24) and model.num_output_tokens(64) == expected


def test_tome_schedule_merges_at_most_half():
  assert tome_schedule(64, 3, 30) == [30, 17, 8]
  assert tome_schedule(257, 12, 19) == [19] * 12  # SimVLG: 257 -> 29 tokens


def test_hreducer_merges_horizontal_neighbours():
  """DocOwl's H-Reducer: output token (row, j) sees exactly input tokens (row, 4j .. 4j+3)."""
  model = Projector(kind="hreducer", out_dim=8, reduce=4)
  tokens = jnp.zeros((1, 64, 6))
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens))
  base = model.apply(params, tokens)
  moved = model.apply(params, tokens.at[0, 8 * 2 + 5].set(1.0))  # row 2, column 5
  changed = np.flatnonzero(np.abs(np.asarray(moved - base)).sum(-1)[0] > 0)
  np.testing.assert_array_equal(changed, [2 * 2 + 1])  # row 2, output column 5 // 4 = 1


def test_unknown_projector_fails_clearly():
  with pytest.raises(ValueError, match="unknown projector kind 'qformer'"):
    Projector(kind="qformer", out_dim=8).init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4)))
