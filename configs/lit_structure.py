"""LiT + the STRUCTURE regulariser: configs/lit.py (locked image tower from the CLIP run) with
STRUCTURE keeping the batch's neighbourhood structure of each frozen tower's features in the aligned
embeddings (λ warmed up over 100 steps), at the comparison's budget.

  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip    # first, the image tower
  python -m vlmjax.train --config configs/lit_structure.py:workdirs/clip --workdir workdirs/lit_structure

Current result: 51.7% zero-shot top-1, level with configs/lit.py (docs/results.md).
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  c = load_file(os.path.join(os.path.dirname(__file__), "lit.py"), arg)
  c.objectives = dict(clip=dict(weight=1.0), structure=dict(weight=1.0, levels=2, warmup_steps=100))
  return c
