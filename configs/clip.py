"""CLIP softmax contrastive loss: the baseline of the contrastive-method comparison (README).

  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip

The demo's model and data, trained for the comparison's equal budget of STEPS steps, and evaluated on
zero-shot classification, retrieval and compositional understanding (hard negatives per kind).
Every configs/<method>.py of the comparison starts from this file and changes only the objective.

Measured (2-core CPU, 300 steps of batch 128, 2026-11-27): zero-shot top-1 48.0%, unseen 17.4%, R@1
i→t 22.5% / t→i 19.9%, compositional attribute 87.7% / relation 73.2% / count 99.7% (README.md,
method table).
"""
import os

from vlmjax.config import load_file

STEPS = 300


def get_config(arg=None):
  del arg
  c = load_file(os.path.join(os.path.dirname(__file__), "demo.py"))
  c.total_steps = STEPS
  c.optimizer.warmup_steps = 30
  c.checkpoint.every_steps = 150
  c.evals.compositional = dict(type="compositional", split="test", num_examples=1000)
  return c
