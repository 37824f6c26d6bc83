"""LiT + the STRUCTURE regulariser: configs/lit.py (locked image tower from the CLIP run) with
STRUCTURE keeping the batch's neighbourhood structure of each frozen tower's features in the aligned
embeddings (λ warmed up over 100 steps), at the comparison's budget.

  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip    # first, the towers
  python -m vlmjax.train --config configs/lit_structure.py:workdirs/clip --workdir workdirs/lit_structure
  python -m vlmjax.train --config configs/lit_structure.py:frozen --workdir workdirs/lit_structure_frozen
  python -m vlmjax.train --config configs/lit.py:frozen --workdir workdirs/lit_frozen

':frozen' is STRUCTURE's own setting: both towers pretrained and frozen (here the CLIP run's image
and text towers), only the two projections trained, so both reference features come from frozen
pretrained towers. STRUCTURE (Gröger et al. 2025) claims that the regulariser improves alignment
of frozen towers over the contrastive loss alone (configs/lit.py:frozen). Not reproduced: 50.0% against
49.9% with both towers frozen, 51.7% against 52.5% with the image tower alone. docs/results.md.
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  c = load_file(os.path.join(os.path.dirname(__file__), "lit.py"), arg)
  c.objectives = dict(clip=dict(weight=1.0), structure=dict(weight=1.0, levels=2, warmup_steps=100))
  return c
