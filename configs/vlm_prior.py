"""PRIOR (Chen et al. 2025): configs/vlm_ntp.py with each caption token's loss weighted by
(1 − p_ref)^α, p_ref from the text-only reference LM of configs/lm_text_only.py (α = 1, weights
renormalised to mean 1 per caption), computed in the step under stop_gradient.

  python -m vlmjax.train --config configs/lm_text_only.py --workdir workdirs/lm_text_only   # first,
  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip                   # both
  python -m vlmjax.train --config configs/vlm_prior.py --workdir workdirs/vlm_prior

The argument after ':' is the reference run (default workdirs/lm_text_only); it is also where the
decoder starts from, as in every VLM config.
Current result: CIDEr 118.1 on `test`; greedy captions of multi-object scenes collapse into
repeating the count word. 4 beams with a repetition penalty of 1.2 give 209.6 (docs/results.md).
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  c = load_file(os.path.join(os.path.dirname(__file__), "vlm_ntp.py"))
  reference = arg or c.init.workdir
  c.init.workdir = reference
  c.objectives = dict(prior=dict(weight=1.0, reference_workdir=reference, alpha=1.0))
  return c
