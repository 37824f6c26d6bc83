"""Object mentions in generated descriptions (ImageInWords' faithfulness, CHAIR-style hallucination).

Captions are generated as by the `captioning` evaluator (and scored by it too), then each is read
for the object names it mentions: every name the source knows (`source.object_names`, e.g.
'red circle'), matched as whole words, with a plural 's' allowed. Against what the scene holds
(`source.scene_objects(i)`):

- `object_recall`: mentioned objects that are in the scene / objects in the scene (all scenes pooled);
- `hallucination_rate` (CHAIR-i): mentioned objects not in the scene / objects mentioned;
- `captions_hallucinating` (CHAIR-s): captions that mention at least one object not in the scene.
"""
import re

import numpy as np

from vlmjax import registry
from vlmjax.evals.captioning import Captioning, words


def mentioned(text: str, names) -> set:
  """The names (multi-word, e.g. 'red circle') that `text` mentions as whole words, plural allowed."""
  text = words(text)
  return {name for name in names if re.search(rf"\b{re.escape(words(name))}s?\b", text)}


def mention_metrics(predictions, scenes, names) -> dict:
  """predictions: texts; scenes: the object names of each text's scene -> the three rates."""
  found = present = mentions = false = hallucinating = 0
  for text, scene in zip(predictions, scenes):
    said, scene = mentioned(text, names), set(scene)
    found, present = found + len(said & scene), present + len(scene)
    mentions, false = mentions + len(said), false + len(said - scene)
    hallucinating += bool(said - scene)
  return {"object_recall": found / max(present, 1), "hallucination_rate": false / max(mentions, 1),
          "captions_hallucinating": hallucinating / max(len(predictions), 1),
          "objects_per_caption": mentions / max(len(predictions), 1)}


@registry.register("evaluator", "object_mentions")
class ObjectMentions(Captioning):
  """The `captioning` evaluator's arguments and metrics, plus the object-mention rates."""

  def run(self, ctx) -> dict:
    source = ctx.source(self.split)
    if not hasattr(source, "scene_objects"):
      raise ValueError(f"evals.{self.name}: the '{self.split}' data has no scene objects to check mentions "
                       "against (the vlmjax_shapes source has)")
    out = super().run(ctx)
    scenes = [source.scene_objects(i) for i in range(len(self.predictions))]
    rates = mention_metrics(self.predictions, scenes, source.object_names)
    out.update({f"{self.name}/{k}": float(v) for k, v in rates.items()})
    out[f"{self.name}/objects_per_scene"] = float(np.mean([len(s) for s in scenes]))
    return out
