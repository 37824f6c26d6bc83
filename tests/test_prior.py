"""PRIOR token-weighted NTP: the weights, the reference LM's alignment with the captions, training."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from vlmjax.config import ConfigError
from vlmjax.data.pipeline import caption_sequence
from vlmjax.data.tokenizer import Tokenizer
from vlmjax.run import read_metrics
from vlmjax.objectives.ntp import PriorObjective, prior_weights, token_cross_entropy
from vlmjax.train import train

DECODER = dict(variant="mu", width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=2)


def test_prior_weights_have_mean_one_per_sequence_and_no_gradient():
  rng = np.random.default_rng(0)
  probs = jnp.asarray(rng.uniform(0, 1, (4, 10)), jnp.float32)
  supervised = jnp.asarray(rng.uniform(size=(4, 10)) < 0.6).at[3].set(False).at[3, 2:5].set(True)
  probs = probs.at[3].set(1.0)  # the reference is certain of every token of row 3: Σ(1 − p) = 0
  weights = np.asarray(prior_weights(probs, supervised, alpha=1.0))
  mask = np.asarray(supervised)
  assert (weights[~mask] == 0).all()
  for row in range(3):
    np.testing.assert_allclose(weights[row][mask[row]].mean(), 1.0, rtol=1e-6)
    raw = 1 - np.asarray(probs)[row][mask[row]]
    np.testing.assert_allclose(weights[row][mask[row]], raw / raw.mean(), rtol=1e-5)
  np.testing.assert_array_equal(weights[3][mask[3]], 1.0)  # the guard: plain NTP for that row
  grad = jax.grad(lambda p: (prior_weights(p, supervised) * jnp.arange(10.0)).sum())(probs)
  assert (np.asarray(grad) == 0).all()
  # α sharpens the weighting: (1 − p)^2 renormalised.
  squared = np.asarray(prior_weights(probs, supervised, alpha=2.0))[0][mask[0]]
  raw = (1 - np.asarray(probs)[0][mask[0]]) ** 2
  np.testing.assert_allclose(squared, raw / raw.mean(), rtol=1e-5)


@pytest.fixture(scope="module")
def lm_workdir(tiny_data_dir, tmp_path_factory):
  """A text-only reference LM trained by this system on the tiny captions (configs/lm_text_only.py
  in small)."""
  workdir = str(tmp_path_factory.mktemp("lm_text_only"))
  config = tiny_config(tiny_data_dir, **{"total_steps": 30, "mesh": dict(data=1, fsdp=-1, tensor=1),
                                         "model": dict(name="lm", decoder=DECODER),
                                         "objectives": {"ntp": {"weight": 1.0}},
                                         "optimizer.learning_rate": 3e-3})
  train(config, workdir)
  return workdir


def test_reference_sees_the_caption_alone(lm_workdir):
  """The reference's p(target) at each supervised VLM position is the LM's probability of that caption
  token given the caption so far, wherever the image slots are."""
  objective = PriorObjective(lm_workdir)
  tokenizer = Tokenizer.load(f"{lm_workdir}/tokenizer.model")
  texts = tokenizer.encode(["a red circle.", "two objects: a small blue star and a green square."], 16)
  batch = [caption_sequence(t, 5) for t in texts]
  batch = {k: jnp.asarray(np.stack([b[k] for b in batch])) for k in batch[0]}
  got = np.asarray(objective.reference_probs(batch))
  logits = objective.model.apply({"params": objective.params}, jnp.asarray(texts))["logits"]
  targets = np.roll(texts, -1, axis=1)
  expected = np.exp(-np.asarray(token_cross_entropy(logits, jnp.asarray(targets))))
  for row in range(2):
    supervised = np.asarray(batch["loss_weights"][row]) > 0
    count = supervised.sum()
    np.testing.assert_allclose(got[row][supervised], expected[row][:count], rtol=1e-5)
  # The reference learned the captions: on average well below uniform (log V = 4.85 nats).
  mean_nll = -np.log(got[np.asarray(batch["loss_weights"]) > 0]).mean()
  assert mean_nll < 0.75 * np.log(tokenizer.vocab_size), mean_nll


def test_prior_trains_a_vlm(lm_workdir, tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, **{
      "total_steps": 3, "mesh": dict(data=2, fsdp=2, tensor=2),
      "tokenizer.path": f"{lm_workdir}/tokenizer.model",
      "model": dict(name="vlm", image=dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2),
                    decoder=DECODER, projector=dict(kind="mlp")),
      "objectives": {"prior": {"weight": 1.0, "reference_workdir": lm_workdir}}})
  train(config, str(tmp_path))
  metrics = [m for m in read_metrics(str(tmp_path)) if "loss" in m]
  assert len(metrics) == 3 and all(np.isfinite(m["loss"]) for m in metrics)
  # Weighted tokens: the heaviest weight exceeds 1 (the mean), and the reference is far better than
  # the untrained VLM at predicting captions from text alone.
  assert all(m["prior/weight_max"] > 1.0 for m in metrics)
  assert metrics[0]["prior/reference_nll"] < metrics[0]["prior/nll"]


def test_prior_refuses_a_mismatched_tokenizer_or_reference(lm_workdir, tmp_path):
  objective = PriorObjective(lm_workdir)
  with pytest.raises(ConfigError, match="tokenizer.path"):
    objective.prepare(None, Tokenizer.train(["a b c d e f g"] * 10, 12))
  objective.prepare(None, Tokenizer.load(f"{lm_workdir}/tokenizer.model"))
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"model": {"name": "dual_encoder"}}, f)
  with pytest.raises(ConfigError, match="text-only 'lm' run"):
    PriorObjective(str(tmp_path))
  with pytest.raises(ConfigError, match="does not exist"):
    PriorObjective(str(tmp_path / "nowhere"))
