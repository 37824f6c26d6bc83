"""SITTA (Fields et al. 2023), the variant fitted on image–text pairs: the linear map from the image
tower's tokens into the frozen LM's input embedding space is fitted in closed form by ridge
regression (`vlmjax.projector_fit`, λ chosen on `validation`), with no gradient step. The towers are
configs/vlm_limber.py's (the CLIP image tower, the text-only LM), and so is the projector's shape.

  python -m vlmjax.train --config configs/lm_text_only.py --workdir workdirs/lm_text_only   # first,
  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip                   # both
  python -m vlmjax.train --config configs/vlm_sitta.py --workdir workdirs/vlm_sitta
  python -m vlmjax.train --config configs/vlm_sitta.py:random --workdir workdirs/vlm_sitta_random

Every parameter is frozen, so the run's single step changes nothing: it only writes the fitted
params as a checkpoint and evaluates them. `:random` skips the fit: the map stays at its random
initialisation (the floor). configs/vlm_limber.py trains the same map by gradient for 300 steps
(the ceiling at this budget). The paper's claim: the closed-form map captions without gradient
information. Here the mapped tokens are fed to the LM as they are; its own decoding, a prompt of the
vocabulary pieces nearest the mapped embedding, is `configs/evals/vlm_decoding.py:nearest`.
Current result: not reproduced. CIDEr 0.0 (every caption ends at once); 26.7 with 4 nearest-token
prompts, below the random map's 38.4 with 8; LiMBeR 90.2 (docs/results.md).
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  if (arg or "") not in ("", "random"):
    raise ValueError(f"configs/vlm_sitta.py: unknown variant '{arg}'; known: random")
  c = load_file(os.path.join(os.path.dirname(__file__), "vlm_limber.py"))
  c.model.projector = dict(kind="linear")
  c.optimizer.frozen = ".*"
  c.total_steps = 1
  c.optimizer.warmup_steps = 0
  c.checkpoint.every_steps = 1
  if not arg:
    c.init.fit = dict(ridge_projector=dict(examples=8192, validation_examples=2000,
                                           l2=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)))
  return c
