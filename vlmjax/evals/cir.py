"""Composed image retrieval (CIR): find the target image from a reference image and a modification text.

The triplets are vlmjax_shapes' (version 1.3.0): query i is record i of `split` (its image and its
`edit` text, 'make the red circle blue.'), and its target is record i of `<split>_edited` (that scene
after the edit, drawn anew); the gallery is the first `num_examples` targets. Reports R@1/5/10 of the
target among them, by cosine similarity to the query embedding, which `query` chooses:

- 'image': the reference image's embedding alone (what the edit changes, it cannot see);
- 'text': the edit text's embedding alone;
- 'sum': the normalised sum of the two (the zero-shot baseline of the CIR papers);
- 'composed': the model's composer (`model.composer`, SPRC: query tokens reading the reference
  image and the text), trained on the train split's triplets (`objectives.composed_retrieval`);
- 'edited_caption': CIReVL's pipeline with a perfect captioner: the reference's own caption edited by
  the dataset's grammar (`shapes.edit_caption`, standing for CIReVL's LLM), embedded as text;
- 'generated_caption': CIReVL's pipeline, training-free: the reference captioned by the VLM in
  `captioner` (a run or bundle), that caption edited the same way, embedded as text. Also reports
  the captioner's CIDEr on the references;
- 'pseudo_sentence': ISA's asymmetric query: the model's light student (`model.pseudo_words`) writes
  the reference as pseudo-words, and the text tower embeds them followed by the edit's tokens
  ('[s1..sK] make the red circle blue.'); the gallery stays the large image tower's;
- 'pseudo_image': the pseudo-sentence alone, no edit (the student's analogue of 'image').
"""
import dataclasses

import numpy as np

from vlmjax import registry
from vlmjax.evals.retrieval import recall_at_k

QUERIES = ("image", "text", "sum", "composed", "edited_caption", "generated_caption", "pseudo_sentence",
           "pseudo_image")
RAW_IMAGE_QUERIES = ("composed", "pseudo_sentence", "pseudo_image")  # the model reads the reference itself


def l2(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@registry.register("evaluator", "cir")
class ComposedRetrieval:

  def __init__(self, name: str, split: str = "test", num_examples: int = 1000, query: str = "sum",
               captioner: str = "", max_new_tokens: int = 40):
    if query not in QUERIES:
      raise ValueError(f"evals.{name}.query must be one of {', '.join(QUERIES)}, got '{query}'")
    if (query == "generated_caption") != bool(captioner):
      raise ValueError(f"evals.{name}: 'captioner' (a VLM run or bundle) goes with query 'generated_caption', "
                       "and only with it")
    self.name, self.split, self.num_examples, self.query = name, split, num_examples, query
    self.captioner, self.max_new_tokens = captioner, max_new_tokens
    self.splits = (split, f"{split}_edited")

  def check(self, source):
    if not hasattr(source, "edit_of"):
      raise ValueError(f"evals.{self.name}: the data has no composed-retrieval edits (vlmjax_shapes has them "
                       "from version 1.3.0)")

  def generated_captions(self, ctx, count: int) -> tuple[list[str], float]:
    """The captioner's captions of the first `count` reference images, and its CIDEr on them."""
    from vlmjax.evals.captioning import Captioning
    from vlmjax.run import open_run
    loaded = open_run(self.captioner).load()
    embedder = type(ctx.embedder)(loaded.model, loaded.params, loaded.experiment.mesh, ctx.batch_size,
                                  loaded.experiment.rules)
    captioner_ctx = dataclasses.replace(ctx, input_config=loaded.config.input, tokenizer=loaded.tokenizer,
                                        embedder=embedder, progress="")
    captioning = Captioning(f"{self.name}_captioner", self.split, count, self.max_new_tokens)
    metrics = captioning.run(captioner_ctx)
    return captioning.predictions, metrics[f"{self.name}_captioner/CIDEr"]

  def run(self, ctx) -> dict:
    if self.query.startswith("pseudo_") and not getattr(ctx.embedder.model, "pseudo_words", None):
      raise ValueError(f"evals.{self.name}: query '{self.query}' needs the model's pseudo-word encoder: set "
                       "model.pseudo_words")
    source, targets = ctx.source(self.split), ctx.source(f"{self.split}_edited")
    self.check(source)
    count = min(self.num_examples, len(source), len(targets)) if self.num_examples > 0 else len(targets)
    gallery, kept = [], []
    _, batches = ctx.batches(f"{self.split}_edited", limit=count)
    for batch in batches:
      gallery.append(ctx.embedder.embed_images(batch["image"]))
      kept.extend(int(i) for i in batch["index"])
    if kept != list(range(count)):
      raise ValueError(f"evals.{self.name}: only {len(kept)} of the first {count} records of "
                       f"'{self.split}_edited' could be read; queries and targets would not line up")
    edits = [source.edit_of(i) for i in range(count)]
    out = {}
    if self.query in ("image", "sum", *RAW_IMAGE_QUERIES):
      images = []
      _, batches = ctx.batches(self.split, limit=count)
      for batch in batches:
        images.append(batch["image"] if self.query in RAW_IMAGE_QUERIES else ctx.embedder.embed_images(batch["image"]))
      queries = np.concatenate(images)
      if len(queries) != count:
        raise ValueError(f"evals.{self.name}: only {len(queries)} of the first {count} records of "
                         f"'{self.split}' could be read")
      if self.query == "composed":
        queries = ctx.embedder.embed_composed(queries, ctx.tokenize(edits))
      if self.query == "pseudo_sentence":
        queries = ctx.embedder.embed_pseudo_composed(queries, ctx.tokenize(edits))
      if self.query == "pseudo_image":
        queries = ctx.embedder.embed_pseudo_sentences(queries)
      if self.query == "sum":
        queries = l2(l2(queries) + l2(ctx.embedder.embed_texts(ctx.tokenize(edits))))
    elif self.query == "text":
      queries = ctx.embedder.embed_texts(ctx.tokenize(edits))
    else:
      from vlmjax.data.shapes import edit_caption
      if self.query == "edited_caption":
        captions = [source[i]["caption"] for i in range(count)]
      else:
        captions, out[f"{self.name}/captioner_CIDEr"] = self.generated_captions(ctx, count)
      queries = ctx.embedder.embed_texts(ctx.tokenize([edit_caption(c, e) for c, e in zip(captions, edits)]))
    recall = recall_at_k(l2(queries) @ l2(np.concatenate(gallery)).T)
    out.update({f"{self.name}/R@{k}": r for k, r in recall.items()})
    out[f"{self.name}/queries"] = count
    return out
