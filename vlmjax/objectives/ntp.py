"""Next-token prediction: plain NTP and PRIOR's token-weighted NTP (docs/objectives.md).

`loss_weights` [B, T] float carries both the mask (0 at image, prompt and padding positions) and, for
PRIOR, per-token weights. The loss is Σ w·CE over supervised tokens divided by their count, in
float32; a position with weight 0 contributes exactly zero loss and zero gradient (a `where`, not a
multiplication, so even an infinite logit there cannot leak a NaN).
"""
import os

import jax
import jax.numpy as jnp

from vlmjax import config as config_lib, registry
from vlmjax.batch_spec import CAUSAL, IMAGE_TOKEN, PAD
from vlmjax.models.decoder import take_rows
from vlmjax.run import RunDir


def token_cross_entropy(logits, targets):
  """logits [B, T, V], targets int [B, T] -> −log softmax(logits)[target], float32 [B, T]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def ntp_loss(logits, targets, weights):
  """Σ_{w>0} w·CE / #{w>0} -> (loss [], metrics). logits [B, T, V], targets [B, T], weights [B, T]."""
  ce = token_cross_entropy(logits, targets)
  supervised = weights > 0
  count = jnp.maximum(supervised.sum(), 1)
  loss = jnp.where(supervised, weights * ce, 0.0).sum() / count
  correct = jnp.where(supervised, jnp.argmax(logits, axis=-1) == targets, False)
  return loss, {"token_accuracy": correct.sum() / count, "tokens": supervised.sum(),
                "token_nll": jnp.where(supervised, ce, 0.0).sum() / count}


@registry.register("objective", "ntp")
class NtpObjective:
  """Captioning / language-modelling loss on the batch's `targets` and `loss_weights`."""

  def __call__(self, outputs, batch, step=None):
    del step
    return ntp_loss(outputs["logits"], batch["targets"], batch["loss_weights"])


def prior_weights(reference_probs, supervised, alpha: float = 1.0, eps: float = 1e-6):
  """PRIOR's token weights. reference_probs [B, T]: the text-only reference LM's probability of each
  target; supervised bool [B, T] -> w [B, T]: (1 − p)^α renormalised to mean 1 over each row's
  supervised tokens, 0 elsewhere, stop-gradient. A row whose weights sum to ~0 (the reference is
  certain of every token) falls back to w = 1."""
  p = jax.lax.stop_gradient(reference_probs.astype(jnp.float32))
  raw = jnp.where(supervised, jnp.clip(1.0 - p, 0.0, 1.0) ** alpha, 0.0)
  count = supervised.sum(axis=1, keepdims=True).astype(jnp.float32)
  total = raw.sum(axis=1, keepdims=True)
  weights = jnp.where(total > eps * jnp.maximum(count, 1.0), raw * count / jnp.maximum(total, eps),
                      supervised.astype(jnp.float32))
  return jax.lax.stop_gradient(weights)


def load_reference_lm(workdir: str, step: int | None = None):
  """A text-only LM run's (model, params as host arrays, tokenizer proto) from its run folder."""
  run = RunDir(workdir)
  try:
    config = run.read_config()
  except FileNotFoundError:
    raise config_lib.ConfigError(f"objectives.prior.reference_workdir: '{run.file(RunDir.CONFIG)}' does not "
                                 "exist (train configs/lm_text_only.py there first)") from None
  if config.model.name != "lm":
    raise config_lib.ConfigError(f"objectives.prior.reference_workdir: '{workdir}' holds a "
                                 f"'{config.model.name}' run; the reference must be a text-only 'lm' run")
  try:
    loaded = run.load(step)
  except (ValueError, FileNotFoundError) as e:
    raise config_lib.ConfigError(f"objectives.prior.reference_workdir: {e}") from None
  return loaded.model, jax.device_get(loaded.params), loaded.tokenizer.model_proto


def text_only(tokens, values):
  """The text of decoder sequences without their image slots, moved to the front in order.
  tokens [B, T] -> (text tokens [B, T], values [B, T] reordered alike, order [B, T])."""
  is_image = tokens == IMAGE_TOKEN
  order = jnp.argsort(is_image, axis=1, stable=True)
  return take_rows(jnp.where(is_image, PAD, tokens), order), take_rows(values, order), order


@registry.register("objective", "prior")
class PriorObjective:
  """PRIOR (Chen et al. 2025): NTP with each caption token weighted by (1 − p_ref)^α, p_ref the
  probability a text-only reference LM (an 'lm' run of this system on the same captions, same
  tokenizer) gives it; weights renormalised to mean 1 per caption (docs/objectives.md).

  The reference runs inside the step on the text part of each sequence (the image slots removed, so
  it sees `BOS caption EOS` as in its own training), under stop_gradient; its params are constants of
  the step (a reference LM this system trains on captions is small).
  """

  def __init__(self, reference_workdir: str, alpha: float = 1.0, reference_step: int = -1):
    self.alpha = float(alpha)
    self.workdir = reference_workdir
    self.model, self.params, self.tokenizer_proto = load_reference_lm(
        reference_workdir, None if reference_step < 0 else reference_step)

  def prepare(self, train_source, tokenizer):
    del train_source
    if tokenizer.model_proto != self.tokenizer_proto:
      raise config_lib.ConfigError(
          f"objectives.prior: the reference LM in '{self.workdir}' uses another tokenizer; set "
          f"tokenizer.path = '{os.path.join(self.workdir, 'tokenizer.model')}'")

  def reference_probs(self, batch):
    """-> p_ref(target) [B, T] at every position of the batch's sequences (stop-gradient)."""
    text, targets, order = text_only(batch["tokens"], batch["targets"])
    kinds = jnp.where(text != PAD, CAUSAL, PAD)
    logits = self.model.apply({"params": self.params}, text, kinds)["logits"]
    probs = jnp.exp(-token_cross_entropy(logits, targets))
    rows = jnp.arange(text.shape[0])[:, None]
    return jax.lax.stop_gradient(jnp.zeros_like(probs).at[rows, order].set(probs))

  def __call__(self, outputs, batch, step=None):
    del step
    supervised = batch["loss_weights"] > 0
    probs = self.reference_probs(batch)
    weights = prior_weights(probs, supervised, self.alpha)
    loss, metrics = ntp_loss(outputs["logits"], batch["targets"], batch["loss_weights"] * weights)
    count = jnp.maximum(supervised.sum(), 1)
    metrics.update(
        nll=jnp.where(supervised, token_cross_entropy(outputs["logits"], batch["targets"]), 0.0).sum() / count,
        reference_nll=jnp.where(supervised, -jnp.log(jnp.maximum(probs, 1e-30)), 0.0).sum() / count,
        weight_max=jnp.max(weights))
    return loss, metrics
