"""Label-free self-training against an open vocabulary (S3A, Zhang et al. 2023).

No annotation is read. The image embedding is classified over a broad vocabulary's text embeddings
(C names, most of them absent from the data), against two pseudo-labels per image:

- structural: its cluster's vote (`python -m vlmjax.pseudo_label`, the record's `pseudo_label`),
  so that images that look alike are pulled to one name;
- individual: the name an EMA teacher (the params' moving average, `optimizer.ema_decay`) puts
  nearest the same image, the teacher's outputs given by the train step (`teacher_keys`).

The vocabulary's embeddings come from the run the pseudo-labels came from (`workdir`) and stay
fixed: S3A trains the image side only, so configs freeze the text tower (`optimizer.frozen`).
"""
import jax
import jax.numpy as jnp
import numpy as np

from vlmjax import batch_spec, registry

# The cluster-voted vocabulary index of a train record (-1: none), from `data.pseudo_label_file`.
PSEUDO_LABEL = batch_spec.Field(
    "pseudo_label", lambda inp: (), "int32", make=lambda example, shape: example.record.get("pseudo_label", -1),
    draw=lambda rng, n, inp, vocab, batch: rng.integers(-1, 8, n).astype(np.int32))


def vocabulary_loss(image_embeds, class_embeds, labels, temperature: float):
  """Cross-entropy of the images' classification over the vocabulary.

  image_embeds [B, E], class_embeds [C, E] (L2-normalised), labels int [B] (< 0: no label, left out),
  τ -> [], the mean of −log softmax_c(u_i · w_c / τ)[labels_i] over labelled images (0 if none).
  """
  logits = jnp.einsum("be,ce->bc", image_embeds, class_embeds, preferred_element_type=jnp.float32) / temperature
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  chosen = jnp.take_along_axis(log_probs, jnp.maximum(labels, 0)[:, None], axis=1)[:, 0]
  weights = (labels >= 0).astype(jnp.float32)
  return -(chosen * weights).sum() / jnp.maximum(weights.sum(), 1.0)


class S3aObjective:
  """structural_weight · CE(student, cluster vote) + individual_weight · CE(student, EMA teacher's
  nearest name), both over `vocabulary` at temperature τ (`vocabulary_loss`)."""
  batch_fields = (PSEUDO_LABEL,)
  teacher_keys = ("image_embeds",)  # the train step adds `teacher_image_embeds` [B, E] to the batch

  def __init__(self, workdir: str = "", vocabulary="shapes_broad", temperature: float = 0.01,
               structural_weight: float = 1.0, individual_weight: float = 1.0):
    self.temperature = temperature
    self.structural_weight, self.individual_weight = structural_weight, individual_weight
    self.class_embeds = None
    if workdir:
      from vlmjax.pseudo_label import run_text_embeddings  # the labelling tool's embedding, so both agree
      self.class_embeds = run_text_embeddings(workdir, vocabulary)

  def __call__(self, outputs, batch, step=None):
    del step
    if self.class_embeds is None:
      raise ValueError("objectives.s3a: set workdir (the run whose text tower embeds the vocabulary)")
    classes = jnp.asarray(self.class_embeds)
    student = outputs["image_embeds"]
    teacher_labels = jnp.argmax(batch["teacher_image_embeds"] @ classes.T, axis=-1)
    structural = vocabulary_loss(student, classes, batch["pseudo_label"], self.temperature)
    individual = vocabulary_loss(student, classes, teacher_labels, self.temperature)
    predicted = jnp.argmax(student @ classes.T, axis=-1)
    labelled = batch["pseudo_label"] >= 0
    metrics = {"structural": structural, "individual": individual,
               "agrees_with_vote": jnp.sum((predicted == batch["pseudo_label"]) & labelled) / jnp.maximum(labelled.sum(), 1),
               "agrees_with_teacher": jnp.mean(predicted == teacher_labels)}
    return self.structural_weight * structural + self.individual_weight * individual, metrics


registry.register("objective", "s3a")(S3aObjective)
