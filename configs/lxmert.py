"""LXMERT: a two-stream fusion encoder (objects and words, then cross-modal layers both ways) trained
on masked words, image-text matching, masked-object attributes and question answering.

  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip   # first, the image tower
  python -m vlmjax.train --config configs/lxmert.py --workdir workdirs/lxmert
  python -m vlmjax.train --config configs/lxmert.py:qa_only --workdir workdirs/lxmert_qa_only

vlmjax/models/fusion.py: object features are the configs/clip.py image tower's patch tokens pooled
in each object's box (for LXMERT's detector features) plus a box embedding; 1 object layer, 2
language layers, 2 cross-modal layers, width 128. The tasks (vlmjax/objectives/fusion.py): MLM,
ITM against the caption's attribute / relation / count negatives and random captions, masked-object
colour / shape / size, and QA over the dataset's 21 answers. ':qa_only' trains the same model on QA
alone, the ablation of the pre-training tasks. Evaluated by ITM accuracy per negative kind and QA
accuracy per question type on `test`. LXMERT's claim: the cross-modal pre-training tasks lift QA
over training on QA alone. Results: docs/results.md.
"""
import os

from vlmjax.config import load_file
from vlmjax.data.shapes import ANSWERS

IMAGE = dict(variant="mu/8", width=128, depth=2, mlp_dim=512, num_heads=4, pool="gap", stem="conv")  # configs/clip.py's


def get_config(arg=None):
  if arg not in (None, "", "qa_only"):
    raise ValueError(f"configs/lxmert.py: unknown argument '{arg}' (none, or 'qa_only')")
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  c.batch_size = 64
  c.model = dict(name="fusion", image=IMAGE, width=128, num_heads=4, language_layers=2, object_layers=1,
                 cross_layers=2, max_len=24, num_answers=len(ANSWERS))
  c.init = dict(workdir="workdirs/clip", params="^image/")
  weights = dict(mlm_weight=0.0, itm_weight=0.0, attribute_weight=0.0) if arg == "qa_only" else {}
  c.objectives = dict(lxmert=dict(weight=1.0, **weights))
  c.evals = dict(itm=dict(type="itm", split="test", num_examples=1000),
                 qa=dict(type="fusion_qa", split="test", num_examples=500))
  return c
