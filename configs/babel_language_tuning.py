"""Language-specific tuning of a multilingual CLIP's text tower (Babel-ImageNet): the image tower and
the embedding scale stay fixed, the text tower learns from captions in one language only.

  python -m vlmjax.train --config configs/multilingual_clip.py --workdir workdirs/multilingual_clip
  python -m vlmjax.train --config configs/babel_language_tuning.py --workdir workdirs/babel_fr

The argument after ':' is 'language' or 'language,run' (default 'fr,workdirs/multilingual_clip'): the
language to tune on and the run to start from. Babel-ImageNet's claim: cheap language-specific
training of the text side lifts a low-resource language's zero-shot accuracy a lot. What it costs
the other languages is measured by the same per-language evaluators. Results: docs/results.md.
"""
import os

from vlmjax.config import load_file

STEPS = 100


def get_config(arg=None):
  language, _, run = (arg or "fr").partition(",")
  c = load_file(os.path.join(os.path.dirname(__file__), "multilingual_clip.py"))
  c.init = dict(workdir=run or "workdirs/multilingual_clip", params=".*")
  c.optimizer.frozen = "^image/|logit_scale"
  c.input.languages = {language: 1.0}
  c.total_steps = STEPS
  c.optimizer.warmup_steps = 10
  c.optimizer.learning_rate = 3e-4
  c.checkpoint.every_steps = 50
  return c
