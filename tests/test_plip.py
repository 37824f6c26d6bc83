"""PLIP: identity-level positives and attribute prediction against numpy references."""
import jax
import numpy as np
import pytest

from vlmjax.objectives.identity import attribute_loss, attribute_targets, label_positive_loss
from vlmjax.objectives.contrastive import clip_loss


def _log_softmax(x):
  m = x.max(axis=1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def _reference(u, v, labels, theta):
  logits = np.exp(theta) * u @ v.T
  total = 0.0
  for rows in (logits, logits.T):
    log_p = _log_softmax(rows)
    for i in range(len(u)):
      positives = [j for j in range(len(u)) if j == i or (labels[i] >= 0 and labels[j] == labels[i])]
      total += -np.mean(log_p[i, positives]) / len(u)
  return 0.5 * total


def test_label_positive_loss_matches_reference_values_and_gradients():
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  u, v = unit(rng.normal(size=(8, 5))), unit(rng.normal(size=(8, 5)))
  labels = np.array([3, -1, 3, 0, -1, 0, 3, 5])
  got = label_positive_loss(np.float32(u), np.float32(v), labels, np.float32(2.0))
  np.testing.assert_allclose(float(got), _reference(u, v, labels, 2.0), rtol=1e-5)
  with jax.enable_x64(True):
    grad = np.asarray(jax.grad(label_positive_loss)(u, v, labels, np.float64(2.0)))
  for i, d in [(0, 1), (4, 3), (6, 0)]:
    bump = np.zeros_like(u)
    bump[i, d] = 1e-6
    numeric = (_reference(u + bump, v, labels, 2.0) - _reference(u - bump, v, labels, 2.0)) / 2e-6
    np.testing.assert_allclose(grad[i, d], numeric, rtol=1e-5, atol=1e-9)
  # Without shared labels it is CLIP.
  np.testing.assert_allclose(float(label_positive_loss(np.float32(u), np.float32(v), -np.ones(8, int), np.float32(2.0))),
                             float(clip_loss(np.float32(u), np.float32(v), np.float32(2.0))), rtol=1e-6)


def test_attribute_targets_and_loss():
  attributes = np.array([[[1, 0], [2, 1], [1, 1]], [[0, 1], [0, 0], [2, 0]]])
  valid = np.array([[1, 1, 0], [1, 0, 0]])
  targets = np.asarray(attribute_targets(attributes, valid, (3, 2)))
  np.testing.assert_array_equal(targets, [[0, 1, 1, 1, 1], [1, 0, 0, 0, 1]])
  logits = np.random.default_rng(1).normal(size=(2, 5))
  want = np.mean(np.log1p(np.exp(-logits)) * targets + np.log1p(np.exp(logits)) * (1 - targets))
  np.testing.assert_allclose(float(attribute_loss(np.float32(logits), np.float32(targets))), want, rtol=1e-5)


def test_plip_without_attribute_classes_is_a_config_error(tiny_data_dir):
  from conftest import tiny_config
  from vlmjax import experiment
  from vlmjax.config import ConfigError
  with pytest.raises(ConfigError, match="objectives.plip: attribute_weight > 0 needs attribute_classes"):
    experiment.build_objectives(tiny_config(tiny_data_dir, objectives=dict(plip=dict(weight=1.0))))
