"""CLIP softmax contrastive loss: the baseline of the contrastive-method comparison.

  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip

The demo's model and data, trained for the comparison's equal budget of STEPS steps, and evaluated on
zero-shot classification, retrieval and compositional understanding (hard negatives per kind).
Every configs/<method>.py of the comparison starts from this file and changes only the objective.
Current result: 47.8% zero-shot top-1 on `test` (docs/results.md).
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
