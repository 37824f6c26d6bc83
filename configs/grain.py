"""GRAIN: the global CLIP loss plus each object's region (the image tokens in its box) contrasted
with its description ('a small red circle') across the batch's objects, at the comparison's budget
(configs/clip.py).

  python -m vlmjax.train --config configs/grain.py --workdir workdirs/grain

GRAIN (Grounding Descriptions in Images, 2024) claims that grounding descriptions in image regions while aligning
captions globally improves zero-shot classification and retrieval. Reproduced: 52.3% zero-shot
top-1 against CLIP's 48.0% (with description prompts 51.7% against 47.4%, on unseen pairs 21.5%
against 12.1%), R@1 25.7% / 23.8% against 22.5% / 19.9%. docs/results.md.
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  del arg
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  c.objectives = dict(clip=dict(weight=1.0), grain=dict(weight=0.5))
  return c
