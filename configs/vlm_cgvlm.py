"""CG-VLM (Liu et al. 2023, contrastive + generative alignment): configs/vlm_limber.py's frozen towers
and linear map, trained with the captioning loss plus an InfoNCE term (τ = 0.07, weight 1) between
the image code (the mean projected image token) and the caption's code (the mean of the frozen LM's
input embeddings of the caption's pieces), over the batch.

  python -m vlmjax.train --config configs/lm_text_only.py --workdir workdirs/lm_text_only   # first,
  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip                   # both
  python -m vlmjax.train --config configs/vlm_cgvlm.py --workdir workdirs/vlm_cgvlm \\
      --config.checkpoint.every_steps=10 --config.checkpoint.keep=30
  python -m vlmjax.evaluate --workdir workdirs/vlm_cgvlm --step 30      # and 100, 300

The paper's claim is efficiency: the contrastive term aligns the image tokens with the LM's word
space early, so captioning quality comes in fewer steps than with the generative loss alone
(configs/vlm_limber.py, the same run without the term, checkpointed alike).
Current result: not reproduced. CIDEr 30.5 / 44.1 / 48.0 at 30 / 100 / 300 steps, against
LiMBeR's 32.3 / 60.8 / 90.2 (docs/results.md).
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  del arg
  c = load_file(os.path.join(os.path.dirname(__file__), "vlm_limber.py"))
  c.objectives = dict(ntp=dict(weight=1.0), cgvlm=dict(weight=1.0, temperature=0.07))
  return c
