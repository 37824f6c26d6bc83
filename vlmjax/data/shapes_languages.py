"""The `vlmjax_shapes` captions in German and French: a lexicon and a small grammar of each.

The short caption of every scene (`shapes._caption`) is written in each language of `TRANSLATED`
from the same objects and the same template (which objects name their size, the position phrase of
one object, the count prefix of several), so a translation says exactly what the English caption
says (`shapes.caption_in`). The two grammars differ from English where multilingual models have to
learn something:

- German: every noun has a gender (der Kreis, das Quadrat, die Raute); the article and each
  adjective before the noun agree with it ('ein großer roter Kreis', 'ein großes rotes Quadrat',
  'eine große rote Raute').
- French: the colour follows the noun and the size precedes it, and both agree with the noun's
  gender ('un grand cercle rouge', 'une grande étoile rouge', 'une petite croix verte').

Both use letters outside ASCII (ß, ü, é, à), which a tokenizer trained on the captions of all
languages has to cover. Everything here is deterministic: it draws nothing from a scene's RNG.
"""
import itertools
import re

TRANSLATED = ('de', 'fr')

# German: noun and gender (m, n, f) per shape; adjective stems; endings after the indefinite article
# in the nominative (mixed declension), which are also the endings without an article.
_DE_NOUNS = {'circle': ('Kreis', 'm'), 'square': ('Quadrat', 'n'), 'triangle': ('Dreieck', 'n'),
             'star': ('Stern', 'm'), 'cross': ('Kreuz', 'n'), 'diamond': ('Raute', 'f')}
_DE_COLORS = {'red': 'rot', 'green': 'grün', 'blue': 'blau', 'yellow': 'gelb', 'purple': 'violett',
              'orange': 'orangefarben'}
_DE_SIZES = {'small': 'klein', 'large': 'groß'}
_DE_ENDINGS = {'m': 'er', 'n': 'es', 'f': 'e'}
_DE_ARTICLES = {'m': 'ein', 'n': 'ein', 'f': 'eine'}
_DE_NUMBERS = ('null', 'eins', 'zwei', 'drei', 'vier', 'fünf')
_DE_ROWS = {'top': 'oben', 'bottom': 'unten'}
_DE_COLUMNS = {'left': 'links', 'right': 'rechts'}

# French: noun and gender per shape; (masculine, feminine) forms of each adjective.
_FR_NOUNS = {'circle': ('cercle', 'm'), 'square': ('carré', 'm'), 'triangle': ('triangle', 'm'),
             'star': ('étoile', 'f'), 'cross': ('croix', 'f'), 'diamond': ('losange', 'm')}
_FR_COLORS = {'red': ('rouge', 'rouge'), 'green': ('vert', 'verte'), 'blue': ('bleu', 'bleue'),
              'yellow': ('jaune', 'jaune'), 'purple': ('violet', 'violette'), 'orange': ('orange', 'orange')}
_FR_SIZES = {'small': ('petit', 'petite'), 'large': ('grand', 'grande')}
_FR_ARTICLES = {'m': 'un', 'f': 'une'}
_FR_NUMBERS = ('zéro', 'un', 'deux', 'trois', 'quatre', 'cinq')
_FR_ROWS = {'top': 'en haut', 'bottom': 'en bas'}
_FR_COLUMNS = {'left': 'à gauche', 'right': 'à droite'}

NOUNS = {'de': _DE_NOUNS, 'fr': _FR_NOUNS}  # shape -> (noun, gender)


def check(language: str):
  if language not in TRANSLATED:
    raise ValueError(f"vlmjax_shapes has no captions in language '{language}' (it has: en, {', '.join(TRANSLATED)})")


def noun_phrase(color: str, shape: str, size: str | None, language: str, article: bool = True) -> str:
  """'ein großer roter Kreis' / 'un grand cercle rouge'; without the article: 'roter Kreis'."""
  if language == 'de':
    noun, gender = _DE_NOUNS[shape]
    adjectives = ([_DE_SIZES[size]] if size else []) + [_DE_COLORS[color]]
    words = [a + _DE_ENDINGS[gender] for a in adjectives] + [noun]
    return ' '.join(([_DE_ARTICLES[gender]] if article else []) + words)
  noun, gender = _FR_NOUNS[shape]
  form = 0 if gender == 'm' else 1
  words = ([_FR_SIZES[size][form]] if size else []) + [noun, _FR_COLORS[color][form]]
  return ' '.join(([_FR_ARTICLES[gender]] if article else []) + words)


def position(row: str, col: str, language: str) -> str:
  """A 3x3 grid cell ('top'/'middle'/'bottom', 'left'/'center'/'right'): 'oben links', 'in der Mitte',
  'en haut à gauche', 'au centre'."""
  if (row, col) == ('middle', 'center'):
    return 'in der Mitte' if language == 'de' else 'au centre'
  rows, columns = (_DE_ROWS, _DE_COLUMNS) if language == 'de' else (_FR_ROWS, _FR_COLUMNS)
  return ' '.join(p for p in (rows.get(row), columns.get(col)) if p)


def caption(objects: list[dict], template: dict, language: str, cell: tuple | None = None) -> str:
  """The short caption of `objects` in `language` (German or French), worded by `template` as
  `shapes._caption` words the English; `cell`: the (row, col) of a single object's position phrase."""
  check(language)
  parts = [noun_phrase(o['color'], o['shape'], o['size'] if s else None, language)
           for o, s in zip(objects, template['with_size'])]
  if len(objects) == 1:
    text = parts[0]
    if template['with_position']:
      text += ' ' + position(*cell, language)
    return text + '.'
  listing = ', '.join(parts[:-1]) + (' und ' if language == 'de' else ' et ') + parts[-1]
  if template['with_count']:
    count = len(objects)
    listing = (f'{_DE_NUMBERS[count]} Objekte: {listing}' if language == 'de'
               else f'{_FR_NUMBERS[count]} objets : {listing}')
  return listing + '.'


def class_name(name: str, language: str) -> str:
  """An English class name ('red circle') in `language`: 'roter Kreis', 'cercle rouge'."""
  check(language)
  color, shape = name.split(' ')
  return noun_phrase(color, shape, None, language, article=False)


def prompts(name: str, language: str) -> list[str]:
  """The zero-shot prompts of an English class name in `language`, worded as that language's
  captions are (the class alone, small, large): 'ein gelber Stern.', 'ein kleiner gelber Stern.', ..."""
  check(language)
  color, shape = name.split(' ')
  return [f'{noun_phrase(color, shape, size, language)}.' for size in (None, 'small', 'large')]


def words(text: str) -> list[str]:
  """Lower-cased words of any script."""
  return re.findall(r"[^\W_]+", text.lower())


def lexicon(language: str) -> set:
  """Every word `language`'s captions use."""
  check(language)
  one = dict(with_size=[True], with_position=True, with_count=False)
  texts = [caption([dict(color=c, shape=s, size=z)], one, language, cell)
           for c in _DE_COLORS for s in _DE_NOUNS for z in _DE_SIZES
           for cell in itertools.product(('top', 'middle', 'bottom'), ('left', 'center', 'right'))]
  numbers = _DE_NUMBERS if language == 'de' else _FR_NUMBERS
  texts += [caption([dict(color='red', shape='circle', size='small')] * n,
                    dict(with_size=[False] * n, with_position=False, with_count=True), language)
            for n in range(2, len(numbers))]
  return {w for t in texts for w in words(t)}
