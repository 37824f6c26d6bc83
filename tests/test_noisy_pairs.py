"""Noisy image–caption pairs: the caption-noise transform (`data.caption_noise`), ALIGN's label
smoothing, and NEVLP's noise-adaptive weighting with its per-record state in the train state."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import sigterm_after_step, tiny_config
from vlmjax import experiment
from vlmjax.config import ConfigError
from vlmjax.data import caption_noise, mixture, pipeline
from vlmjax.objectives.contrastive import clip_loss
from vlmjax.objectives.noise_adaptive import clean_probability, fit_two_gaussians, weighted_clip_loss
from vlmjax.run import read_metrics
from vlmjax.train import train


def _pairs(seed, batch=12, dim=16):
  rng = np.random.default_rng(seed)
  l2 = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  u = l2(rng.standard_normal((batch, dim)))
  v = l2(u + 0.7 * rng.standard_normal((batch, dim)))
  return u.astype(np.float32), v.astype(np.float32)


def _log_softmax(x):
  m = x.max(axis=1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def reference_smoothed(u, v, theta, eps, weights=None):
  """float64 numpy: value and (dL/dU, dL/dV) of ½ Σ_i w_i [CE_i(rows) + CE_i(cols)] / Σ w with
  targets (1 − ε)·onehot + ε/B, by the analytic gradient softmax − target."""
  u, v = np.float64(u), np.float64(v)
  b = u.shape[0]
  w = np.ones(b) if weights is None else np.float64(weights)
  s = np.exp(theta)
  logits = s * u @ v.T
  target = (1 - eps) * np.eye(b) + eps / b
  rows, cols = _log_softmax(logits), _log_softmax(logits.T)
  value = 0.5 * (w @ -(target * rows).sum(1) + w @ -(target * cols).sum(1)) / w.sum()
  d_rows = w[:, None] * (np.exp(rows) - target)
  d_cols = w[:, None] * (np.exp(cols) - target)
  d_logits = 0.5 * (d_rows + d_cols.T) / w.sum()
  return value, s * d_logits @ v, s * d_logits.T @ u


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothed_clip_loss_matches_numpy(eps):
  u, v = _pairs(0)
  theta = 2.3
  value, grads = jax.value_and_grad(clip_loss, argnums=(0, 1))(u, v, np.float32(theta), eps)
  want, want_u, want_v = reference_smoothed(u, v, theta, eps)
  np.testing.assert_allclose(float(value), want, rtol=1e-5)
  np.testing.assert_allclose(grads[0], want_u, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grads[1], want_v, rtol=1e-4, atol=1e-6)
  if eps:
    assert abs(float(value) - float(clip_loss(u, v, np.float32(theta)))) > 1e-3  # smoothing changes it


def test_weighted_clip_loss_matches_numpy_and_ignores_weight_gradients():
  u, v = _pairs(1)
  weights = np.random.default_rng(2).uniform(0, 1, len(u)).astype(np.float32)
  loss = lambda u, v, w: weighted_clip_loss(u, v, np.float32(1.7), w)
  value, (g_u, g_v, g_w) = jax.value_and_grad(loss, argnums=(0, 1, 2))(u, v, weights)
  want, want_u, want_v = reference_smoothed(u, v, 1.7, 0.0, weights)
  np.testing.assert_allclose(float(value), want, rtol=1e-5)
  np.testing.assert_allclose(g_u, want_u, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g_v, want_v, rtol=1e-4, atol=1e-6)
  assert not np.any(g_w)  # the weights are a statistic, not a way out of the loss
  np.testing.assert_allclose(float(loss(u, v, np.ones(len(u), np.float32))),
                             float(clip_loss(u, v, np.float32(1.7))), rtol=1e-6)


def reference_em(values, iterations, floor=5e-4):
  """A plain float64 EM for a 1-D two-Gaussian mixture, started as documented."""
  x = (values - values.min()) / (values.max() - values.min())
  mu, var = x.mean(), max(x.var(), floor)
  means, variances, mixing = np.array([mu - np.sqrt(var), mu + np.sqrt(var)]), np.array([var, var]), np.full(2, 0.5)
  for _ in range(iterations):
    density = mixing * np.exp(-0.5 * (x[:, None] - means) ** 2 / variances) / np.sqrt(2 * np.pi * variances)
    resp = density / density.sum(1, keepdims=True)
    total = resp.sum(0)
    means = (resp * x[:, None]).sum(0) / total
    variances = np.maximum((resp * (x[:, None] - means) ** 2).sum(0) / total, floor)
    mixing = total / len(x)
  return x, means, variances, mixing


def test_mixture_fit_matches_numpy_em_and_finds_the_noisy_mode():
  rng = np.random.default_rng(3)
  clean, noisy = rng.normal(1.0, 0.3, 140), rng.normal(4.0, 0.5, 60)
  values = np.concatenate([clean, noisy, rng.normal(9.0, 1.0, 50)])  # the last 50: not seen yet
  seen = np.arange(len(values)) < 200
  _, means, variances, mixing = fit_two_gaussians(jnp.float32(values), jnp.asarray(seen), iterations=10)
  x, want_means, want_variances, want_mixing = reference_em(values[:200], 10)
  np.testing.assert_allclose(means, want_means, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(variances, want_variances, rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(mixing, want_mixing, rtol=1e-4)
  np.testing.assert_allclose(mixing, [0.7, 0.3], atol=0.02)  # it found the two groups
  p = np.asarray(clean_probability(jnp.float32(values[:200]), jnp.float32(values), jnp.asarray(seen)))
  density = want_mixing * np.exp(-0.5 * (x[:, None] - want_means) ** 2 / want_variances) / np.sqrt(want_variances)
  np.testing.assert_allclose(p, density[:, 0] / density.sum(1), rtol=1e-3, atol=1e-5)
  assert p[:140].mean() > 0.95 and p[140:].mean() < 0.05


def test_caption_noise_swaps_a_fraction_of_texts_keeping_images(tiny_source):
  noisy = caption_noise.NoisyCaptions(tiny_source, 0.4, seed=5)
  again = caption_noise.NoisyCaptions(tiny_source, 0.4, seed=5)
  flags = []
  for i in range(len(tiny_source)):
    record, own = noisy[i], tiny_source[i]
    assert (record["caption"], record["caption_noisy"]) == (again[i]["caption"], again[i]["caption_noisy"])
    np.testing.assert_array_equal(record["image"], own["image"])
    assert record["label"] == own["label"]
    partner = noisy.partner(i)
    flags.append(record["caption_noisy"])
    if record["caption_noisy"]:
      assert partner != i
      other = tiny_source[partner]
      assert record["caption"] == other["caption"]
      assert record["negative_captions"] == other["negative_captions"]
      assert record["long_caption"] == other["long_caption"]
    else:
      assert record["caption"] == own["caption"]
  n = len(flags)
  assert abs(np.mean(flags) - 0.4) < 3 * np.sqrt(0.4 * 0.6 / n), np.mean(flags)
  other_seed = caption_noise.NoisyCaptions(tiny_source, 0.4, seed=6)
  assert [other_seed[i]["caption_noisy"] for i in range(n)] != flags
  assert noisy.class_names == tiny_source.class_names  # the rest is the source's own


def test_caption_noise_is_applied_to_the_train_source_only_when_asked(tiny_data_dir):
  config = tiny_config(tiny_data_dir)
  assert not isinstance(mixture.train_source(config.data, 0), caption_noise.NoisyCaptions)
  config.data.caption_noise = 0.3
  assert isinstance(mixture.train_source(config.data, 0), caption_noise.NoisyCaptions)
  config.data.caption_noise = 1.5
  with pytest.raises(ConfigError, match="data.caption_noise"):
    experiment.check(config, devices=jax.devices()[:1])


def test_train_examples_carry_their_record_index(tiny_source, tiny_tokenizer):
  from vlmjax import batch_spec
  preprocess = pipeline.Preprocess(tiny_tokenizer, 32, 16, fields=(batch_spec.RECORD_INDEX,),
                                   input_config=tiny_config("").input)
  stream = pipeline.train_examples(tiny_source, preprocess, seed=3)
  n = len(tiny_source)
  indices = [int(stream[i]["record_index"]) for i in range(n)]
  assert sorted(indices) == list(range(n))  # an epoch: every record once, shuffled
  assert indices != list(range(n))
  for i in range(8):
    example = stream[i]
    own = tiny_tokenizer.encode([tiny_source[int(example["record_index"])]["caption"]], 16)[0]
    np.testing.assert_array_equal(example["text"], own)


def test_bad_objective_options_are_config_errors(tiny_data_dir):
  with pytest.raises(ConfigError, match="objectives.clip.*label_smoothing"):
    experiment.build_objectives(tiny_config(tiny_data_dir, objectives=dict(clip=dict(weight=1.0, label_smoothing=1.0))))
  with pytest.raises(ConfigError, match="objectives.nevlp"):
    experiment.build_objectives(tiny_config(tiny_data_dir, objectives=dict(nevlp=dict(weight=1.0, warmup_steps=-1))))


TOTAL, STOP = 8, 4


@pytest.fixture(scope="module")
def nevlp_runs(tiny_data_dir, tmp_path_factory):
  config = tiny_config(tiny_data_dir, total_steps=TOTAL, objectives=dict(nevlp=dict(weight=1.0, warmup_steps=2)),
                       mesh=dict(data=1, fsdp=-1, tensor=1), **{"data.caption_noise": 0.3, "checkpoint.every_steps": 100})
  workdir_a, workdir_b = str(tmp_path_factory.mktemp("nevlp_a")), str(tmp_path_factory.mktemp("nevlp_b"))
  train(config, workdir_a)
  with sigterm_after_step(STOP):
    train(config, workdir_b)
  stopped = sorted(m["step"] for m in read_metrics(workdir_b) if "loss" in m)
  train(config, workdir_b)
  return workdir_a, workdir_b, stopped


def test_nevlp_resumed_run_equals_uninterrupted_exactly(nevlp_runs):
  """The weights after the stop come from the per-record losses in the restored state: were they
  lost, the resumed steps would weight their pairs differently."""
  metrics = lambda w: {m["step"]: (m["loss"], m["nevlp/weight"], m["nevlp/clean_probability/noisy_pairs"])
                       for m in read_metrics(w) if "loss" in m}
  a, b = metrics(nevlp_runs[0]), metrics(nevlp_runs[1])
  assert nevlp_runs[2] == list(range(1, STOP + 1))
  assert sorted(b) == list(range(1, TOTAL + 1))
  assert b == a
  assert all(a[s][1] == 1.0 for s in (1, 2)) and all(a[s][1] < 1.0 for s in range(3, TOTAL + 1))


def test_nevlp_step_with_microbatches_equals_the_whole_batch(tiny_data_dir):
  """The per-record state goes through gradient caching too: the same loss, weights and new state."""
  from conftest import single_device_mesh
  from vlmjax import sharding, trainer
  config = tiny_config(tiny_data_dir, objectives=dict(nevlp=dict(weight=1.0, warmup_steps=0)))
  built = experiment.build(config, 64, mesh=single_device_mesh(), validate=False, train_examples=40)
  batch = built.synthetic_batch(64)
  batch["record_index"] = np.arange(16, dtype=np.int32) * 2
  state, shardings = built.init_state()
  stored = np.linspace(0.5, 4.0, 40).astype(np.float32)
  state["objectives"]["nevlp"] = {"loss": jnp.asarray(stored), "seen": jnp.ones((40,), jnp.int32)}
  results = []
  for count in (1, 4):
    step = trainer.make_train_step(built.model, built.objectives, built.tx, built.schedule, built.mesh, shardings,
                                   microbatches=count)
    with built.use_mesh():
      new_state, metrics = step(jax.tree.map(jnp.copy, state), sharding.global_batch(batch, built.mesh))
    results.append((jax.device_get(new_state["objectives"]["nevlp"]), jax.device_get(metrics)))
  (state_a, metrics_a), (state_b, metrics_b) = results
  np.testing.assert_allclose(metrics_b["loss"], metrics_a["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics_b["nevlp/weight"], metrics_a["nevlp/weight"], rtol=1e-5)
  np.testing.assert_allclose(state_b["loss"], state_a["loss"], rtol=1e-5)
  assert metrics_a["nevlp/weight"] < 1.0
  assert state_a["seen"].tolist() == [1] * 40
  assert not np.allclose(state_a["loss"][0:32:2], stored[0:32:2])  # this batch's records: their new losses
  np.testing.assert_array_equal(state_a["loss"][1::2], stored[1::2])  # the others untouched
  np.testing.assert_array_equal(state_a["loss"][32:], stored[32:])
