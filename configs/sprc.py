"""Composed image retrieval, trained (SPRC): query tokens that read the reference image and the
modification text, contrasted with the target image.

  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip   # first, the towers
  python -m vlmjax.train --config configs/sprc.py --workdir workdirs/sprc

The towers and projections of the configs/clip.py run; a composer (`model.composer`: 4 query tokens
before the text's token states, 2 blocks with cross-attention to the reference image's tokens,
vlmjax/models/composer.py) trains with the text tower on the train split's triplets
(`vlmjax_shapes_cir`: reference image, edit text, edited scene), the image tower and its projection
frozen so the targets keep CLIP's embedding. The loss: InfoNCE of queries against the batch's target
images (`objectives.composed_retrieval`). Evaluated with the `cir` evaluator on `test`, against the
zero-shot queries of the same towers (configs/evals/cir.py on workdirs/clip). SPRC's claim: a
trained composition of image and text beats the zero-shot sum by far. Results: docs/results.md.
"""
import os

from vlmjax.config import load_file

CLIP_WORKDIR = "workdirs/clip"


def get_config(arg=None):
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  c.data.name = "vlmjax_shapes_cir"
  c.init = dict(workdir=arg or CLIP_WORKDIR, params="^(image|text|logit_scale)")
  c.model.composer = dict(width=128, depth=2, num_heads=4, num_queries=4)
  c.optimizer.frozen = "^image|logit_scale"
  c.objectives = dict(composed_retrieval=dict(weight=1.0))
  shapes = dict(name="vlmjax_shapes")
  c.evals = {f"cir_{q}": dict(type="cir", split="test", num_examples=1000, query=q, data=shapes)
             for q in ("composed", "sum")}
  return c
