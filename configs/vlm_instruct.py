"""Instruction-mix VLM (LLaVA-style): configs/vlm_ntp.py trained on captions and visual questions
mixed half and half, at the same budget and from the same LM and image-tower runs.

  python -m vlmjax.train --config configs/lm_text_only.py --workdir workdirs/lm_text_only   # first,
  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip                   # both
  python -m vlmjax.train --config configs/vlm_instruct.py --workdir workdirs/vlm_instruct
  --config configs/vlm_instruct.py:vqa    questions only (no captions): what the captions add

A caption example is `[image] BOS caption EOS`; a question example (`vlmjax_shapes_vqa`: one of the
scene's questions, drawn per example) is `[image] BOS question answer EOS`, supervised on the
answer and its EOS only. The scene questions ask an object's colour, the number of objects, whether
a named object is there, where an object is (a 3×3 grid) and whether one object is left of / right
of / above / below another. The decoder keeps the LM run's tokenizer, trained on captions only, so
the question words it never saw ('what', '?') are spelt in small pieces.

Evaluated as every VLM row (captions, object mentions, the compositional test) plus `vqa`: every
question of the first 500 `test` scenes, answered greedily (exact match) and by likelihood among the
answers of its type (configs/evals/vqa.py runs both on any decoder run, e.g. the captioning-only
baseline). LLaVA's claim: instruction data makes the captioner follow questions; here that reads as
VQA accuracy per type above the captioning-only run's at an equal CIDEr.
Current result: reproduced for colour (74.0%) and count (89.2%), against no answer at all from the
captioning-only run; presence 56.8% and relation 43.2% stay at chance; CIDEr 199.2 against 235.5,
at half the captions (docs/results.md).
"""
import os

from vlmjax.config import load_file

VARIANTS = ("", "vqa")


def get_config(arg=None):
  if (arg or "") not in VARIANTS:
    raise ValueError(f"configs/vlm_instruct.py: unknown variant '{arg}'; known: vqa")
  c = load_file(os.path.join(os.path.dirname(__file__), "vlm_ntp.py"))
  questions = dict(name="vlmjax_shapes_vqa", builder_config="default")
  if arg == "vqa":
    c.data.name = "vlmjax_shapes_vqa"
  else:
    c.data.mixture = dict(captions=dict(weight=1.0, data=dict(name="vlmjax_shapes", builder_config="default")),
                          questions=dict(weight=1.0, data=questions))
  c.evals.vqa = dict(type="vqa", split="test", num_examples=500)
  c.evals.vqa_likelihood = dict(type="vqa", split="test", num_examples=500, scoring="likelihood")
  if arg == "vqa":  # no caption to score
    c.evals = dict(vqa=c.evals.vqa, vqa_likelihood=c.evals.vqa_likelihood)
  return c
