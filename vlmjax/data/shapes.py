"""`vlmjax_shapes`: a procedurally generated shapes dataset for vision-language work.

Every image shows 1-4 coloured shapes on a textured background.  Each example
carries a short caption, a longer multi-sentence description, three hard
negative captions (attribute swap, relation swap, wrong count), the
ground-truth object list and (from version 1.1.0) question-answer pairs about
the scene, one per question type (`QUESTION_TYPES`: the colour of an object,
the number of objects, the presence of a named object, an object's position on
a 3x3 grid, the spatial relation of two objects).

Six (colour, shape) pairs -- `UNSEEN` -- never appear in `train`,
`validation` or `test` (neither in images nor in any caption text); the
`test_unseen` split consists only of single-object scenes showing exactly
those pairs, so zero-shot classification on it measures compositional
generalisation (the model has seen every colour and every shape, just never
these combinations).

Everything is generated locally from a seed; nothing is downloaded.  Each
example depends only on `(seed, split, index)` through
`np.random.default_rng([seed, split_id, index])`, and the files are written
in generation order (`disable_shuffling=True`), so record `i` of a split is
exactly `make_example(seed, split, i, image_size)`.  The questions draw from
their own RNG stream (`[seed, split_id, index, QUESTION_STREAM]`), so version
1.1.0 adds them while every field of version 1.0.0 stays bit-identical.

Version 1.2.0 adds `translations`: the short caption in German and French (`shapes_languages`),
written from the same objects and wording choices, so it draws nothing from the RNG and every
field of version 1.1.0 stays bit-identical.

Version 1.3.0 adds composed image retrieval triplets: each record's `edit` ({'kind', 'text'}: change
an object's colour or shape, add an object or remove one: 'make the red circle blue.') and, for each
split, a split `<split>_edited` whose record i is scene i after its edit, drawn anew (another
background). The edits draw from their own RNG stream (`EDIT_STREAM`), so every field and split of
version 1.2.0 stays bit-identical.

The dataset is stored as array_record and is meant to be read through the
random-access data source API, which does not need TensorFlow:

    from vlmjax.data import shapes
    dataset_dir = shapes.build('/tmp/tfds', 'tiny')
    ds = tfds.builder_from_directory(dataset_dir).as_data_source('train')
    # or, equivalently (the builder is registered on import):
    ds = tfds.data_source('vlmjax_shapes/tiny', data_dir='/tmp/tfds')

Without TensorFlow installed TFDS cannot encode numpy images, so the
generator yields PNG bytes (see `_png_bytes`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re

from etils import epath
import numpy as np
from PIL import Image, ImageDraw
import tensorflow_datasets as tfds

from vlmjax.data import shapes_languages

# ---------------------------------------------------------------------------
# Vocabulary.
# ---------------------------------------------------------------------------

SHAPES = ('circle', 'square', 'triangle', 'star', 'cross', 'diamond')
COLORS = ('red', 'green', 'blue', 'yellow', 'purple', 'orange')
SIZES = ('small', 'large')

# Class `k` is the single-object scene "<colour> <shape>"; shape-major order so
# that the classes of one shape are contiguous.
CLASS_NAMES = [f'{c} {s}' for s in SHAPES for c in COLORS]

# Held-out (colour, shape) pairs: a Latin-square diagonal, so every colour and
# every shape is held out exactly once and still appears with 5 other partners.
UNSEEN = frozenset({
    ('orange', 'circle'),
    ('red', 'square'),
    ('green', 'triangle'),
    ('blue', 'star'),
    ('yellow', 'cross'),
    ('purple', 'diamond'),
})

# Order of the three strings in the `negative_captions` feature.
NEGATIVE_KINDS = ('attribute', 'relation', 'count')

SPLITS = ('train', 'validation', 'test', 'test_unseen')
# Version 1.3.0: record i of '<split>_edited' is record i of <split> after its `edit` (composed image
# retrieval: the reference scene, the edit's text, the target scene).
EDITED_SPLITS = tuple(f'{split}_edited' for split in SPLITS)
# Part of the RNG seed, so the splits are independent streams.
SPLIT_IDS = {name: i for i, name in enumerate(SPLITS + EDITED_SPLITS)}

# Base RGB values, far apart from each other (the closest pair, red/orange,
# differs by 100 in green); each object gets +-15 jitter per channel on top.
COLOR_RGB = {
    'red': (220, 35, 35),
    'green': (35, 175, 60),
    'blue': (40, 80, 235),
    'yellow': (245, 225, 35),
    'purple': (150, 55, 205),
    'orange': (250, 135, 20),
}
COLOR_JITTER = 15

# Object "radius" as a fraction of the image side.  Each shape is drawn so
# that it fits inside a circle of about this radius (see `_shape_polygon`).
SIZE_RADIUS = {'small': 0.13, 'large': 0.20}
# Centres are kept at least this many combined radii apart, so shapes never
# overlap (square corners poke out to ~1.1 r; see `_shape_polygon`).
MIN_SEPARATION = 1.15
# Objects are drawn at this many times the image resolution and box-filtered
# down, which gives cheap antialiasing; small stars stay recognisable at 64px.
SUPERSAMPLE = 4

NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five')
MAX_OBJECTS = 4

# Question kinds of the `questions` feature (version 1.1.0), in the order a scene lists them.
QUESTION_TYPES = ('color', 'count', 'presence', 'position', 'relation')
# The last element of a scene's question RNG seed, apart from the image's stream.
QUESTION_STREAM = 1
# Every answer a question can have, in a fixed order (a classifier's answer vocabulary).
ANSWERS = (*COLORS, *NUMBER_WORDS[1:MAX_OBJECTS + 1], 'yes', 'no',
           *(f'{row} {col}' if row != 'middle' and col != 'center' else (col if row == 'middle' else row)
             for row in ('top', 'middle', 'bottom') for col in ('left', 'center', 'right')))
# What an `edit` (version 1.3.0) does to a scene, and the last element of its RNG seed.
EDIT_KINDS = ('color', 'shape', 'add', 'remove')
EDIT_STREAM = 2

# ---------------------------------------------------------------------------
# Scene sampling.
# ---------------------------------------------------------------------------


def _allowed_pairs(split: str) -> list[tuple[str, str]]:
    """The (colour, shape) pairs objects of `split` may use."""
    all_pairs = [(c, s) for s in SHAPES for c in COLORS]
    if split in ('test_unseen', 'test_unseen_edited'):
        return [p for p in all_pairs if p in UNSEEN]
    return [p for p in all_pairs if p not in UNSEEN]


def _sample_objects(rng: np.random.Generator, split: str, num_objects: int) -> list[dict]:
    """Samples `num_objects` non-overlapping objects with distinct (colour, shape).

    Distinct (colour, shape) pairs keep every caption unambiguous: "the red
    circle" always refers to one object.  Positions use rejection sampling;
    if a scene gets stuck (four large objects can box each other in) it is
    restarted from scratch, which stays deterministic because it only
    consumes more of the same RNG stream.
    """
    pairs = _allowed_pairs(split)
    while True:
        chosen = rng.choice(len(pairs), size=num_objects, replace=False)
        objects = []
        for pair_index in chosen:
            color, shape = pairs[pair_index]
            size = SIZES[rng.integers(len(SIZES))]
            radius = SIZE_RADIUS[size]
            for _ in range(100):
                # Keep the whole shape inside the frame.
                x, y = rng.uniform(radius, 1.0 - radius, size=2)
                if all(
                    math.hypot(x - o['x'], y - o['y'])
                    >= MIN_SEPARATION * (radius + SIZE_RADIUS[o['size']])
                    for o in objects
                ):
                    break
            else:
                break  # No room left for this object: restart the scene.
            objects.append(dict(shape=shape, color=color, size=size, x=float(x), y=float(y)))
        if len(objects) == num_objects:
            return objects


# ---------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------


def _background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """A random smooth gradient plus low-amplitude noise and/or stripes.

    Colours are low-saturation greys (channels within +-20 of a common level)
    so that no background can be mistaken for one of the saturated object
    colours; the texture is there so that the model cannot find objects by
    looking for "anything that is not flat".
    """
    def muted_color():
        level = rng.uniform(70, 180)
        return level + rng.uniform(-20, 20, size=3)

    coords = (np.arange(image_size) + 0.5) / image_size
    yy, xx = np.meshgrid(coords, coords, indexing='ij')
    angle = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / (t.max() - t.min() + 1e-6)
    image = muted_color() * (1 - t[..., None]) + muted_color() * t[..., None]

    texture = rng.integers(3)  # 0: noise, 1: stripes, 2: both.
    if texture in (0, 2):
        image += rng.normal(0, rng.uniform(2, 7), size=image.shape)
    if texture in (1, 2):
        stripe_angle = rng.uniform(0, np.pi)
        period_px = rng.uniform(3, 10)
        phase = (xx * np.cos(stripe_angle) + yy * np.sin(stripe_angle)) * image_size
        image += rng.uniform(3, 9) * np.sin(2 * np.pi * phase / period_px + rng.uniform(0, 2 * np.pi))[..., None]
    return image


def _star_points(cx, cy, r, num_points=5, inner_ratio=0.45):
    points = []
    for k in range(2 * num_points):
        rad = r if k % 2 == 0 else r * inner_ratio
        angle = -np.pi / 2 + k * np.pi / num_points  # First tip points up.
        points.append((cx + rad * np.cos(angle), cy + rad * np.sin(angle)))
    return points


def _shape_polygon(shape: str, cx: float, cy: float, r: float):
    """Polygon vertices (pixels) of `shape` centred at (cx, cy), radius r.

    Radii are tuned so the shapes look about equally big: the square's
    half-side is 0.8 r (corners at 1.13 r), the triangle is shifted down a
    bit so its visual centre sits on (cx, cy).
    """
    if shape == 'square':
        h = 0.8 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == 'triangle':
        top = cy - 0.95 * r
        bottom = cy + 0.75 * r
        half_width = 1.0 * r
        return [(cx, top), (cx + half_width, bottom), (cx - half_width, bottom)]
    if shape == 'star':
        return _star_points(cx, cy, 1.1 * r)
    if shape == 'cross':
        a, w = 1.0 * r, 0.36 * r  # Arm length, arm half-width.
        return [
            (cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w),
            (cx + a, cy + w), (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a),
            (cx - w, cy + w), (cx - a, cy + w), (cx - a, cy - w), (cx - w, cy - w),
        ]
    if shape == 'diamond':
        a = 1.1 * r
        return [(cx, cy - a), (cx + 0.8 * a, cy), (cx, cy + a), (cx - 0.8 * a, cy)]
    raise ValueError(f'Unknown polygon shape {shape!r}')


def _object_mask(obj: dict, image_size: int) -> np.ndarray:
    """Antialiased coverage mask in [0, 1] of one object, shape (S, S)."""
    big = image_size * SUPERSAMPLE
    mask = Image.new('L', (big, big), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = obj['x'] * big, obj['y'] * big, SIZE_RADIUS[obj['size']] * big
    if obj['shape'] == 'circle':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_shape_polygon(obj['shape'], cx, cy, r), fill=255)
    mask = mask.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(mask, dtype=np.float32) / 255.0


def render_scene(rng: np.random.Generator, objects: list[dict], image_size: int) -> np.ndarray:
    """Draws `objects` on a random textured background; returns uint8 (S, S, 3)."""
    image = _background(rng, image_size)
    for obj in objects:
        jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)
        color = np.clip(np.array(COLOR_RGB[obj['color']]) + jitter, 0, 255)
        alpha = _object_mask(obj, image_size)[..., None]
        image = image * (1 - alpha) + color * alpha
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _png_bytes(image: np.ndarray) -> bytes:
    """PNG-encodes an image; TFDS needs TensorFlow to encode numpy arrays itself."""
    buffer = io.BytesIO()
    # Fixed compression settings so the bytes are reproducible across runs.
    Image.fromarray(image).save(buffer, format='PNG', compress_level=6, optimize=False)
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# Language.
# ---------------------------------------------------------------------------


def _article(next_word: str) -> str:
    return 'an' if next_word[0] in 'aeiou' else 'a'


def _with_article(phrase: str) -> str:
    return f'{_article(phrase)} {phrase}'


def _name(obj: dict) -> str:
    """'<colour> <shape>', which identifies an object within its scene."""
    return f"{obj['color']} {obj['shape']}"


def _describe(obj: dict, with_size: bool) -> str:
    """'a large red circle' or 'a red circle'."""
    phrase = f"{obj['size']} {_name(obj)}" if with_size else _name(obj)
    return _with_article(phrase)


def _grid_cell(x: float, y: float) -> tuple[str, str]:
    """(row, column) of a point on a 3x3 grid; row in top/middle/bottom."""
    row = 'top' if y < 1 / 3 else ('bottom' if y > 2 / 3 else 'middle')
    col = 'left' if x < 1 / 3 else ('right' if x > 2 / 3 else 'center')
    return row, col


def _position_phrase(row: str, col: str) -> str:
    """'in the top left', 'at the top', 'on the left', 'in the center'."""
    if row == 'middle' and col == 'center':
        return 'in the center'
    if row == 'middle':
        return f'on the {col}'
    if col == 'center':
        return f'at the {row}'
    return f'in the {row} {col}'


_MIRROR = {'top': 'bottom', 'bottom': 'top', 'left': 'right', 'right': 'left',
           'middle': 'middle', 'center': 'center'}


def _mirrored_cell(row: str, col: str) -> tuple[str, str]:
    """The opposite grid cell (top left -> bottom right); the centre maps to a corner."""
    if (row, col) == ('middle', 'center'):
        return ('top', 'left')
    return _MIRROR[row], _MIRROR[col]


def _relation(a: dict, b: dict) -> str:
    """Spatial relation of `a` with respect to `b` along the dominant axis.

    Image y grows downwards, so a smaller y means "above".
    """
    dx, dy = a['x'] - b['x'], a['y'] - b['y']
    if abs(dx) >= abs(dy):
        return 'left of' if dx < 0 else 'right of'
    return 'above' if dy < 0 else 'below'


_REVERSED_RELATION = {'left of': 'right of', 'right of': 'left of', 'above': 'below', 'below': 'above'}


def _count_sentence(n: int) -> str:
    if n == 1:
        return 'there is one object.'
    return f'there are {NUMBER_WORDS[n]} objects.'


def _capitalize(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _caption(objects: list[dict], template: dict) -> str:
    """Short caption; `template` fixes the wording so negatives can reuse it.

    template keys: 'with_size' (one bool per object), 'with_position' (single
    object only: append the grid position), 'with_count' (multi-object only:
    prefix "three objects:").
    """
    parts = [_describe(o, s) for o, s in zip(objects, template['with_size'])]
    if len(objects) == 1:
        text = parts[0]
        if template['with_position']:
            text += ' ' + _position_phrase(*_grid_cell(objects[0]['x'], objects[0]['y']))
        return text + '.'
    listing = ', '.join(parts[:-1]) + ' and ' + parts[-1]
    if template['with_count']:
        listing = f'{NUMBER_WORDS[len(objects)]} objects: {listing}'
    return listing + '.'


def _long_caption(objects: list[dict]) -> str:
    """One sentence per object, one per ordered pair (i < j), then the count."""
    sentences = []
    for o in objects:
        position = _position_phrase(*_grid_cell(o['x'], o['y']))
        sentences.append(f'there is {_describe(o, True)} {position}.')
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            a, b = objects[i], objects[j]
            sentences.append(f'the {_name(a)} is {_relation(a, b)} the {_name(b)}.')
    sentences.append(_count_sentence(len(objects)))
    return ' '.join(_capitalize(s) for s in sentences)


def _attribute_negative(rng, objects, template, split) -> str:
    """The caption with colours swapped between two objects.

    Only pairs with different colours AND different shapes are swapped:
    swapping within same-shape objects ("red circle and blue circle") would
    just reorder a true description.  Single-object scenes (and scenes with no
    such pair) instead get one object's colour replaced.  Outside
    `test_unseen` the result never names an UNSEEN pair, so train text never
    mentions the held-out combinations either.
    """
    def ok(objs):
        return split == 'test_unseen' or all((o['color'], o['shape']) not in UNSEEN for o in objs)

    candidates = []
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            a, b = objects[i], objects[j]
            if a['color'] == b['color'] or a['shape'] == b['shape']:
                continue
            swapped = [dict(o) for o in objects]
            swapped[i]['color'], swapped[j]['color'] = b['color'], a['color']
            if ok(swapped):
                candidates.append(swapped)
    if not candidates:
        present = {_name(o) for o in objects}
        for i, obj in enumerate(objects):
            for color in COLORS:
                changed = [dict(o) for o in objects]
                changed[i]['color'] = color
                # The new name must not describe any object actually present.
                if color != obj['color'] and _name(changed[i]) not in present and ok(changed):
                    candidates.append(changed)
    chosen = candidates[rng.integers(len(candidates))]
    return _caption(chosen, template)


def _relation_negative(rng, objects, template) -> str:
    """A false spatial statement: a reversed pair relation, or a mirrored position."""
    if len(objects) == 1:
        obj = objects[0]
        row, col = _mirrored_cell(*_grid_cell(obj['x'], obj['y']))
        return f"{_describe(obj, template['with_size'][0])} {_position_phrase(row, col)}."
    i, j = sorted(rng.choice(len(objects), size=2, replace=False))
    a, b = objects[i], objects[j]
    return f'the {_name(a)} is {_REVERSED_RELATION[_relation(a, b)]} the {_name(b)}.'


def _count_negative(rng, num_objects: int) -> str:
    wrong = [n for n in range(1, MAX_OBJECTS + 2) if n != num_objects]
    return _count_sentence(int(wrong[rng.integers(len(wrong))]))


# ---------------------------------------------------------------------------
# Questions.
# ---------------------------------------------------------------------------


def _position_answer(obj: dict) -> str:
    """The grid cell as a short answer: 'top left', 'top', 'left', 'center'."""
    return _position_phrase(*_grid_cell(obj['x'], obj['y'])).split(' ', 2)[-1]


def _color_question(rng, objects) -> dict | None:
    """'what color is the <shape>?' about an object its shape alone names (else its size and
    shape); None when every object shares both with another."""
    for words in (lambda o: o['shape'], lambda o: f"{o['size']} {o['shape']}"):
        unique = [o for o in objects if sum(words(p) == words(o) for p in objects) == 1]
        if unique:
            obj = unique[rng.integers(len(unique))]
            return dict(type='color', question=f'what color is the {words(obj)}?', answer=obj['color'])
    return None


def _presence_question(rng, objects, split) -> dict:
    """'is there a <colour> <shape>?': yes (an object of the scene) or no (a pair the split may
    show, absent from the scene), each half the time."""
    if rng.integers(2):
        return dict(type='presence', question=f'is there {_describe(objects[rng.integers(len(objects))], False)}?',
                    answer='yes')
    present = {(o['color'], o['shape']) for o in objects}
    absent = [p for p in _allowed_pairs(split) if p not in present]
    color, shape = absent[rng.integers(len(absent))]
    return dict(type='presence', question=f'is there {_with_article(f"{color} {shape}")}?', answer='no')


def _relation_question(rng, objects) -> dict:
    """'is the <a> left of the <b>?' with the true or the reversed relation, each half the time."""
    i, j = sorted(rng.choice(len(objects), size=2, replace=False))
    a, b = objects[i], objects[j]
    relation, truth = _relation(a, b), bool(rng.integers(2))
    asked = relation if truth else _REVERSED_RELATION[relation]
    return dict(type='relation', question=f'is the {_name(a)} {asked} the {_name(b)}?',
                answer='yes' if truth else 'no')


def make_questions(seed: int, split: str, index: int, objects: list[dict]) -> list[dict]:
    """Question-answer pairs about scene `index` of `split`: {'type', 'question', 'answer'}, one per
    type of `QUESTION_TYPES` that the scene allows (no relation with one object; no colour question
    when no object can be named without it). Answers are one or two words. A pure function of its
    arguments, drawn from the scene's own question stream."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index, QUESTION_STREAM])
    questions = [_color_question(rng, objects),
                 dict(type='count', question='how many objects are there?', answer=NUMBER_WORDS[len(objects)]),
                 _presence_question(rng, objects, split)]
    obj = objects[rng.integers(len(objects))]
    questions.append(dict(type='position', question=f'where is the {_name(obj)}?', answer=_position_answer(obj)))
    if len(objects) > 1:
        questions.append(_relation_question(rng, objects))
    return [q for q in questions if q is not None]


