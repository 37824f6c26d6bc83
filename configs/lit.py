"""LiT: a locked image tower taken from the CLIP run (configs/clip.py), a text tower and both
projections trained from scratch, at the comparison's budget. The baseline for configs/lit_structure.py.

  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip    # first, the image tower
  python -m vlmjax.train --config configs/lit.py:workdirs/clip --workdir workdirs/lit
  python -m vlmjax.train --config configs/lit.py:frozen --workdir workdirs/lit_frozen

The argument after ':' is the run whose image tower is loaded (default workdirs/clip). ':frozen'
loads and locks both of workdirs/clip's towers and trains only the projections (STRUCTURE's setting).
Results: docs/results.md.
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  if arg == "frozen":
    c.init = dict(workdir="workdirs/clip", params="^(image|text)/")
    c.optimizer.frozen = "^(image|text)/"
  else:
    c.init = dict(workdir=arg or "workdirs/clip", params="^image/")
    c.optimizer.frozen = "^image/"
  return c
