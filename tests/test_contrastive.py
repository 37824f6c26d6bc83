"""The CLIP softmax objective (docs/objectives.md): loss value, gradients, and the temperature projection."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import single_device_mesh
from vlmjax import experiment, sharding, trainer
from vlmjax.objectives.contrastive import MAX_LOGIT_SCALE, ClipObjective, clip_loss

LN100 = float(np.log(100.0))


def _normalised(rng, n, d):
  x = rng.standard_normal((n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _logsumexp(x, axis):
  m = x.max(axis=axis, keepdims=True)
  return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def reference_loss(u, v, theta):
  """L = ½[CE(s·U Vᵀ, I) + CE(s·V Uᵀ, I)], s = exp θ, in float64 numpy."""
  u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
  logits = np.exp(theta) * u @ v.T
  ce = lambda l: np.mean(_logsumexp(l, axis=1) - np.diag(l))
  return 0.5 * (ce(logits) + ce(logits.T))


def reference_grads(u, v, theta):
  """Analytic dL/dθ, dL/dU, dL/dV in float64 numpy."""
  u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
  b = u.shape[0]
  s = np.exp(theta)
  logits = s * u @ v.T
  rows = np.exp(logits - _logsumexp(logits, axis=1)[:, None])   # softmax over texts, per image
  cols = np.exp(logits - _logsumexp(logits, axis=0)[None, :])   # softmax over images, per text
  d_logits = 0.5 * ((rows - np.eye(b)) + (cols - np.eye(b))) / b
  return (d_logits * logits).sum(), s * d_logits @ v, s * d_logits.T @ u


@pytest.mark.parametrize("batch,dim,theta", [(8, 16, float(np.log(1 / 0.07))), (32, 64, 0.3), (5, 3, 4.6), (64, 8, 4.6)])
def test_clip_loss_matches_numpy_reference(batch, dim, theta):
  rng = np.random.default_rng(batch)
  u, v = _normalised(rng, batch, dim), _normalised(rng, batch, dim)
  # Correlate the pairs a little so the loss is not just log(B).
  v = u + 0.5 * v
  v /= np.linalg.norm(v, axis=1, keepdims=True)
  u, v = u.astype(np.float32), v.astype(np.float32)  # the reference sees the same (rounded) inputs
  got = clip_loss(jnp.asarray(u), jnp.asarray(v), jnp.float32(theta))
  assert got.dtype == jnp.float32
  # atol only matters for the nearly-solved case (loss ~1e-4 at s = 100).
  np.testing.assert_allclose(float(got), reference_loss(u, v, theta), rtol=1e-5, atol=1e-8)


def test_clip_loss_averages_both_directions():
  """Both directions count: a batch where image->text is perfect but text->image is not gives
  the average of the two cross-entropies, not just one of them."""
  u = np.eye(3)
  v = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.0, 0.96, 0.28]])  # text 2 is closer to image 1 than 2
  theta = 2.0
  got = float(clip_loss(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32), jnp.float32(theta)))
  logits = np.exp(theta) * u @ v.T
  i2t = np.mean(_logsumexp(logits, 1) - np.diag(logits))
  t2i = np.mean(_logsumexp(logits, 0) - np.diag(logits))
  assert abs(i2t - t2i) > 1e-2  # the two directions differ, so the check below is informative
  np.testing.assert_allclose(got, 0.5 * (i2t + t2i), rtol=1e-5)


def test_clip_loss_gradient_wrt_logit_scale():
  rng = np.random.default_rng(1)
  u, v = _normalised(rng, 16, 32), _normalised(rng, 16, 32)
  v = u + v
  v /= np.linalg.norm(v, axis=1, keepdims=True)
  for theta in (0.0, 1.5, float(np.log(1 / 0.07)), 4.0):
    got = float(jax.grad(clip_loss, argnums=2)(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32),
                                               jnp.float32(theta)))
    analytic, _, _ = reference_grads(u, v, theta)
    eps = 1e-5
    finite_diff = (reference_loss(u, v, theta + eps) - reference_loss(u, v, theta - eps)) / (2 * eps)
    np.testing.assert_allclose(analytic, finite_diff, rtol=1e-6, atol=1e-9)  # the reference itself
    np.testing.assert_allclose(got, analytic, rtol=1e-4, atol=1e-6)


def test_clip_loss_gradient_wrt_embeddings():
  rng = np.random.default_rng(2)
  u, v = _normalised(rng, 12, 24), _normalised(rng, 12, 24)
  theta = 2.5
  g_u, g_v = jax.grad(clip_loss, argnums=(0, 1))(
      jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32), jnp.float32(theta))
  _, ref_u, ref_v = reference_grads(u, v, theta)

  def jax_reference(u, v, theta):  # the formula written plainly, differentiated by jax in float64
    logits = jnp.exp(theta) * u @ v.T
    ce = lambda l: jnp.mean(jax.nn.logsumexp(l, axis=1) - jnp.diag(l))
    return 0.5 * (ce(logits) + ce(logits.T))

  with jax.enable_x64(True):
    x64_u, x64_v = jax.grad(jax_reference, argnums=(0, 1))(
        jnp.asarray(u, jnp.float64), jnp.asarray(v, jnp.float64), jnp.float64(theta))
    assert x64_u.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(x64_u), ref_u, rtol=1e-9, atol=1e-12)  # two references agree
  np.testing.assert_allclose(np.asarray(x64_v), ref_v, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(np.asarray(g_u), np.asarray(x64_u), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g_v), np.asarray(x64_v), rtol=1e-4, atol=1e-6)


def test_max_logit_scale_is_ln_100():
  assert MAX_LOGIT_SCALE == pytest.approx(LN100)


@pytest.mark.parametrize("theta,expected", [(-1.0, 0.0), (2.0, 2.0), (7.0, LN100)])
def test_project_params_clips_logit_scale(theta, expected):
  other = {"kernel": jnp.full((2, 2), 7.0), "bias": jnp.full((2,), -1.0)}
  params = {"logit_scale": jnp.float32(theta), "logit_bias": jnp.float32(-10.0), "image": other}
  out = ClipObjective().project_params(params)
  assert float(out["logit_scale"]) == pytest.approx(expected, abs=1e-6)
  # Nothing else is touched (in particular not logit_bias, nor values outside [0, ln 100]).
  assert float(out["logit_bias"]) == -10.0
  np.testing.assert_array_equal(out["image"]["kernel"], other["kernel"])
  np.testing.assert_array_equal(out["image"]["bias"], other["bias"])


# --- through the trainer ------------------------------------------------------------------------

VOCAB = 64


def _random_batch(rng, batch_size, image_size=32, text_len=16):
  images = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype(np.float32)
  lengths = rng.integers(3, text_len + 1, batch_size)
  texts = rng.integers(4, VOCAB, (batch_size, text_len)).astype(np.int32)
  texts[:, 0] = 2
  texts[np.arange(batch_size), lengths - 1] = 3
  texts[np.arange(text_len)[None, :] >= lengths[:, None]] = 0
  return {"image": images, "text": texts}


def _setup(config, mesh):
  built = experiment.build(config, VOCAB, mesh=mesh)
  state, shardings = built.init_state()
  return built.model, built.tx, state, built.train_step(shardings)


def test_train_step_keeps_logit_scale_in_range_with_huge_learning_rate(make_tiny_config):
  config = make_tiny_config(**{"optimizer.learning_rate": 1.0, "optimizer.warmup_steps": 0,
                               "total_steps": 100})
  mesh = single_device_mesh()
  _, _, state, step = _setup(config, mesh)
  assert float(state["params"]["logit_scale"]) == pytest.approx(np.log(1 / 0.07), rel=1e-6)
  rng = np.random.default_rng(0)
  thetas = []
  for _ in range(6):
    batch = sharding.global_batch(_random_batch(rng, config.batch_size), mesh)
    with jax.set_mesh(mesh):
      state, metrics = step(state, batch)
    theta = float(state["params"]["logit_scale"])
    thetas.append(theta)
    assert np.isfinite(float(metrics["loss"]))
    assert 0.0 <= theta <= np.float32(LN100), thetas
    # The reported scale is exp of the θ used in the forward pass, which was in range too.
    assert 1.0 <= float(metrics["clip/logit_scale"]) <= 100.0 + 1e-3
  # With lr = 1 Adam moves θ by ~1 per step, so within 6 steps it reaches a bound: the projection
  # must have been active (else this test could not tell a missing clamp from a lucky trajectory).
  assert any(t in (0.0, float(np.float32(LN100))) for t in thetas), thetas


def test_logit_scale_is_not_weight_decayed(make_tiny_config):
  """With zero gradients AdamW's only update is decay: -lr·wd·p. θ (and biases, norms) must get
  exactly zero, while matrices get the decay."""
  config = make_tiny_config(**{"optimizer.learning_rate": 0.5, "optimizer.weight_decay": 0.1,
                               "optimizer.warmup_steps": 0, "total_steps": 100})
  _, tx, state, _ = _setup(config, single_device_mesh())
  params = jax.device_get(state["params"])
  updates = jax.jit(lambda p: tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0])(params)
  assert float(updates["logit_scale"]) == 0.0
  assert float(updates["logit_bias"]) == 0.0
  flat = {trainer.path_str(p): (np.asarray(x), np.asarray(u)) for (p, x), u in zip(
      jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(updates))}
  decayed = [k for k, (x, u) in flat.items() if np.any(u != 0)]
  assert "image_proj/kernel" in decayed and "text_proj/kernel" in decayed
  kernel, update = flat["image_proj/kernel"]
  lr = float(trainer.make_optimizer(config.optimizer, config.total_steps)[1](0))
  np.testing.assert_allclose(update, -lr * 0.1 * kernel, rtol=1e-5, atol=1e-8)
  for key, (x, u) in flat.items():
    if x.ndim < 2:
      assert np.all(u == 0), f"{key} (ndim {x.ndim}) is weight-decayed"
