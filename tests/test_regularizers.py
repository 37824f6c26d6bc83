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
