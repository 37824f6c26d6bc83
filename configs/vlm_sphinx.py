"""SPHINX: configs/vlm_ntp.py with two image towers whose token grids are concatenated before the
projector, and a decoder started from a weight mix of two LM runs.

  python -m vlmjax.train --config configs/siglip.py --workdir workdirs/siglip                      # tower B
  python -m vlmjax.train --config configs/lm_text_only.py:long --workdir workdirs/lm_text_only_long  # LM B
  python -m vlmjax.train --config configs/vlm_sphinx.py --workdir workdirs/vlm_sphinx
  --config configs/vlm_sphinx.py:towers   the two towers only (the decoder: configs/lm_text_only.py's)
  --config configs/vlm_sphinx.py:mix      the weight mix only (one tower: configs/clip.py's)

Towers: configs/clip.py's run (`image`) and configs/siglip.py's (`image_1`, loaded through
`init.also.siglip.into`), the same architecture trained with another loss; their 64 tokens of width
128 become 64 tokens of width 256 for the MLP projector. Decoder: 0.5·θ(short captions) +
0.5·θ(long descriptions), the LM runs of configs/lm_text_only.py and its `:long` mix, which share
one tokenizer (`init.fit.weight_mix`). Everything trains, 300 steps of 32, as every VLM row.

The paper's claim: mixing visual embeddings of differently trained encoders and mixing the weights
of LMs trained on different data each give a stronger VLM than either alone. Here that reads as
CIDEr and the compositional test above configs/vlm_ntp.py's.
Current result: the weight mix reproduces (CIDEr 255.0 against 235.5, object recall 30.3% against
26.8%); the second tower does not (225.5 alone, 236.8 with the mix) (docs/results.md).
"""
import os

from vlmjax.config import load_file

SIGLIP_WORKDIR = "workdirs/siglip"
LONG_LM_WORKDIR = "workdirs/lm_text_only_long"
VARIANTS = ("", "towers", "mix")


def get_config(arg=None):
  if (arg or "") not in VARIANTS:
    raise ValueError(f"configs/vlm_sphinx.py: unknown variant '{arg}'; known: towers, mix")
  c = load_file(os.path.join(os.path.dirname(__file__), "vlm_ntp.py"))
  if arg != "mix":
    c.model.extra_images = (dict(c.model.image),)
    c.init.also.siglip = dict(workdir=SIGLIP_WORKDIR, params="^image/", into=dict(image="image_1"))
  if arg != "towers":
    c.init.fit = dict(weight_mix=dict(workdir=LONG_LM_WORKDIR, alpha=0.5, params="^decoder/"))
  return c
