"""STRUCTURE against a float64 numpy reference; its frozen side takes no gradient; λ warms up."""
import jax
import numpy as np
import pytest

from vlmjax.objectives.regularizers import StructureObjective, structure_divergence


def _transitions(x, tau):
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  x = x - x.mean(0)
  s = x @ x.T / tau
  e = np.exp(s - s.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def _reference(frozen, aligned, tau, levels, weighting):
  px, pz = _transitions(frozen, tau), _transitions(aligned, tau)
  kl = lambda p, q: np.sum(p * (np.log(p) - np.log(q))) / len(p)
  total = 0.0
  for level in range(1, levels + 1):
    a, b = np.linalg.matrix_power(px, level), np.linalg.matrix_power(pz, level)
    m = (a + b) / 2
    js = 0.5 * (kl(a, m) + kl(b, m))
    total += js / level if weighting == "inverse" else js
  return total / levels


@pytest.mark.parametrize("levels,weighting", [(1, "none"), (3, "inverse"), (2, "none")])
def test_structure_matches_reference(levels, weighting):
  rng = np.random.default_rng(0)
  frozen, aligned = rng.normal(size=(10, 12)), rng.normal(size=(10, 6))
  got = structure_divergence(np.float32(frozen), np.float32(aligned), 0.5, levels, weighting)
  np.testing.assert_allclose(got, _reference(frozen, aligned, 0.5, levels, weighting), rtol=2e-4)


def test_structure_is_zero_for_unchanged_geometry_and_frozen_side_has_no_gradient():
  rng = np.random.default_rng(1)
  x = np.float32(rng.normal(size=(8, 5)))
  assert abs(float(structure_divergence(x, 3.0 * x, 0.1))) < 1e-6  # scale does not change structure
  grad_frozen, grad_aligned = jax.grad(structure_divergence, argnums=(0, 1))(
      x, np.float32(rng.normal(size=(8, 5))), 0.1)
  assert not np.asarray(grad_frozen).any() and np.asarray(grad_aligned).any()


def test_structure_lambda_warms_up():
  rng = np.random.default_rng(2)
  outputs = {k: np.float32(rng.normal(size=(6, 4))) for k in
             ("image_features", "image_embeds", "text_features", "text_embeds")}
  objective = StructureObjective(temperature=0.2, warmup_steps=10)
  full, _ = objective(outputs, None, step=None)
  half, metrics = objective(outputs, None, step=5)
  np.testing.assert_allclose(half, 0.5 * full, rtol=1e-6)
  assert float(metrics["ramp"]) == 0.5


# --- TCL's local mutual-information term -----------------------------------------------------------


def _reference_local_mi(g, l, mask, theta):
  """Loops straight from TCL's in_batch_g2l_loss, float64."""
  s = np.exp(theta)
  batch, locals_ = mask.shape
  per_sample = []
  for i in range(batch):
    negatives = [s * g[i] @ l[j, k] for j in range(batch) if j != i for k in range(locals_) if mask[j, k]]
    losses = []
    for k in range(locals_):
      if mask[i, k]:
        positive = s * g[i] @ l[i, k]
        losses.append(-positive + np.log(np.exp(positive) + np.sum(np.exp(negatives))))
    per_sample.append(np.mean(losses) if losses else 0.0)
  return np.mean(per_sample)


def _unit(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_local_mi_matches_reference_values_and_gradients():
  from vlmjax.objectives.regularizers import local_mi_loss
  rng = np.random.default_rng(0)
  g, l = _unit(rng, (5, 6)), _unit(rng, (5, 4, 6))
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], bool)
  theta = 1.2
  got = local_mi_loss(np.float32(g), np.float32(l), mask, np.float32(theta))
  np.testing.assert_allclose(float(got), _reference_local_mi(g, l, mask, theta), rtol=1e-5)
  with jax.enable_x64(True):
    grad_g = np.asarray(jax.grad(local_mi_loss)(g, l, mask, np.float64(theta)))
  eps = 1e-6
  for i, d in [(0, 0), (2, 3), (3, 5), (4, 1)]:
    bumped = lambda e: _reference_local_mi(g + e * np.eye(5)[i][:, None] * np.eye(6)[d][None], l, mask, theta)
    np.testing.assert_allclose(grad_g[i, d], (bumped(eps) - bumped(-eps)) / (2 * eps), rtol=1e-5, atol=1e-8)
  assert not np.any(grad_g[3])  # a text without a valid token contributes nothing


def test_image_locals_are_window_means_of_normalised_tokens():
  from vlmjax.objectives.regularizers import pooled_image_locals
  rng = np.random.default_rng(1)
  tokens = rng.normal(size=(2, 64, 3))
  got = np.asarray(pooled_image_locals(np.float32(tokens), 4))
  grid = (tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)).reshape(2, 8, 8, 3)
  want = np.stack([grid[:, 2 * r:2 * r + 2, 2 * c:2 * c + 2].mean(axis=(1, 2)) for r in range(4) for c in range(4)], 1)
  np.testing.assert_allclose(got, want, atol=1e-6)
  with pytest.raises(ValueError, match="objectives.tcl.local_grid 3 must divide the 8×8 patch grid"):
    pooled_image_locals(np.float32(tokens), 3)
