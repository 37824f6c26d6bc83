"""The `vlmjax_shapes` captions in German and French: a lexicon and a small grammar of each.

The short caption of every scene (`shapes._caption`) is written in each language of `TRANSLATED`
from the same objects and the same template (which objects name their size, the position phrase of
one object, the count prefix of several), so a translation says exactly what the English caption
says. The two grammars differ from English where multilingual models have to learn something:

- German: every noun has a gender (der Kreis, das Quadrat, die Raute); the article and each
  adjective before the noun agree with it ('ein großer roter Kreis', 'ein großes rotes Quadrat',
  'eine große rote Raute').
- French: the colour follows the noun and the size precedes it, and both agree with the noun's
  gender ('un grand cercle rouge', 'une grande étoile rouge', 'une petite croix verte').

Both use letters outside ASCII (ß, ü, é, à), which a tokenizer trained on the captions of all
languages has to cover. The functions are deterministic: they draw nothing from the scene's RNG.
"""
import re

from vlmjax.data import shapes

# The record's own caption is English; these are its `translations`.
TRANSLATED = ('de', 'fr')
LANGUAGES = ('en', *TRANSLATED)

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


def _check(language: str):
  if language not in LANGUAGES:
    raise ValueError(f"vlmjax_shapes has no captions in language '{language}' (it has: {', '.join(LANGUAGES)})")


def _noun_phrase(color: str, shape: str, size: str | None, language: str, article: bool = True) -> str:
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


def _position(row: str, col: str, language: str) -> str:
  """The grid cell of `shapes._grid_cell`: 'oben links', 'in der Mitte', 'en haut à gauche', 'au centre'."""
  if (row, col) == ('middle', 'center'):
    return 'in der Mitte' if language == 'de' else 'au centre'
  rows, columns = (_DE_ROWS, _DE_COLUMNS) if language == 'de' else (_FR_ROWS, _FR_COLUMNS)
  return ' '.join(p for p in (rows.get(row), columns.get(col)) if p)


def caption(objects: list[dict], template: dict, language: str) -> str:
  """The short caption of `objects` in `language`, worded by `template` as `shapes._caption` is."""
  _check(language)
  if language == 'en':
    return shapes._caption(objects, template)  # pylint: disable=protected-access
  parts = [_noun_phrase(o['color'], o['shape'], o['size'] if s else None, language)
           for o, s in zip(objects, template['with_size'])]
  if len(objects) == 1:
    text = parts[0]
    if template['with_position']:
      text += ' ' + _position(*shapes._grid_cell(objects[0]['x'], objects[0]['y']), language)  # pylint: disable=protected-access
    return text + '.'
  listing = ', '.join(parts[:-1]) + (' und ' if language == 'de' else ' et ') + parts[-1]
  if template['with_count']:
    count = len(objects)
    listing = (f'{_DE_NUMBERS[count]} Objekte: {listing}' if language == 'de'
               else f'{_FR_NUMBERS[count]} objets : {listing}')
  return listing + '.'


def translations(objects: list[dict], template: dict) -> dict:
  """{language: caption} for every language of `TRANSLATED`."""
  return {language: caption(objects, template, language) for language in TRANSLATED}


def class_name(name: str, language: str) -> str:
  """An English class name ('red circle') in `language`: 'roter Kreis', 'cercle rouge'."""
  _check(language)
  if language == 'en':
    return name
  color, shape = name.split(' ')
  return _noun_phrase(color, shape, None, language, article=False)


def zero_shot_prompts(language: str):
  """-> a function English class name -> its prompts in `language`, worded as that language's
  captions are (the class alone, small, large): the English set is `shapes.zero_shot_prompts`."""
  _check(language)
  if language == 'en':
    return shapes.zero_shot_prompts

  def prompts(name: str) -> list[str]:
    color, shape = name.split(' ')
    return [f'{_noun_phrase(color, shape, size, language)}.' for size in (None, 'small', 'large')]
  return prompts


def reference_captions(objects, language: str) -> list[str]:
  """Every short caption the generator could write for a scene in `language` (`shapes.reference_captions`'
  wording choices). `objects`: object dicts or a TFDS-decoded record's `objects`."""
  _check(language)
  if isinstance(objects, dict):
    objects = shapes._object_dicts(objects)  # pylint: disable=protected-access
  out = []
  for sizes in range(2 ** len(objects)):
    for flag in (False, True):
      template = dict(with_size=[bool(sizes >> i & 1) for i in range(len(objects))],
                      with_position=flag, with_count=flag)
      text = caption(objects, template, language)
      if text not in out:
        out.append(text)
  return out


def _words(text: str) -> list[str]:
  return re.findall(r"[^\W_]+", text.lower())


def _lexicon() -> dict:
  """language -> the words its captions use (those several languages share, such as 'orange', count
  for each)."""
  lexicon = {'en': {*shapes.SHAPES, *shapes.COLORS, *shapes.SIZES, *shapes.NUMBER_WORDS, 'a', 'an', 'and',
                    'objects', 'in', 'the', 'at', 'on', 'top', 'bottom', 'left', 'right', 'center', 'middle'}}
  for language in TRANSLATED:
    texts = [caption([dict(color=c, shape=s, size=z, x=x, y=y)], dict(with_size=[True], with_position=True,
                                                                       with_count=False), language)
             for c in shapes.COLORS for s in shapes.SHAPES for z in shapes.SIZES
             for x in (0.1, 0.5, 0.9) for y in (0.1, 0.5, 0.9)]
    two = [dict(color='red', shape='circle', size='small', x=0.1, y=0.1)] * 2
    texts += [caption(two[:1] * n, dict(with_size=[False] * n, with_position=False, with_count=True), language)
              for n in range(2, shapes.MAX_OBJECTS + 1)]
    lexicon[language] = {w for t in texts for w in _words(t)}
  return lexicon


_LEXICON = _lexicon()


def detect_language(text: str) -> str:
  """The language of `LANGUAGES` whose caption lexicon covers most of `text`'s words; '' for none or a tie."""
  words = _words(text)
  hits = sorted(((sum(w in _LEXICON[k] for w in words), k) for k in LANGUAGES), reverse=True)
  return hits[0][1] if hits[0][0] > 0 and hits[0][0] > hits[1][0] else ''
