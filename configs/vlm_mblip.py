"""mBLIP: re-align an image tower and projector trained with an English LM to a multilingual LM.

  python -m vlmjax.train --config configs/vlm_ntp.py --workdir workdirs/vlm_ntp                  # the English VLM
  python -m vlmjax.train --config configs/lm_multilingual.py --workdir workdirs/lm_multilingual  # the new LM
  python -m vlmjax.train --config configs/vlm_mblip.py --workdir workdirs/vlm_mblip
  python -m vlmjax.train --config configs/vlm_mblip.py:scratch --workdir workdirs/vlm_mblip_scratch

The image tower and MLP projector of the English captioning VLM (configs/vlm_ntp.py), the decoder of
the multilingual LM (configs/lm_multilingual.py). The image tower and the LM stay frozen; only the
projector trains, for STEPS steps on captions in the three languages (a third each, the prompt naming
the language), as mBLIP trains its Q-Former on translated data while the LLM barely moves.
':scratch' starts the projector from scratch at the same budget. mBLIP's claim: an encoder aligned
to an English LLM is re-aligned to a multilingual one cheaply. Results: docs/results.md.
"""
import os

from vlmjax.config import load_file

STEPS = 150
ENGLISH_VLM = "workdirs/vlm_ntp"


def get_config(arg=None):
  if arg not in (None, "", "scratch"):
    raise ValueError(f"configs/vlm_mblip.py: unknown argument '{arg}' (none, or 'scratch')")
  c = load_file(os.path.join(os.path.dirname(__file__), "vlm_multilingual.py"), "66.7")
  c.input.languages = dict(en=1.0, de=1.0, fr=1.0)
  parts = "^image/" if arg == "scratch" else "^(image|projector)/"
  c.init.also = dict(image=dict(workdir=ENGLISH_VLM, params=parts))
  c.model.stop_image_gradient = True
  c.optimizer.frozen = "^(image|decoder)/"
  c.total_steps = STEPS
  c.optimizer.warmup_steps = 15
  c.checkpoint.every_steps = 75
  return c
