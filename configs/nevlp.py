"""NEVLP's noise-adaptive learning: CLIP whose pairs are weighted by their probability of being clean,
from a two-component mixture fitted to each record's latest loss, at the comparison's budget
(configs/clip.py), on captions 30% of which belong to another image.

  python -m vlmjax.train --config configs/nevlp.py --workdir workdirs/nevlp_noisy
  python -m vlmjax.train --config configs/nevlp.py:clean --workdir workdirs/nevlp

NEVLP (2024) claims that weighting out the pairs the model has not fitted early in training
makes contrastive pre-training robust to noisy web pairs. Direction reproduced, small: 25.8% zero-shot
top-1 against CLIP's 23.9% at the same noise; the noisy pairs are found (clean probability 0.07
against 0.92). `warmup_steps` chosen on validation from {50, 100, 200}. docs/results.md, "Noisy pairs".
"""
import os

from vlmjax.config import load_file

NOISY_FRACTION = 0.3


def get_config(arg=None):
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  # The losses start being used once the model separates pairs: a third of the budget.
  c.objectives = dict(nevlp=dict(weight=1.0, warmup_steps=100))
  if arg in (None, "", "noisy"):
    c.data.caption_noise = NOISY_FRACTION
  elif arg != "clean":
    raise ValueError(f"configs/nevlp.py: unknown variant '{arg}' (use ':clean' or nothing)")
  return c
