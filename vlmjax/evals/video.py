"""Zero-shot classification of clips (X-CLIP's protocol): each class's prompts embedded by the text
tower, each clip by the video model (`model.name='video_clip'`), classes ranked by cosine.

With video-specific prompts (`model.prompts`) a class embedding is computed per clip: each prompt
conditioned on the clip, averaged over the class's prompts and L2-normalised; without, it is the
same for every clip (CLIP's prompt ensembling). Clips with label < 0 (several objects) are skipped.

Class names '<object> moving <direction>' (vlmjax_shapes_video's) are also scored by part: besides
top-1/top-5 and the mean per-class recall over all classes, `direction` (the top class moves the
clip's way), `axis` (horizontally or vertically, as the clip) and `object` (the top class names the
clip's object, whatever its direction). A model that averages frames can get `axis` but not
`direction` beyond the axis: a clip and its reverse hold the same frames.

Two measures of what a model does with time: `reverse_cosine`, the mean cosine between a clip's
embedding and that of the same clip played backwards (1: the model cannot tell them apart), and
`opposite_text_cosine`, the mean cosine between the text embeddings (prompts averaged, no video
prompting) of an object moving one way and the same object moving the opposite way.
"""
import jax
import jax.numpy as jnp
import numpy as np

from vlmjax import registry, sharding
from vlmjax.data import shapes_video
from vlmjax.evals.zeroshot import accuracies
from vlmjax.models.video import VIDEO

AXIS = {"left": "horizontal", "right": "horizontal", "up": "vertical", "down": "vertical"}


def part_accuracies(predicted, labels, class_names) -> dict:
  """predicted, labels [N] class indices of '<object> moving <direction>' names -> {'direction', 'axis',
  'object'}: the fraction of clips whose prediction has the true part."""
  parts = [shapes_video.class_parts(c) for c in class_names]
  pred = [parts[int(i)] for i in predicted]
  true = [parts[int(i)] for i in labels]
  return {"direction": float(np.mean([p[1] == t[1] for p, t in zip(pred, true)])),
          "axis": float(np.mean([AXIS.get(p[1]) == AXIS.get(t[1]) for p, t in zip(pred, true)])),
          "object": float(np.mean([p[0] == t[0] for p, t in zip(pred, true)]))}


@registry.register("evaluator", "video_zeroshot")
class VideoZeroShot:

  def __init__(self, name: str, split: str = "test", num_examples: int = 0):
    self.name, self.split, self.num_examples = name, split, num_examples
    self.splits = (split,)

  def scorer(self, embedder, texts, num_classes: int):
    """A jitted (params, clips [B, T, S, S, 3]) -> scores [B, C] for `texts` [C·P, L], P prompts per class."""
    model = embedder.model
    if not hasattr(model, "prompted"):
      raise ValueError(f"evals.{self.name}: video_zeroshot needs a video model (model.name='video_clip'), "
                       f"not '{type(model).__name__}'")
    texts = jnp.asarray(texts)

    def scores(params, videos):
      clips, prompted = model.apply({"params": params}, texts, videos, method=type(model).prompted)
      classes = prompted.reshape(clips.shape[0], num_classes, -1, prompted.shape[-1]).mean(axis=2)
      classes = classes / jnp.maximum(jnp.linalg.norm(classes, axis=-1, keepdims=True), 1e-6)
      backwards = model.apply({"params": params}, videos=videos[:, ::-1])["image_embeds"]
      return jnp.einsum("be,bce->bc", clips, classes), (clips * backwards).sum(axis=-1)

    return jax.jit(scores, out_shardings=sharding.replicated(embedder.mesh))

  def run(self, ctx) -> dict:
    source, batches = ctx.batches(self.split, passthrough=("label",), limit=self.num_examples, fields=(VIDEO,))
    class_names = tuple(getattr(source, "class_names", ()) or ())
    if not class_names or not hasattr(source, "prompts"):
      raise ValueError(f"evals.{self.name}: the data names no video classes and prompts (vlmjax_shapes_video has them)")
    prompts = [source.prompts(c) for c in class_names]
    if len({len(p) for p in prompts}) != 1:
      raise ValueError(f"evals.{self.name}: every class needs as many prompts as the others")
    texts = ctx.tokenize([p for class_prompts in prompts for p in class_prompts])
    scorer = self.scorer(ctx.embedder, texts, len(class_names))
    scores, reverse, labels = [], [], []
    for batch in batches:
      keep = batch["label"] >= 0
      if keep.any():
        batch_scores, batch_reverse = ctx.embedder.run(scorer, np.asarray(batch["video"][keep], np.float32))
        scores.append(batch_scores)
        reverse.append(batch_reverse)
        labels.append(batch["label"][keep])
    if not labels:
      raise ValueError(f"evals.{self.name}: split '{self.split}' has no labelled clips")
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    out = accuracies(scores, labels, len(class_names))
    out.update(part_accuracies(scores.argmax(axis=1), labels, class_names))
    out["reverse_cosine"] = float(np.concatenate(reverse).mean())
    out["opposite_text_cosine"] = opposite_text_cosine(ctx, class_names, prompts)
    return {**{f"{self.name}/{k}": v for k, v in out.items()}, f"{self.name}/count": int(len(labels))}


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def opposite_text_cosine(ctx, class_names, prompts) -> float:
  """The mean cosine between the text embeddings (each class's prompts averaged) of '<object> moving
  d' and '<object> moving opposite(d)', over the classes whose opposite is a class too."""
  embeds = np.stack([ctx.embedder.embed_texts(ctx.tokenize(p)).mean(axis=0) for p in prompts])
  embeds = embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)
  index = {name: i for i, name in enumerate(class_names)}
  pairs = [(i, index[f"{obj} moving {OPPOSITE[d]}"]) for i, (obj, d) in
           enumerate(shapes_video.class_parts(c) for c in class_names)
           if d in OPPOSITE and f"{obj} moving {OPPOSITE[d]}" in index]
  return float(np.mean([embeds[i] @ embeds[j] for i, j in pairs])) if pairs else float("nan")
