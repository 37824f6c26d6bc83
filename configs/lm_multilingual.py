"""A multilingual text-only decoder LM: configs/lm_text_only.py on the captions in English, German and
French (a third each), with one 512-piece tokenizer for the three. The LM the multilingual VLMs
(configs/vlm_multilingual.py) start from, as Centurio and mBLIP start from a multilingual LLM.

  python -m vlmjax.train --config configs/lm_multilingual.py --workdir workdirs/lm_multilingual

Results: docs/results.md.
"""
import os

from vlmjax.config import load_file

LANGUAGES = ("en", "de", "fr")


def get_config(arg=None):
  del arg
  c = load_file(os.path.join(os.path.dirname(__file__), "lm_text_only.py"))
  c.input.languages = {language: 1.0 for language in LANGUAGES}
  c.input.max_text_len = 40  # a German caption of four objects is about 1.4 times as many pieces
  c.tokenizer.vocab_size = 512
  c.tokenizer.languages = LANGUAGES
  return c
