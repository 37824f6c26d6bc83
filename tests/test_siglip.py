"""SigLIP's sigmoid loss against a plain float64 numpy reference of its formula."""
import jax
import numpy as np

from vlmjax.objectives.contrastive import siglip_loss


def _normalised(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference(u, v, t_prime, b):
  logits = np.exp(t_prime) * u @ v.T + b
  z = 2 * np.eye(len(u)) - 1
  return -np.sum(np.log(1 / (1 + np.exp(-z * logits)))) / len(u)


def test_siglip_loss_matches_numpy_and_finite_differences():
  rng = np.random.default_rng(0)
  u, v = _normalised(rng, (12, 8)), _normalised(rng, (12, 8))
  for t_prime, b in ((np.log(10.0), -10.0), (1.3, 0.5)):
    got = siglip_loss(np.float32(u), np.float32(v), np.float32(t_prime), np.float32(b))
    np.testing.assert_allclose(got, _reference(u, v, t_prime, b), rtol=1e-5)
    grad_t, grad_b = jax.grad(siglip_loss, argnums=(2, 3))(
        np.float32(u), np.float32(v), np.float32(t_prime), np.float32(b))
    eps = 1e-5
    fd_t = (_reference(u, v, t_prime + eps, b) - _reference(u, v, t_prime - eps, b)) / (2 * eps)
    fd_b = (_reference(u, v, t_prime, b + eps) - _reference(u, v, t_prime, b - eps)) / (2 * eps)
    np.testing.assert_allclose([grad_t, grad_b], [fd_t, fd_b], rtol=1e-3, atol=1e-5)


def test_siglip_normalises_by_batch_not_batch_squared():
  """Doubling the batch with copies of the same pairs adds negatives per row but keeps a B divisor."""
  u = np.eye(4, dtype=np.float32)
  loss = float(siglip_loss(u, u, np.float32(np.log(10.0)), np.float32(-10.0)))
  np.testing.assert_allclose(loss, _reference(np.float64(u), np.float64(u), np.log(10.0), -10.0), rtol=1e-6)
  # Per row: one positive (logit 0) and 3 negatives (logit -10): −log σ(0) + 3·(−log σ(10)).
  np.testing.assert_allclose(loss, np.log(2) + 3 * np.log1p(np.exp(-10.0)), rtol=1e-5)
