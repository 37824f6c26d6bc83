"""Multilingual CLIP: the comparison's CLIP trained on captions in English, German and French, one
tokenizer for all three, evaluated per language (Babel-ImageNet's protocol: the same test images and
classes, the class names and captions in each language).

  python -m vlmjax.train --config configs/multilingual_clip.py --workdir workdirs/multilingual_clip
  python -m vlmjax.train --config configs/multilingual_clip.py:balanced --workdir workdirs/multilingual_balanced

Default mix: English 80%, German 15%, French 5% (web data is mostly English; French plays a
low-resource language). ':balanced' draws the three equally; ':english' trains on English only, with
the same three-language tokenizer (what the mix itself costs English). Babel-ImageNet's claim: multilingual
CLIP models classify worse in other languages than in English, and worse the less of a language
they saw. configs/babel_language_tuning.py then tunes the text tower alone on one language.
The vlmjax_shapes captions of each language: vlmjax/data/shapes_languages.py. Results: docs/results.md.
"""
import os

from vlmjax.config import load_file

LANGUAGES = ("en", "de", "fr")
MIXES = {"": dict(en=0.8, de=0.15, fr=0.05), "balanced": dict(en=1.0, de=1.0, fr=1.0),
         "english": dict(en=1.0)}


def per_language_evals(split: str = "test") -> dict:
  """Zero-shot top-1 and retrieval in each language, on `split`."""
  evals = {}
  for language in LANGUAGES:
    evals[f"zeroshot_{language}"] = dict(type="zeroshot", split=split, language=language)
    evals[f"retrieval_{language}"] = dict(type="retrieval", split=split, num_examples=1000, language=language)
  return evals


def get_config(arg=None):
  arg = arg or ""
  if arg not in MIXES:
    raise ValueError(f"configs/multilingual_clip.py: unknown argument '{arg}' (one of: {', '.join(MIXES)})")
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  c.input.languages = MIXES[arg]
  c.tokenizer.vocab_size = 512  # three languages' words (the English runs use 256)
  c.tokenizer.languages = LANGUAGES  # one tokenizer for all three, whatever the mix
  c.evals = per_language_evals()
  return c
