"""Contrastive terms that align a VLM's image side with its decoder, beside NTP (docs/objectives.md).

- `cgvlm` (CG-VLM, Liu et al. 2023): InfoNCE between the image code (the mean projected image
  token, `image_code`) and the caption's code: the mean of the decoder's *input* embeddings of the
  caption's pieces. Both live in the decoder's embedding space, so with a frozen LM the projector
  learns to put images where their words are, a signal the generative loss gives only slowly.
- `sugar` (Sugar, unified generative + discriminative): InfoNCE between the decoder's last-token
  states of the image alone and of the caption alone (`image_state`, `text_state`: the VLM's
  `sequence_codes`), with the other captions of the batch and each image's hard-negative captions
  as negatives: the same decoder that captions also embeds, for retrieval.

Both are symmetric InfoNCE over L2-normalised codes at a fixed temperature τ:
L = ½[CE(UVᵀ/τ, I) + CE(VUᵀ/τ, I)], hard negatives as extra columns of their image's row only.
"""
import jax.numpy as jnp
import numpy as np

from vlmjax import registry
from vlmjax.data.tokenizer import EOS
from vlmjax.objectives.contrastive import NEGATIVE_TEXT, clip_loss, clip_loss_with_negatives


def normalize(x):
  """x [..., D] -> x / ‖x‖ along D, float32."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def caption_code(word_embeddings, targets, loss_weights, eos_id: int = EOS):
  """The mean input embedding of each caption's pieces: word_embeddings [V, D], targets [B, T],
  loss_weights [B, T] (the caption pieces are the supervised targets, less the EOS) -> [B, D]."""
  pieces = (loss_weights > 0) & (targets != eos_id)
  embedded = jnp.take(word_embeddings.astype(jnp.float32), targets, axis=0)  # [B, T, D]
  weights = pieces[..., None].astype(jnp.float32)
  return (embedded * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)


def retrieval_accuracy(image_codes, text_codes):
  """How often an image's own caption is its nearest of the batch's captions. [B, D] each -> []."""
  scores = jnp.einsum("id,jd->ij", image_codes, text_codes)
  return (jnp.argmax(scores, axis=1) == jnp.arange(scores.shape[0])).mean()


@registry.register("objective", "cgvlm")
class CgvlmObjective:
  """CG-VLM's contrastive term on the VLM's `image_code` and `word_embeddings` and the batch's
  caption targets; τ fixed (`temperature`)."""

  def __init__(self, temperature: float = 0.07):
    if not temperature > 0:
      raise ValueError(f"objectives.cgvlm.temperature {temperature} must be above 0")
    self.temperature = float(temperature)
    self.eos_id = EOS

  def prepare(self, train_source, tokenizer):
    del train_source
    self.eos_id = tokenizer.eos_id

  def __call__(self, outputs, batch, step=None):
    del step
    if "image_code" not in outputs:
      raise ValueError("objectives.cgvlm: the model gives no 'image_code' (a 'vlm' model with images)")
    images = normalize(outputs["image_code"])
    captions = normalize(caption_code(outputs["word_embeddings"], batch["targets"], batch["loss_weights"],
                                      self.eos_id))
    loss = clip_loss(images, captions, jnp.float32(-np.log(self.temperature)))
    return loss, {"retrieval_accuracy": retrieval_accuracy(images, captions)}


@registry.register("objective", "sugar")
class SugarObjective:
  """Sugar's discriminative term on the VLM's `image_state`, `text_state` and, with
  `hard_negatives`, `negative_text_states` (set `model.sequence_codes = True`); τ fixed."""
  batch_fields = (NEGATIVE_TEXT,)

  def __init__(self, temperature: float = 0.07, hard_negatives: bool = True):
    if not temperature > 0:
      raise ValueError(f"objectives.sugar.temperature {temperature} must be above 0")
    self.temperature, self.hard_negatives = float(temperature), bool(hard_negatives)

  def __call__(self, outputs, batch, step=None):
    del batch, step
    wanted = ("image_state", "text_state") + (("negative_text_states",) if self.hard_negatives else ())
    missing = [k for k in wanted if k not in outputs]
    if missing:
      raise ValueError(f"objectives.sugar: the model gives no {', '.join(missing)}; set "
                       "model.sequence_codes = True (a 'vlm' model)")
    images, texts = normalize(outputs["image_state"]), normalize(outputs["text_state"])
    scale = jnp.float32(-np.log(self.temperature))
    if self.hard_negatives:
      loss = clip_loss_with_negatives(images, texts, normalize(outputs["negative_text_states"]), scale)
    else:
      loss = clip_loss(images, texts, scale)
    return loss, {"retrieval_accuracy": retrieval_accuracy(images, texts)}
