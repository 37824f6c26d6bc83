"""VLAP assignment prediction: the log-domain Sinkhorn plan, the word prior, the swapped loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax.objectives.assignment import (AssignmentObjective, assignment_loss, cosine_scores, sinkhorn_log,
                                          word_prior)


def _scores(rng, batch, words, dim=16):
  """Cosine scores; row 0 is an exact word embedding (a cosine of 1: exp(1/0.01) overflows float32)."""
  z, w = rng.standard_normal((batch, dim)), rng.standard_normal((words, dim))
  z[0] = w[3]
  return np.asarray(cosine_scores(jnp.asarray(z), jnp.asarray(w)))


@pytest.mark.parametrize("batch,words", [(8, 200), (64, 256), (256, 300)])
def test_sinkhorn_plan_meets_both_marginals_at_small_epsilon(batch, words):
  rng = np.random.default_rng(batch)
  scores = _scores(rng, batch, words)
  assert scores.max() > 0.999 and not np.isfinite(np.exp(scores.astype(np.float32) / 0.01)).all()
  prior = rng.dirichlet(np.ones(words))
  plan = np.asarray(sinkhorn_log(jnp.asarray(scores), jnp.log(jnp.asarray(prior, jnp.float32)), 0.01, 500))
  assert np.isfinite(plan).all() and (plan >= 0).all()
  np.testing.assert_allclose(plan.sum(1), np.full(batch, 1 / batch), rtol=0, atol=1e-5)
  np.testing.assert_allclose(plan.sum(0), prior, rtol=0, atol=1e-5)


@pytest.mark.parametrize("iterations", [1, 3])
def test_sinkhorn_rows_are_distributions_after_a_few_iterations(iterations):
  rng = np.random.default_rng(iterations)
  scores, prior = _scores(rng, 32, 256), rng.dirichlet(np.ones(256))
  plan = np.asarray(sinkhorn_log(jnp.asarray(scores), jnp.log(jnp.asarray(prior, jnp.float32)), 0.01, iterations))
  assert np.isfinite(plan).all() and (plan >= 0).all()
  np.testing.assert_allclose(32 * plan.sum(1), np.ones(32), rtol=0, atol=1e-5)


def test_sinkhorn_matches_a_float64_reference():
  """At ε = 0.1 plain float64 Sinkhorn-Knopp on exp(S/ε) is safe: the plans agree."""
  rng = np.random.default_rng(0)
  scores, prior = _scores(rng, 12, 40), rng.dirichlet(np.ones(40))
  kernel = np.exp(scores.astype(np.float64) / 0.1)
  u, v = np.ones(12), np.ones(40)
  for _ in range(5000):
    u = (1 / 12) / (kernel @ v)
    v = prior / (kernel.T @ u)
  expected = u[:, None] * kernel * v[None, :]
  plan = sinkhorn_log(jnp.asarray(scores), jnp.log(jnp.asarray(prior, jnp.float32)), 0.1, 200)
  np.testing.assert_allclose(np.asarray(plan), expected, rtol=1e-4, atol=1e-7)


def test_word_prior_counts_pieces(tiny_tokenizer):
  captions = ["a red circle.", "a red square.", "a blue circle."]
  prior = word_prior(captions, tiny_tokenizer, smoothing=0.0)
  counts = np.zeros(tiny_tokenizer.vocab_size)
  for ids in tiny_tokenizer.sp.encode(captions):
    for i in ids:
      counts[i] += 1
  np.testing.assert_allclose(prior, counts / counts.sum())
  smoothed = word_prior(captions, tiny_tokenizer, smoothing=1.0)
  assert (smoothed > 0).all() and abs(smoothed.sum() - 1) < 1e-9


def _reference_loss(image_scores, text_scores, prior, epsilon, temperature):
  """L = ½[H(Q^t, P^v) + H(Q^v, P^t)] in float64 numpy (plans from the same Sinkhorn)."""
  batch = image_scores.shape[0]
  plan = lambda s: batch * np.asarray(sinkhorn_log(jnp.asarray(s), jnp.log(jnp.asarray(prior, jnp.float32)),
                                                   epsilon, 200), np.float64)
  def log_softmax(x):
    x = x.astype(np.float64) / temperature
    return x - x.max(1, keepdims=True) - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))
  h = lambda q, s: -(q * log_softmax(s)).sum(1).mean()
  return 0.5 * (h(plan(text_scores), image_scores) + h(plan(image_scores), text_scores))


def test_swapped_prediction_loss_and_gradient():
  rng = np.random.default_rng(1)
  image_scores, text_scores = _scores(rng, 16, 60), _scores(rng, 16, 60)
  prior = rng.dirichlet(np.ones(60))
  log_prior = jnp.log(jnp.asarray(prior, jnp.float32))
  loss, metrics = assignment_loss(jnp.asarray(image_scores), jnp.asarray(text_scores), log_prior, 0.05, 0.1)
  np.testing.assert_allclose(float(loss), _reference_loss(image_scores, text_scores, prior, 0.05, 0.1), rtol=1e-4)
  assert 0 <= float(metrics["assignment_agreement"]) <= 1
  # The plans are targets: the gradient is exactly that of the cross-entropies with Q held fixed,
  # (softmax(S/τ) − Q)/(2Bτ) for each side.
  grad_image = jax.grad(lambda s: assignment_loss(s, jnp.asarray(text_scores), log_prior, 0.05, 0.1)[0])(
      jnp.asarray(image_scores))
  q_text = 16 * sinkhorn_log(jnp.asarray(text_scores), log_prior, 0.05, 200)
  expected = (jax.nn.softmax(image_scores / 0.1, axis=-1) - q_text) / (2 * 16 * 0.1)
  np.testing.assert_allclose(np.asarray(grad_image), np.asarray(expected), atol=1e-5)


def test_vlap_objective_names_what_is_missing():
  objective = AssignmentObjective()
  objective.log_prior = np.log(np.full(8, 1 / 8, np.float32))
  with pytest.raises(ValueError, match="model.assignment_codes"):
    objective({"image_code": jnp.zeros((2, 4))}, {})
  with pytest.raises(ValueError, match="prepare"):
    AssignmentObjective()({}, {})
