"""CLIP with hard-negative captions (attribute swap, relation swap, wrong count from
`negative_captions`) as extra columns of each image's row, at the comparison's budget (configs/clip.py).

  python -m vlmjax.train --config configs/negatives.py --workdir workdirs/negatives

Measured: README.md (attribute-swap accuracy against plain CLIP is the point).
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  del arg
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  c.objectives = dict(clip_negatives=dict(weight=1.0))
  return c
