"""DreamLIP: multi-positive contrast with sub-captions sampled from the long caption, plus the
sub-caption-to-patch grouping loss, at the comparison's budget (configs/clip.py).

  python -m vlmjax.train --config configs/dreamlip.py --workdir workdirs/dreamlip

Each image carries its short caption and `input.subcaptions` = 3 sentences of its `long_caption`.
The grouping loss has its own temperature (`model.local_logit_scale`).
Current result: 26.4% zero-shot top-1, 25.7% on unseen pairs (docs/results.md).
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  del arg
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  c.objectives = dict(dreamlip=dict(weight=1.0, mpcl_weight=1.0, grouping_weight=0.5))
  c.model.local_logit_scale = True
  c.input.subcaptions = 3
  return c