# ---------------------------------------------------------------------------
# Examples.
# ---------------------------------------------------------------------------


def make_example(seed: int, split: str, index: int, image_size: int = 64) -> dict:
    """Generates example `index` of `split`; a pure function of its arguments.

    Returns a dict with the builder's feature keys, except that `image` is a
    uint8 numpy array (the builder PNG-encodes it).
    """
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    objects = _scene_objects(rng, split, index)
    example = _describe_scene(rng, split, objects, image_size)
    return dict(
        example,
        questions=make_questions(seed, split, index, objects),
        translations=translations(objects, example.pop('template')),
        edit=make_edit(seed, split, index, objects)[0],
    )


def _scene_objects(rng: np.random.Generator, split: str, index: int) -> list[dict]:
    """The objects of scene `index`, drawn first from its RNG stream. Even indices are single-object
    scenes and odd ones 2-4 objects (test_unseen: all single), which gives an exact 50/50 mix."""
    single = split == 'test_unseen' or index % 2 == 0
    num_objects = 1 if single else int(rng.integers(2, MAX_OBJECTS + 1))
    return _sample_objects(rng, split, num_objects)


def _describe_scene(rng: np.random.Generator, split: str, objects: list[dict], image_size: int) -> dict:
    """The image, texts and annotations of a scene of `objects`, drawn from `rng` after its objects;
    'template' is the short caption's wording (which the translations follow)."""
    num_objects = len(objects)
    single = num_objects == 1
    image = render_scene(rng, objects, image_size)

    template = dict(
        with_size=[bool(rng.integers(2)) for _ in objects],
        with_position=bool(rng.integers(2)),
        with_count=bool(rng.integers(2)),
    )
    negatives = [
        _attribute_negative(rng, objects, template, split),
        _relation_negative(rng, objects, template),
        _count_negative(rng, num_objects),
    ]
    label = CLASS_NAMES.index(_name(objects[0])) if single else -1
    return dict(
        image=image,
        caption=_caption(objects, template),
        long_caption=_long_caption(objects),
        negative_captions=negatives,
        objects=objects,
        label=label,
        num_objects=num_objects,
        template=template,
    )


