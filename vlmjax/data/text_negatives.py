"""Hard-negative captions made from the caption text alone, by rules (SVLC's rule-based negatives).

Nothing here looks at the image or the dataset's annotations, so the rules work on any captioned
data (a CSV of web pairs as well as the built-in scenes). Each rule changes one thing the caption
asserts, leaving the rest word for word:

- `colour`: one colour word replaced by another colour;
- `colour_swap`: two different colour words exchanged (the binding of colours to objects);
- `size`: one size word replaced by its opposite;
- `shape`: one shape word replaced by another shape;
- `relation`: one spatial relation reversed ('left of' -> 'right of', 'above' -> 'below').

Word lists are plain English vocabulary, matched as whole lowercase words.
"""
import re

import numpy as np

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "brown", "pink", "grey")
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "rectangle", "hexagon", "oval", "heart")
SIZE_OPPOSITES = {"small": "large", "large": "small", "big": "small", "little": "big", "tiny": "huge",
                  "huge": "tiny", "tall": "short", "short": "tall"}
RELATION_OPPOSITES = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
                      "on the left": "on the right", "on the right": "on the left", "in front of": "behind",
                      "behind": "in front of", "on top of": "under", "under": "on top of",
                      "at the top": "at the bottom", "at the bottom": "at the top", "inside": "outside",
                      "outside": "inside"}
RULES = ("colour", "colour_swap", "size", "shape", "relation")


def _find(text: str, words) -> list:
  """(start, end, word) of every whole-word occurrence of `words` (longest phrase first) in text."""
  pattern = r"\b(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b"
  return [(m.start(), m.end(), m.group(1)) for m in re.finditer(pattern, text)]


def _replace(text: str, start: int, end: int, word: str) -> str:
  """text with [start, end) replaced by `word`, an article right before it agreeing ('an orange' ->
  'a red'), so that the negative differs in what it asserts, not in its grammar."""
  before = text[:start]
  article = re.search(r"\b(a|an) $", before)
  if article:
    before = before[:article.start()] + ("an " if word[0] in "aeiou" else "a ")
  return before + word + text[end:]


def apply_rule(caption: str, rule: str, rng: np.random.Generator) -> str | None:
  """`caption` changed by `rule` (one of RULES), or None when the rule finds nothing to change."""
  text = caption.lower()
  if rule in ("colour", "shape"):
    vocabulary = COLOURS if rule == "colour" else SHAPES
    found = _find(text, vocabulary)
    if not found:
      return None
    start, end, word = found[int(rng.integers(len(found)))]
    others = [w for w in vocabulary if w != word]
    return _replace(text, start, end, others[int(rng.integers(len(others)))])
  if rule == "colour_swap":
    found = _find(text, COLOURS)
    pairs = [(a, b) for i, a in enumerate(found) for b in found[i + 1:] if a[2] != b[2]]
    if not pairs:
      return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    return _replace(_replace(text, b[0], b[1], a[2]), a[0], a[1], b[2])  # the later one first
  if rule in ("size", "relation"):
    opposites = SIZE_OPPOSITES if rule == "size" else RELATION_OPPOSITES
    found = _find(text, opposites)
    if not found:
      return None
    start, end, word = found[int(rng.integers(len(found)))]
    return _replace(text, start, end, opposites[word])
  raise ValueError(f"unknown negative rule '{rule}'; known: {', '.join(RULES)}")


def rule_negatives(caption: str, count: int, rng: np.random.Generator, rules=RULES) -> list[str]:
  """`count` negatives of `caption`: one candidate per rule that applies, distinct and different from
  the caption, drawn in random order and repeated when fewer than `count`. A caption no rule
  changes gets empty negatives ('', which tokenizes as BOS EOS)."""
  order = rng.permutation(len(rules))
  candidates = []
  for i in order:
    negative = apply_rule(caption, rules[int(i)], rng)
    if negative is not None and negative != caption.lower() and negative not in candidates:
      candidates.append(negative)
  if not candidates:
    return [""] * count
  return [candidates[i % len(candidates)] for i in range(count)]
