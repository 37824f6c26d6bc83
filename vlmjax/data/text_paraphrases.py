"""Paraphrases made from the caption text alone, by rules (SVLC's positives beside its rule negatives).

Each rule rewrites what the caption says without changing what it asserts, and, like the negative
rules (`text_negatives`), reads nothing but the text:

- `reorder`: the items of a list caption in another order ('a, b and c' -> 'c, a and b');
- `count`: a list caption's count prefix added or dropped ('three objects: a, b and c');
- `there_is`: a single noun phrase as a sentence and back ('a red circle.' <-> 'there is a red circle.');
- `converse`: a relation sentence said from the other side ('the red circle is left of the blue
  square.' -> 'the blue square is right of the red circle.').

A rule that does not fit the caption's form changes nothing (None). The forms are those of short
descriptive captions; a caption of another form keeps only the rules that fit it.
"""
import re

import numpy as np

from vlmjax.data.text_negatives import RELATION_OPPOSITES

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
RULES = ("reorder", "count", "there_is", "converse")

_COUNT = re.compile(r"^(" + "|".join(NUMBER_WORDS[2:]) + r") (?:objects|things|shapes): ")
# A determiner, at most four words (adjectives and a noun), an optional position ('in the top left').
_NOUN_PHRASE = re.compile(r"^(a|an|the|one|two|three|four|five)( [a-z]+){1,4}( (in|on|at) the( [a-z]+){1,3})?$")


def _list_items(body: str) -> list[str] | None:
  """'a, b and c' -> ['a', 'b', 'c'] when every item is a plain noun phrase, else None."""
  if " and " not in body:
    return None
  head, last = body.rsplit(" and ", 1)
  items = [s.strip() for s in head.split(",")] + [last.strip()]
  if len(items) < 2 or not all(_NOUN_PHRASE.match(s) for s in items):
    return None
  if any(r in s for s in items for r in RELATION_OPPOSITES):
    return None  # 'a left of b and c' is not a list of objects
  return items


def _join(items: list[str]) -> str:
  return ", ".join(items[:-1]) + " and " + items[-1]


def apply_rule(caption: str, rule: str, rng: np.random.Generator) -> str | None:
  """`caption` rewritten by `rule` (one of RULES), or None when the rule does not fit it."""
  text = caption.lower().strip()
  if not text.endswith("."):
    text += "."
  body = text[:-1]
  prefix = _COUNT.match(body)
  items = _list_items(body[prefix.end():] if prefix else body)
  if rule == "reorder":
    if not items:
      return None
    order = list(rng.permutation(len(items)))
    if order == sorted(order):
      order[0], order[1] = order[1], order[0]
    return (prefix.group(0) if prefix else "") + _join([items[i] for i in order]) + "."
  if rule == "count":
    if not items or len(items) >= len(NUMBER_WORDS):
      return None
    if prefix:
      return body[prefix.end():] + "."
    return f"{NUMBER_WORDS[len(items)]} objects: {body}."
  if rule == "there_is":
    if body.startswith("there is "):
      rest = body[len("there is "):]
      return rest + "." if _NOUN_PHRASE.match(rest) else None
    if _NOUN_PHRASE.match(body) and body.split(" ", 1)[0] in ("a", "an"):
      return f"there is {body}."
    return None
  if rule == "converse":
    relations = "|".join(re.escape(r) for r in sorted(RELATION_OPPOSITES, key=len, reverse=True))
    match = re.match(rf"^(the [a-z ]+?) is ({relations}) (the [a-z ]+)$", body)
    if not match:
      return None
    subject, relation, obj = match.groups()
    return f"{obj} is {RELATION_OPPOSITES[relation]} {subject}."
  raise ValueError(f"unknown paraphrase rule '{rule}'; known: {', '.join(RULES)}")


def rule_paraphrases(caption: str, count: int, rng: np.random.Generator, rules=RULES) -> list[str | None]:
  """`count` paraphrases of `caption`: one candidate per rule that fits, distinct and different
  from the caption, in random order; None for the slots left when fewer rules fit (a caption no
  rule fits gets only None)."""
  candidates = []
  for i in rng.permutation(len(rules)):
    paraphrase = apply_rule(caption, rules[int(i)], rng)
    if paraphrase is not None and paraphrase != caption.lower().strip() and paraphrase not in candidates:
      candidates.append(paraphrase)
  return (candidates + [None] * count)[:count]
