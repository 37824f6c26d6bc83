"""ALIGN: the CLIP loss with label smoothing 0.1, at the comparison's budget (configs/clip.py).

  python -m vlmjax.train --config configs/align.py --workdir workdirs/align
  python -m vlmjax.train --config configs/align.py:noisy --workdir workdirs/align_noisy
  python -m vlmjax.train --config configs/clip.py --config.data.caption_noise=0.3 --workdir workdirs/clip_noisy

ALIGN (Jia et al. 2021) trains on a billion noisy alt-text pairs with smoothed softmax targets
(ε = 0.1, its value, not tuned here) and claims that scale makes up for the noise. Here ':noisy' gives
30% of the training images another record's caption (`data.caption_noise`, evaluation stays clean),
its setting in small: does smoothing soften the damage the wrong pairs do? Not reproduced here:
24.8% zero-shot top-1 against plain CLIP's 23.9% on the same noisy data (45.2% vs 48.0% on clean
data). docs/results.md, "Noisy pairs".
"""
import os

from vlmjax.config import load_file

NOISY_FRACTION = 0.3


def get_config(arg=None):
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  c.objectives = dict(clip=dict(weight=1.0, label_smoothing=0.1))
  if arg == "noisy":
    c.data.caption_noise = NOISY_FRACTION
  elif arg:
    raise ValueError(f"configs/align.py: unknown variant '{arg}' (use ':noisy' or nothing)")
  return c
