"""LiT + the STRUCTURE regulariser: configs/lit.py (locked image tower from the CLIP run) with
STRUCTURE keeping the batch's neighbourhood structure of each frozen tower's features in the aligned
embeddings (λ warmed up over 100 steps), at the comparison's budget.

  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip    # first, the image tower
  python -m vlmjax.train --config configs/lit_structure.py:workdirs/clip --workdir workdirs/lit_structure

Measured (2-core CPU, 300 steps of batch 128, 2026-11-27): zero-shot top-1 51.7%, unseen 18.0%, R@1
i→t 23.8% / t→i 21.1%, compositional attribute 86.5% / relation 71.2% / count 99.7% (README.md,
method table).
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  c = load_file(os.path.join(os.path.dirname(__file__), "lit.py"), arg)
  c.objectives = dict(clip=dict(weight=1.0), structure=dict(weight=1.0, levels=2, warmup_steps=100))
  return c