# ---------------------------------------------------------------------------
# Edits (composed image retrieval).
# ---------------------------------------------------------------------------


def _free_position(rng, objects: list[dict], size: str):
    """(x, y) for a new object of `size` clear of `objects` (as `_sample_objects` places them), or None."""
    radius = SIZE_RADIUS[size]
    for _ in range(100):
        x, y = rng.uniform(radius, 1.0 - radius, size=2)
        if all(math.hypot(x - o['x'], y - o['y']) >= MIN_SEPARATION * (radius + SIZE_RADIUS[o['size']])
               for o in objects):
            return float(x), float(y)
    return None


def make_edit(seed: int, split: str, index: int, objects: list[dict]) -> tuple[dict, list[dict]]:
    """The edit of scene `index` of `split` and the scene it makes: ({'kind', 'text'}, edited objects).

    kind (`EDIT_KINDS`): 'color' ('make the red circle blue.'), 'shape' ('turn the red circle into a
    star.'), 'add' ('add a small green star.', at a free place) or 'remove' ('remove the red circle.',
    scenes of 2+ objects). The edited scene keeps the other objects where they are, its (colour,
    shape) pairs stay distinct and allowed in `split` (test_unseen scenes can only gain an object).
    Drawn from the scene's own edit stream, so every other field stays as it was."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index, EDIT_STREAM])
    allowed = set(_allowed_pairs(split))
    present = {(o['color'], o['shape']) for o in objects}
    for kind in [EDIT_KINDS[k] for k in rng.permutation(len(EDIT_KINDS))]:
        i = int(rng.integers(len(objects)))
        obj, edited = objects[i], [dict(o) for o in objects]
        if kind == 'remove' and len(objects) > 1:
            del edited[i]
            return dict(kind=kind, text=f'remove the {_name(obj)}.'), edited
        if kind in ('color', 'shape'):
            key, values = (kind, COLORS) if kind == 'color' else (kind, SHAPES)
            options = [v for v in values if v != obj[key] and (
                (v, obj['shape']) if kind == 'color' else (obj['color'], v)) in allowed - present]
            if options:
                edited[i][key] = options[int(rng.integers(len(options)))]
                text = (f"make the {_name(obj)} {edited[i]['color']}." if kind == 'color'
                        else f"turn the {_name(obj)} into {_with_article(edited[i]['shape'])}.")
                return dict(kind=kind, text=text), edited
        if kind == 'add' and len(objects) < MAX_OBJECTS:
            options = sorted(allowed - present)
            for size in [SIZES[k] for k in rng.permutation(len(SIZES))]:
                where = _free_position(rng, objects, size)
                if where:
                    color, shape = options[int(rng.integers(len(options)))]
                    new = dict(shape=shape, color=color, size=size, x=where[0], y=where[1])
                    return dict(kind=kind, text=f'add {_describe(new, True)}.'), edited + [new]
    raise AssertionError(f'scene {index} of {split} allows no edit')  # every scene allows a colour or an add


_OBJECT_PHRASE = re.compile(rf"\b(?:a|an) (?:(small|large) )?({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")
_EDIT_PATTERNS = {
    'color': re.compile(rf"^make the ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) ({'|'.join(COLORS)})\.?$"),
    'shape': re.compile(rf"^turn the ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) into an? ({'|'.join(SHAPES)})\.?$"),
    'remove': re.compile(rf"^remove the ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\.?$"),
    'add': re.compile(rf"^add (?:a|an) (?:(small|large) )?({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\.?$"),
}


def edit_caption(caption: str, edit_text: str) -> str:
    """A caption of the scene an edit makes, from the caption of the scene before it: CIReVL's
    language step (its LLM recomposes the caption), done by this dataset's grammar. The caption's
    objects ('a small red circle') are read, the edit applied to the one it names (an object the
    caption does not mention -- a captioner's miss -- is added as the edit describes it), and the
    short caption written again (no position, no count). ValueError for an edit it cannot read."""
    text = edit_text.strip().lower()
    kind, match = next(((k, m) for k, p in _EDIT_PATTERNS.items() if (m := p.match(text))), (None, None))
    if kind is None:
        raise ValueError(f'edit_caption: cannot read the edit {edit_text!r}')
    objects = [dict(size=size, color=color, shape=shape) for size, color, shape in
               _OBJECT_PHRASE.findall(caption.lower())]
    if kind == 'add':
        objects.append(dict(size=match.group(1) or '', color=match.group(2), shape=match.group(3)))
    else:
        named = [o for o in objects if (o['color'], o['shape']) == match.group(1, 2)]
        if kind == 'remove':
            objects = [o for o in objects if o not in named] or objects
        else:
            if not named:
                objects.append(dict(size='', color=match.group(1), shape=match.group(2)))
                named = objects[-1:]
            named[0]['color' if kind == 'color' else 'shape'] = match.group(3)
    if not objects:
        return caption
    return _caption([dict(o, size=o['size'] or 'small') for o in objects],
                    dict(with_size=[bool(o['size']) for o in objects], with_position=False, with_count=False))


def make_edited_example(seed: int, split: str, index: int, image_size: int = 64) -> dict:
    """Record `index` of `<split>_edited`: scene `index` of `split` after its edit, drawn anew (another
    background and colour jitter) from the edited split's own stream, with every field a record has.
    Its label is the class of a single-object result, -1 otherwise; its own edit is empty."""
    objects = _scene_objects(np.random.default_rng([seed, SPLIT_IDS[split], index]), split, index)
    _, edited = make_edit(seed, split, index, objects)
    edited_split = f'{split}_edited'
    rng = np.random.default_rng([seed, SPLIT_IDS[edited_split], index])
    example = _describe_scene(rng, split, edited, image_size)
    return dict(
        example,
        questions=make_questions(seed, edited_split, index, edited),
        translations=translations(edited, example.pop('template')),
        edit=dict(kind='', text=''),
    )


def object_names(objects) -> list[str]:
    """The sorted distinct '<colour> <shape>' names of a TFDS-decoded record's `objects`."""
    return sorted({f'{COLORS[int(c)]} {SHAPES[int(s)]}' for s, c in zip(objects['shape'], objects['color'])})


def _object_dicts(objects) -> list[dict]:
    """A TFDS-decoded record's `objects` (a dict of arrays with class-label ids) -> object dicts."""
    return [dict(shape=SHAPES[int(s)], color=COLORS[int(c)], size=SIZES[int(z)], x=float(x), y=float(y))
            for s, c, z, x, y in zip(objects['shape'], objects['color'], objects['size'],
                                     objects['x'], objects['y'])]


def object_box(obj: dict) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1), in [0, 1] image coordinates, of the polygon or circle `_object_mask` draws."""
    r = SIZE_RADIUS[obj['size']]
    if obj['shape'] == 'circle':
        return obj['x'] - r, obj['y'] - r, obj['x'] + r, obj['y'] + r
    xs, ys = zip(*_shape_polygon(obj['shape'], obj['x'], obj['y'], r))
    return float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))


# The attributes a region carries (`regions[i]['attributes']`), each a class index.
REGION_ATTRIBUTES = {'color': COLORS, 'shape': SHAPES, 'size': SIZES}


def regions_and_triplets(objects) -> tuple[list[dict], list[tuple]]:
    """A TFDS-decoded record's `objects` -> the dataset-independent region records of
    `vlmjax.data.regions`: (regions, triplets).

    regions: per object {'box': (x0, y0, x1, y1) in [0, 1], 'label': its class index in
    CLASS_NAMES, 'text': 'a small red circle', 'attributes': (colour, shape, size) indices};
    triplets: (subject, relation, object) for every ordered pair of objects, the relation as the
    captions say it ('left of', 'above', ...)."""
    objects = _object_dicts(objects)
    regions = [{'box': object_box(o), 'label': CLASS_NAMES.index(f"{o['color']} {o['shape']}"),
                'text': f"a {o['size']} {o['color']} {o['shape']}",
                'attributes': tuple(values.index(o[key]) for key, values in REGION_ATTRIBUTES.items())}
               for o in objects]
    triplets = [(i, _relation(a, b), j) for i, a in enumerate(objects) for j, b in enumerate(objects) if i != j]
    return regions, triplets


def reference_captions(objects, language: str = 'en') -> list[str]:
    """Every short caption the generator could have written for a scene (each choice of which
    objects name their size, of the position phrase for one object, of the count prefix for
    several), for captioning metrics with multiple references as on COCO; in `language`
    (`LANGUAGES`), the translations of those.

    `objects`: a list of object dicts, or a TFDS-decoded record's `objects` (a dict of arrays with
    class-label ids for shape, colour and size).
    """
    if isinstance(objects, dict):
        objects = _object_dicts(objects)
    out = []
    for sizes in range(2 ** len(objects)):
        for flag in (False, True):
            template = dict(with_size=[bool(sizes >> i & 1) for i in range(len(objects))],
                            with_position=flag, with_count=flag)
            caption = caption_in(objects, template, language)
            if caption not in out:
                out.append(caption)
    return out


# ---------------------------------------------------------------------------
# Languages (version 1.2.0): English here, German and French in `shapes_languages`.
# ---------------------------------------------------------------------------

LANGUAGES = ('en', *shapes_languages.TRANSLATED)


def caption_in(objects: list[dict], template: dict, language: str) -> str:
    """The short caption of `objects`, worded by `template`, in `language`."""
    if language == 'en':
        return _caption(objects, template)
    cell = _grid_cell(objects[0]['x'], objects[0]['y']) if len(objects) == 1 else None
    return shapes_languages.caption(objects, template, language, cell)


def translations(objects: list[dict], template: dict) -> dict:
    """{language: the short caption in it} for every language but English (the `translations` field)."""
    return {language: caption_in(objects, template, language) for language in shapes_languages.TRANSLATED}


def prompts_in(language: str):
    """-> a function English class name -> its zero-shot prompts in `language`."""
    if language == 'en':
        return zero_shot_prompts
    shapes_languages.check(language)
    return lambda name: shapes_languages.prompts(name, language)


_LEXICONS = {'en': {*SHAPES, *COLORS, *SIZES, *NUMBER_WORDS, 'a', 'an', 'and', 'objects', 'in', 'the', 'at', 'on',
                    'top', 'bottom', 'left', 'right', 'center'},
             **{language: shapes_languages.lexicon(language) for language in shapes_languages.TRANSLATED}}


def detect_language(text: str) -> str:
    """The language of `LANGUAGES` whose caption words cover most of `text`'s words; '' for none or a tie."""
    words = shapes_languages.words(text)
    hits = sorted(((sum(w in _LEXICONS[k] for w in words), k) for k in LANGUAGES), reverse=True)
    return hits[0][1] if hits[0][0] > 0 and hits[0][0] > hits[1][0] else ''


