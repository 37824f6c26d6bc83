"""Image <-> text retrieval: R@1/5/10 in both directions, with one or several captions per image.

The COCO / Flickr30k protocol: every caption of every image is a query and a candidate. Image→text:
an image's hit at k when any of its captions ranks in its top k texts. Text→image: a caption's hit
at k when its image ranks in its top k images. Ranks are by cosine similarity of the pooled
embeddings (`score='pooled'`), or by FILIP's token-wise late interaction (`score='tokens'`: an
image ranks texts by the mean over its tokens of each token's best match among the text's tokens,
a text ranks images by the mean over its valid tokens of their best image token, as FILIP's loss
scores them). A candidate tied with the right one does not push it down. Images are the first `num_examples` of the split (a
CSV/JSONL image named on several rows is one image with those captions; a TFDS `captions` field is
a list per image). `language`: the captions in that language (the record's `translations`,
`pipeline.caption_in`), the same images.
"""
import jax
import numpy as np

from vlmjax import registry
from vlmjax.data import pipeline
from vlmjax.objectives.contrastive import filip_similarities

SCORES = ("pooled", "tokens")


def multi_caption_recall(scores, text_image, ks=(1, 5, 10)) -> dict:
  """scores [N_images, N_texts]; text_image [N_texts]: the image of each text ->
  {'image_to_text': {k: fraction}, 'text_to_image': {k: fraction}}. Every image needs a text."""
  scores, text_image = np.asarray(scores), np.asarray(text_image)
  num_images = scores.shape[0]
  # Image i: the score of its best-scoring caption; its rank is how many texts score strictly higher.
  own = np.full(num_images, -np.inf)
  np.maximum.at(own, text_image, scores[text_image, np.arange(len(text_image))])
  image_rank = (scores > own[:, None]).sum(axis=1)
  right = scores[text_image, np.arange(len(text_image))]
  text_rank = (scores > right[None, :]).sum(axis=0)
  return {"image_to_text": {k: float((image_rank < k).mean()) for k in ks},
          "text_to_image": {k: float((text_rank < k).mean()) for k in ks}}


def recall_at_k(scores, ks=(1, 5, 10)) -> dict:
  """scores [N, N], the correct item of row i at column i -> {k: fraction of rows ranking it in top k}."""
  return multi_caption_recall(scores, np.arange(len(scores)), ks)["image_to_text"]


def caption_groups(source, limit: int = 0, language: str = ""):
  """-> (record indices of the images [N], captions of each [N lists]): the source's own grouping
  when it has one, else one caption per record; in `language`, each record's caption in it."""
  if language:
    indices = list(range(min(limit, len(source)) if limit > 0 else len(source)))
    records = (source[i] for i in indices)
    own = getattr(source, "caption_language", "en")
    return indices, [[] if isinstance(r, pipeline.BadRecord) else [pipeline.caption_in(r, language, own)]
                     for r in records]
  if hasattr(source, "caption_groups"):
    return source.caption_groups(limit)
  indices = list(range(min(limit, len(source)) if limit > 0 else len(source)))
  return indices, [[source[i]["caption"]] for i in indices]


def token_scores(image_tokens, text_tokens, text_mask, images_per_chunk: int = 32):
  """FILIP's two score matrices, image_tokens [N, n, E], text_tokens [M, T, E] (L2-normalised),
  text_mask [M, T] -> (image→text [N, M], text→image [N, M]), `filip_similarities` computed
  `images_per_chunk` images at a time (the [c, M, n, T] block is what memory holds)."""
  fn = jax.jit(filip_similarities)
  parts = [fn(image_tokens[i:i + images_per_chunk], text_tokens, text_mask)
           for i in range(0, len(image_tokens), images_per_chunk)]
  return tuple(np.concatenate([np.asarray(p[k]) for p in parts]) for k in (0, 1))


@registry.register("evaluator", "retrieval")
class Retrieval:
  """`score`: 'pooled' (cosine of the pooled embeddings) or 'tokens' (FILIP's late interaction)."""

  def __init__(self, name: str, split: str = "test", num_examples: int = 1000, score: str = "pooled",
               language: str = ""):
    if score not in SCORES:
      raise ValueError(f"evals.{name}.score must be one of {', '.join(SCORES)}, got '{score}'")
    self.name, self.split, self.num_examples, self.score = name, split, num_examples, score
    self.language = language
    self.splits = (split,)

  def check(self, source):
    if self.language:
      pipeline.check_languages([self.language], source, f"evals.{self.name}.language")

  def run(self, ctx) -> dict:
    source = ctx.source(self.split)
    self.check(source)
    indices, groups = caption_groups(source, self.num_examples, self.language)
    _, batches = ctx.batches(self.split, indices=indices)
    images, kept = [], []
    embed_images = ctx.embedder.embed_image_tokens if self.score == "tokens" else ctx.embedder.embed_images
    for batch in batches:
      images.append(embed_images(batch["image"]))
      kept.extend(int(i) for i in batch["index"])
    captions_of = dict(zip(indices, groups))  # a bad record's image is left out with its captions
    texts, text_image = [], []
    for image, index in enumerate(kept):
      texts.extend(captions_of[index])
      text_image.extend([image] * len(captions_of[index]))
    if not texts or any(not captions_of[i] for i in kept):
      raise ValueError(f"evals.{self.name}: split '{self.split}' has an image without a caption")
    if self.score == "tokens":
      image_to_text, text_to_image = token_scores(np.concatenate(images), *ctx.embedder.embed_text_tokens(
          ctx.tokenize(texts)))
      recall = {"image_to_text": multi_caption_recall(image_to_text, text_image)["image_to_text"],
                "text_to_image": multi_caption_recall(text_to_image, text_image)["text_to_image"]}
    else:
      scores = np.concatenate(images) @ ctx.embedder.embed_texts(ctx.tokenize(texts)).T
      recall = multi_caption_recall(scores, np.asarray(text_image))
    out = {f"{self.name}/{direction}_R@{k}": r for direction, by_k in recall.items() for k, r in by_k.items()}
    out[f"{self.name}/images"], out[f"{self.name}/texts"] = len(kept), len(texts)
    return out
