"""SigLIP pairwise sigmoid loss, at the comparison's budget (configs/clip.py: same model, data, steps).

  python -m vlmjax.train --config configs/siglip.py --workdir workdirs/siglip
  # the ring form on a multi-device mesh (same loss, O(b²) memory per device):
  python -m vlmjax.train --config configs/siglip.py --workdir workdirs/siglip --config.objectives.siglip.distributed=ring

t' and b start at ln 10 and −10 as in the paper.
Current result: 25.9% zero-shot top-1, behind CLIP at this short schedule (docs/results.md).
"""
import math
import os

from vlmjax.config import load_file


def get_config(arg=None):
  del arg
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  c.objectives = dict(siglip=dict(weight=1.0, distributed="global"))
  c.model.logit_scale_init = math.log(10.0)
  c.model.logit_bias_init = -10.0
  return c
