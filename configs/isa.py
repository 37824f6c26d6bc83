"""Zero-shot composed image retrieval with a light query encoder (ISA): an image written as a sentence
of pseudo-words, distilled from the frozen image tower on images alone.

  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip   # first, the towers
  python -m vlmjax.train --config configs/isa.py --workdir workdirs/isa

The towers, projections and temperature of the configs/clip.py run, all frozen; only the student
trains (`model.pseudo_words`, vlmjax/models/pseudo_words.py): a 1-block ViT of width 64 whose patch
tokens 4 learned queries read (the adaptive token learner), each query giving one pseudo-word in the
text tower's token-embedding space. The loss (`objectives.isa`): InfoNCE of the pseudo-sentence's
text embedding against the large image tower's embeddings of the batch's images, plus each pair's
own cosine alignment; no caption and no triplet is read. Evaluated with the `cir` evaluator on
`test`: the query is the student's pseudo-words followed by the edit's tokens through the frozen
text tower, the gallery the large image tower's embeddings (`pseudo_sentence`); also the
pseudo-sentence alone (`pseudo_image`) and the zero-shot sum of the same towers (`sum`). ISA's
claim: this asymmetric query beats the zero-shot sum, with a query encoder far smaller than the
gallery's. Not reproduced here: the pseudo-words carry the image (`pseudo_image` near the large
tower's `image` query) but the frozen text tower composes them with an edit no better than the sum
(docs/results.md).
"""
import os

from vlmjax.config import load_file

CLIP_WORKDIR = "workdirs/clip"
STEPS = 500


def get_config(arg=None):
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  c.total_steps = STEPS
  c.init = dict(workdir=arg or CLIP_WORKDIR, params="^(image|text|logit_scale)")
  c.model.pseudo_words = dict(num_words=4, depth=1, num_heads=2,
                              student=dict(width=64, depth=1, mlp_dim=256, num_heads=2, patch_size=8, stem="conv"))
  c.optimizer.frozen = "^(?!pseudo_words/)"  # everything but the student
  c.objectives = dict(isa=dict(weight=1.0, local_weight=1.0))
  shapes = dict(name="vlmjax_shapes")
  c.evals = {f"cir_{q}": dict(type="cir", split="test", num_examples=1000, query=q, data=shapes)
             for q in ("pseudo_sentence", "pseudo_image", "sum")}
  return c