def zero_shot_prompts(class_name: str) -> list[str]:
    """Prompt templates for zero-shot classification of `class_name` ('red circle').

    They use the captions' own words: a model trained only on these captions has never seen
    'a photo of', so such a prompt would only add noise to the ensemble.
    """
    return [
        f'{_with_article(class_name)}.',
        f'a small {class_name}.',
        f'a large {class_name}.',
        f'there is {_with_article(class_name)}.',
    ]


# ---------------------------------------------------------------------------
# TFDS builder.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Split sizes, image size and seed of one `vlmjax_shapes` variant."""

    num_train: int = 20000
    num_validation: int = 1000
    num_test: int = 2000
    num_test_unseen: int = 1000
    image_size: int = 64
    seed: int = 0

    def split_sizes(self) -> dict[str, int]:
        return {
            'train': self.num_train,
            'validation': self.num_validation,
            'test': self.num_test,
            'test_unseen': self.num_test_unseen,
        }


class VlmjaxShapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic coloured-shapes scenes with captions and hard negatives."""

    VERSION = tfds.core.Version('1.3.0')
    SUPPORTED_VERSIONS = [tfds.core.Version(v) for v in ('1.0.0', '1.1.0', '1.2.0')]
    RELEASE_NOTES = {
        '1.0.0': 'Initial release.',
        '1.1.0': 'Adds `questions` (type, question, answer); every 1.0.0 field is unchanged.',
        '1.2.0': 'Adds `translations` (the caption in German and French); every 1.1.0 field is unchanged.',
        '1.3.0': 'Adds `edit` (kind, text) and the <split>_edited splits (each record after its edit); '
                 'every 1.2.0 field and split is unchanged.',
    }
    BUILDER_CONFIGS = [
        ShapesConfig(name='default', description='20k train images at 64x64.'),
        ShapesConfig(
            name='tiny',
            description='Small 32x32 variant for tests.',
            num_train=512, num_validation=128, num_test=128, num_test_unseen=128,
            image_size=32,
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = 'default'
    # TFDS 4.9.x derives this from the package via `importlib_resources`, which
    # is not installed on Python >= 3.9 (it is only a dependency below 3.9) and
    # then crashes download_and_prepare.  It is only used to look for a
    # checksums file next to the code; there is none, as nothing is downloaded.
    code_path = epath.Path(__file__)

    def __init__(self, *, file_format='array_record', **kwargs):
        # TFDS defaults to tfrecord, whose data source needs TensorFlow;
        # array_record gives random access without it.
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # Build DatasetInfo directly: `dataset_info_from_configs` looks for
        # metadata files in the builder's package folder, which we do not have.
        size = self.builder_config.image_size
        questions = {} if self.version < '1.1.0' else {
            'questions': tfds.features.Sequence(tfds.features.FeaturesDict({
                'type': tfds.features.ClassLabel(names=QUESTION_TYPES),
                'question': tfds.features.Text(),
                'answer': tfds.features.Text(),
            })),
        }
        translation_features = {} if self.version < '1.2.0' else {
            'translations': tfds.features.FeaturesDict(
                {language: tfds.features.Text() for language in shapes_languages.TRANSLATED}),
        }
        edit = {} if self.version < '1.3.0' else {
            'edit': tfds.features.FeaturesDict({'kind': tfds.features.Text(), 'text': tfds.features.Text()}),
        }
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                **questions,
                **translation_features,
                **edit,
                'image': tfds.features.Image(shape=(size, size, 3), encoding_format='png'),
                'caption': tfds.features.Text(),
                'long_caption': tfds.features.Text(),
                'negative_captions': tfds.features.Sequence(tfds.features.Text(), length=len(NEGATIVE_KINDS)),
                'objects': tfds.features.Sequence(tfds.features.FeaturesDict({
                    'shape': tfds.features.ClassLabel(names=SHAPES),
                    'color': tfds.features.ClassLabel(names=COLORS),
                    'size': tfds.features.ClassLabel(names=SIZES),
                    'x': tfds.features.Scalar(dtype=np.float32),
                    'y': tfds.features.Scalar(dtype=np.float32),
                })),
                'label': tfds.features.Scalar(dtype=np.int64),
                'num_objects': tfds.features.Scalar(dtype=np.int64),
            }),
            supervised_keys=None,
            # Keep generation order on disk, so record i of a split is
            # make_example(seed, split, i); training pipelines shuffle anyway.
            # (A DatasetInfo argument, not a builder attribute.)
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(class_names=CLASS_NAMES, unseen=sorted(UNSEEN)),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        sizes = self.builder_config.split_sizes()
        splits = {split: self._generate_examples(split, n) for split, n in sizes.items()}
        if self.version >= '1.3.0':
            splits.update({f'{split}_edited': self._generate_examples(split, n, edited=True)
                           for split, n in sizes.items()})
        return splits

    def _generate_examples(self, split: str, num_examples: int, edited: bool = False):
        config = self.builder_config
        make = make_edited_example if edited else make_example
        for index in range(num_examples):
            example = make(config.seed, split, index, config.image_size)
            example['image'] = _png_bytes(example['image'])
            if self.version < '1.1.0':
                del example['questions']
            if self.version < '1.2.0':
                del example['translations']
            if self.version < '1.3.0':
                del example['edit']
            yield index, example


def build(data_dir: str, config: str = 'default', **overrides) -> str:
    """Generates the dataset under `data_dir` (no-op if already there).

    `overrides` replace fields of the named config, e.g.
    `build(d, 'tiny', num_train=64)`.  Such a variant gets its own config name,
    `<config>_<8 hex digits of a hash of the overrides>`, so different
    variants never collide on disk; it can be read back through the returned
    directory or with `tfds.data_source('vlmjax_shapes/<that name>', ...)`.

    Returns the prepared dataset directory
    (`<data_dir>/vlmjax_shapes/<config>/<VERSION>`), which is what
    `tfds.builder_from_directory(...).as_data_source(split)` takes.
    """
    builder_config = next(
        (c for c in VlmjaxShapes.BUILDER_CONFIGS if c.name == config), None
    )
    if builder_config is None:
        raise ValueError(f'Unknown config {config!r}; known: {[c.name for c in VlmjaxShapes.BUILDER_CONFIGS]}')
    if overrides:
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
        builder_config = dataclasses.replace(
            builder_config,
            name=f'{config}_{digest}',
            description=f'{config} with overrides {overrides}',
            **overrides,
        )
    builder = VlmjaxShapes(data_dir=data_dir, config=builder_config)
    # The file format comes from the builder (array_record by default); this
    # tfds version's DownloadConfig has no `file_format` argument.
    builder.download_and_prepare()
    return str(builder.data_dir)


def build_command(argv, description: str, name: str, builder_configs, build_fn):
    """The command line of a built-in dataset's module: --data_dir DIR [--config NAME] -> built."""
    import argparse
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--data_dir', default='data/tfds')
    parser.add_argument('--config', default='default', choices=[c.name for c in builder_configs])
    args = parser.parse_args(argv)
    print(f'{name}/{args.config} is in {build_fn(args.data_dir, args.config)}')


def main(argv=None):
    """python -m vlmjax.data.shapes --data_dir DIR [--config default|tiny]: build the dataset."""
    build_command(argv, main.__doc__, 'vlmjax_shapes', VlmjaxShapes.BUILDER_CONFIGS, build)


if __name__ == '__main__':
    main()
