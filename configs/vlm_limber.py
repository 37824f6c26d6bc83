"""LiMBeR-style (Merullo et al. 2023): only a linear map from the image tower's tokens into the
decoder's input embeddings trains; the image tower and the LM are frozen. Dropout 0.1 on the prefix.

  python -m vlmjax.train --config configs/lm_text_only.py --workdir workdirs/lm_text_only   # first,
  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip                   # both
  python -m vlmjax.train --config configs/vlm_limber.py --workdir workdirs/vlm_limber

configs/vlm_ntp.py otherwise (same data, steps, schedule, evaluation): the LM is the trained
configs/lm_text_only.py run and the image tower the trained configs/clip.py run, both frozen, as
LiMBeR maps a frozen pretrained image encoder into a frozen LM.
Current result: CIDEr 89.2 on `test` (docs/results.md).
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  del arg
  c = load_file(os.path.join(os.path.dirname(__file__), "vlm_ntp.py"))
  c.model.projector = dict(kind="linear", dropout=0.1)
  c.model.stop_image_gradient = True  # frozen: no backward pass through the image tower
  c.optimizer.frozen = "^(image|decoder)/"
  return c
