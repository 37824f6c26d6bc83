"""Multilingual captioning VLM at a chosen share of non-English training captions (Centurio).

  python -m vlmjax.train --config configs/lm_multilingual.py --workdir workdirs/lm_multilingual  # first,
  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip                        # both
  python -m vlmjax.train --config configs/vlm_multilingual.py:50 --workdir workdirs/vlm_multilingual_50

configs/vlm_ntp.py (CLIP image tower -> MLP projector -> decoder) with the decoder of the multilingual
LM. The argument is the percentage of training captions not in English (0, 25, 50 or 100), split
equally between German and French. The prompt names the caption's language ('caption de'), so one
model captions in any of the three on request. Evaluated per language: CIDEr against the scene's
captions in that language and language fidelity (the share of captions written in the language
asked for). Centurio's claim: 25-50% of non-English data lifts the other languages greatly while
English keeps its quality. Results: docs/results.md.
"""
import os

from vlmjax.config import load_file

LANGUAGES = ("en", "de", "fr")
LM_WORKDIR = "workdirs/lm_multilingual"


def language_weights(percent: float) -> dict:
  """English at 100 - percent, German and French at percent / 2 each; every language keeps its key
  (weight 0 included), so the prompt can ask for each."""
  return dict(en=100.0 - percent, de=percent / 2, fr=percent / 2)


def per_language_captioning(split: str = "test", num_examples: int = 300) -> dict:
  return {f"caption_{language}": dict(type="captioning", split=split, num_examples=num_examples, max_new_tokens=40,
                                      language=language) for language in LANGUAGES}


def get_config(arg=None):
  percent = float(arg or 50)
  if not 0 <= percent <= 100:
    raise ValueError(f"configs/vlm_multilingual.py: the non-English percentage '{arg}' must be in [0, 100]")
  c = load_file(os.path.join(os.path.dirname(__file__), "vlm_ntp.py"))
  c.init.workdir = LM_WORKDIR
  c.input.languages = language_weights(percent)
  c.input.prompt = "caption {language}"
  c.input.max_text_len = 40
  c.tokenizer.vocab_size = 512
  c.tokenizer.languages = LANGUAGES
  c.evals = per_language_captioning()
  return c
