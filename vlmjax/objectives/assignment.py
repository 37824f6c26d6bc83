"""VLAP assignment prediction (Park, Lee, Sohn, ICLR 2024; docs/objectives.md).

The frozen LM's word-embedding table W [K, D] is a fixed codebook. The image representation (mean
projected image token) and the text representation (the frozen LM's mean final hidden state over the
caption) are scored against it, S = norm(z)·norm(W)ᵀ [B, K]. Each side's scores are turned into an
assignment Q by entropic optimal transport with sample marginal 1/B and word marginal μ (a word
frequency prior from the training captions), solved by Sinkhorn in the log domain (at ε = 0.01,
exp(S/ε) overflows float32 once a cosine exceeds ~0.89), without gradient. Each side then predicts
the other's assignment (swapped prediction) with P = softmax(S/τ):

  L_map = ½[H(Q^t, P^v) + H(Q^v, P^t)],   H(Q, P) = −(1/B) Σ_b Σ_k B·Q_bk log P_bk.

The captioning loss is the `ntp` objective beside it; VLAP's total is `ntp` + 0.1 · `vlap`.
The loss is written on the global batch (one [B, K] problem); under jit with a sharded batch XLA
inserts the reductions across devices that the word marginal needs.
"""
import jax
import jax.numpy as jnp
import numpy as np

from vlmjax import registry
from vlmjax.data.tokenizer import Tokenizer


def sinkhorn_log(scores, log_prior, epsilon: float, iterations: int, warm_start: float = 10.0):
  """Entropic OT, log domain: argmax_Q Tr(Qᵀ S) + ε H(Q) with Q 1 = 1/B and Qᵀ 1 = μ.

  scores [B, K], log_prior [K] (log μ, Σμ = 1) -> plan [B, K] = exp((S + f + g)/ε), float32,
  summing to 1. Alternates the dual potentials f [B], g [K] (kept in score units, so they carry
  over between temperatures): ε-scaling starts at `warm_start`·ε and anneals geometrically to ε over
  the first quarter of the iterations (the solution is that of ε alone; the warm start only speeds
  up convergence, ~100× at ε = 0.01). A last row update at ε ends the loop (SwAV's final normalisation):
  the sample marginal then holds exactly, so each row of B·plan is a distribution even after a few
  iterations (VLAP's released setting is 3), and the word marginal holds to within the convergence.
  """
  scores = scores.astype(jnp.float32)
  batch = scores.shape[0]
  log_rows = -jnp.log(jnp.float32(batch))
  anneal = max(iterations // 4, 1)

  def update(i, potentials):
    _, g = potentials
    eps = epsilon * jnp.maximum(warm_start ** (1.0 - i / anneal), 1.0)
    f = eps * (log_rows - jax.nn.logsumexp((scores + g[None, :]) / eps, axis=1))
    g = eps * (log_prior - jax.nn.logsumexp((scores + f[:, None]) / eps, axis=0))
    return f, g

  _, g = jax.lax.fori_loop(0, iterations, update, (jnp.zeros(batch), jnp.zeros(scores.shape[1])))
  f = epsilon * (log_rows - jax.nn.logsumexp((scores + g[None, :]) / epsilon, axis=1))
  return jnp.exp((scores + f[:, None] + g[None, :]) / epsilon)


def word_prior(captions, tokenizer: Tokenizer, smoothing: float = 1.0) -> np.ndarray:
  """μ [vocab]: how often each piece occurs in `captions`, plus `smoothing` each, normalised (every
  word keeps some mass, so log μ is finite)."""
  counts = np.full(tokenizer.vocab_size, float(smoothing))
  for ids in tokenizer.pieces(list(captions)):
    np.add.at(counts, np.asarray(ids, np.int64), 1.0)
  return counts / counts.sum()


def cosine_scores(z, table):
  """z [B, D], table [K, D] -> cosine similarities [B, K], float32."""
  normalize = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
  return jnp.einsum("bd,kd->bk", normalize(z.astype(jnp.float32)), normalize(table.astype(jnp.float32)))


def assignment_loss(image_scores, text_scores, log_prior, epsilon: float = 0.01, temperature: float = 0.01,
                    iterations: int = 500):
  """Swapped assignment prediction. scores [B, K] each -> (loss [], metrics)."""
  batch = image_scores.shape[0]
  plan = lambda s: jax.lax.stop_gradient(batch * sinkhorn_log(jax.lax.stop_gradient(s), log_prior,
                                                              epsilon, iterations))
  q_image, q_text = plan(image_scores), plan(text_scores)  # rows sum to 1
  log_p = lambda s: jax.nn.log_softmax(s / temperature, axis=-1)
  image_predicts_text = -(q_text * log_p(image_scores)).sum(-1).mean()
  text_predicts_image = -(q_image * log_p(text_scores)).sum(-1).mean()
  loss = 0.5 * (image_predicts_text + text_predicts_image)
  agreement = (jnp.argmax(q_image, -1) == jnp.argmax(q_text, -1)).mean()
  return loss, {"image_predicts_text": image_predicts_text, "text_predicts_image": text_predicts_image,
                "assignment_agreement": agreement}


@registry.register("objective", "vlap")
class AssignmentObjective:
  """VLAP's L_map on the VLM's `image_code`, `text_code` and `word_embeddings` (set
  `model.assignment_codes = True`). μ comes from the training captions (`prepare`, called by the
  trainer before the first step): the first `prior_examples` captions, piece frequencies."""

  def __init__(self, epsilon: float = 0.01, temperature: float = 0.01, sinkhorn_iterations: int = 500,
               prior_smoothing: float = 1.0, prior_examples: int = 20000):
    self.epsilon, self.temperature, self.iterations = float(epsilon), float(temperature), int(sinkhorn_iterations)
    self.smoothing, self.prior_examples = float(prior_smoothing), int(prior_examples)
    self.log_prior = None

  def prepare(self, train_source, tokenizer: Tokenizer):
    count = min(self.prior_examples, len(train_source))
    prior = word_prior((train_source[i]["caption"] for i in range(count)), tokenizer, self.smoothing)
    self.log_prior = np.log(prior).astype(np.float32)

  def __call__(self, outputs, batch, step=None):
    del batch, step
    if self.log_prior is None:
      raise ValueError("objectives.vlap: no word prior; the trainer calls prepare(train_source, tokenizer)")
    missing = [k for k in ("image_code", "text_code", "word_embeddings") if k not in outputs]
    if missing:
      raise ValueError(f"objectives.vlap: the model gives no {', '.join(missing)}; set "
                       "model.assignment_codes = True (a 'vlm' model)")
    table = jax.lax.stop_gradient(outputs["word_embeddings"])  # a fixed codebook
    return assignment_loss(cosine_scores(outputs["image_code"], table), cosine_scores(outputs["text_code"], table),
                           self.log_prior, self.epsilon, self.temperature, self.iterations)
