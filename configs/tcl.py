"""CLIP + TCL (two augmented views per image, two dropout passes per text, contrasted within their
modality; and the local mutual-information term, each global embedding against its own local token
embeddings), at the comparison's budget (configs/clip.py).

  python -m vlmjax.train --config configs/tcl.py --workdir workdirs/tcl
  python -m vlmjax.train --config configs/tcl.py:intra --workdir workdirs/tcl_intra   # no local term

TCL (Yang et al. 2022) claims that intra-modal contrast and local mutual information both add to
cross-modal alignment. Results and whether they reproduce: docs/results.md.
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  # TCL averages its six terms with equal weight; the cross-modal CLIP loss here has weight 1, the
  # intra-modal and local terms half that, as for the intra-modal term alone before.
  c.objectives = dict(clip=dict(weight=1.0), tcl=dict(weight=0.5, local_weight=1.0, local_grid=4))
  if arg == "intra":
    c.objectives.tcl.local_weight = 0.0
  elif arg:
    raise ValueError(f"configs/tcl.py: unknown variant '{arg}' (use ':intra' or nothing)")
  c.model.text.dropout = 0.1
  return c
