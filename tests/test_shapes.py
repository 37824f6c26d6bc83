"""Tests for the `vlmjax_shapes` TFDS builder (vlmjax/data/shapes.py).

Builds the `tiny` config (32x32, 512/128/128/128 examples, ~2 s) into
temporary directories and reads it back through the TFDS random-access data
source, which must work without TensorFlow.
"""

import hashlib
import pathlib
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vlmjax.data import shapes

TINY_SIZES = {'train': 512, 'validation': 128, 'test': 128, 'test_unseen': 128}


@pytest.fixture(scope='module')
def tiny_dirs(tmp_path_factory):
    """The `tiny` config built twice, into two unrelated data dirs."""
    first = shapes.build(str(tmp_path_factory.mktemp('tfds_a')), 'tiny')
    second = shapes.build(str(tmp_path_factory.mktemp('tfds_b')), 'tiny')
    return first, second


@pytest.fixture(scope='module')
def sources(tiny_dirs):
    builder = tfds.builder_from_directory(tiny_dirs[0])
    return {split: builder.as_data_source(split) for split in shapes.SPLITS}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(example) -> list[tuple[str, str]]:
    """(colour, shape) names of the objects of a decoded example."""
    objects = example['objects']
    return [
        (shapes.COLORS[c], shapes.SHAPES[s])
        for c, s in zip(objects['color'], objects['shape'])
    ]


def test_vocabulary():
    assert len(shapes.CLASS_NAMES) == 36
    assert len(shapes.UNSEEN) == 6
    # One held-out pair per colour and per shape.
    assert sorted(c for c, _ in shapes.UNSEEN) == sorted(shapes.COLORS)
    assert sorted(s for _, s in shapes.UNSEEN) == sorted(shapes.SHAPES)
    assert shapes.NEGATIVE_KINDS == ('attribute', 'relation', 'count')
    prompts = shapes.zero_shot_prompts('orange circle')
    assert len(prompts) >= 3
    assert all('orange circle' in p for p in prompts)
    assert 'an orange circle.' in prompts


def test_split_lengths_and_image(tiny_dirs, sources):
    assert pathlib.Path(tiny_dirs[0]).name == '1.3.0'
    for split, n in TINY_SIZES.items():
        assert len(sources[split]) == n
    image = sources['train'][0]['image']
    assert image.shape == (32, 32, 3)
    assert image.dtype == np.uint8
    # A real picture, not a blank canvas.
    assert image.std() > 5


def test_registered_name_reads_back(tiny_dirs):
    data_dir = str(pathlib.Path(tiny_dirs[0]).parents[2])
    source = tfds.data_source('vlmjax_shapes/tiny', data_dir=data_dir, split='validation', download=False)
    assert len(source) == TINY_SIZES['validation']


def test_deterministic(tiny_dirs, sources):
    # Same files, byte for byte, from two independent builds.
    for split in shapes.SPLITS:
        a = sorted(pathlib.Path(tiny_dirs[0]).glob(f'*-{split}.array_record*'))
        b = sorted(pathlib.Path(tiny_dirs[1]).glob(f'*-{split}.array_record*'))
        assert [p.name for p in a] == [p.name for p in b] and a
        for pa, pb in zip(a, b):
            assert pa.read_bytes() == pb.read_bytes(), pa.name
    # Record i on disk is make_example(seed, split, i): order is not shuffled.
    other = tfds.builder_from_directory(tiny_dirs[1]).as_data_source('train')
    for index in (0, 1, 7, 300):
        stored, again = sources['train'][index], other[index]
        expected = shapes.make_example(0, 'train', index, image_size=32)
        np.testing.assert_array_equal(stored['image'], again['image'])
        np.testing.assert_array_equal(stored['image'], expected['image'])
        assert _text(stored['caption']) == expected['caption']
        assert _text(stored['long_caption']) == expected['long_caption']


def test_no_unseen_pairs_outside_test_unseen(sources):
    unseen_names = [f'{c} {s}' for c, s in shapes.UNSEEN]
    for split in ('train', 'validation', 'test'):
        for i in range(len(sources[split])):
            example = sources[split][i]
            assert not set(_pairs(example)) & shapes.UNSEEN
            # The held-out combinations are absent from the text too.
            texts = [example['caption'], example['long_caption'], *example['negative_captions']]
            for text in texts:
                assert not any(name in _text(text) for name in unseen_names), text


def test_test_unseen_is_single_unseen_objects(sources):
    source = sources['test_unseen']
    seen_labels = set()
    for i in range(len(source)):
        example = source[i]
        assert example['num_objects'] == 1
        color, shape = _pairs(example)[0]
        assert (color, shape) in shapes.UNSEEN
        assert shapes.CLASS_NAMES[example['label']] == f'{color} {shape}'
        seen_labels.add(int(example['label']))
    assert len(seen_labels) == 6  # All six held-out classes occur.


def test_labels_captions_and_negatives(sources):
    source = sources['train']
    num_single = 0
    for i in range(len(source)):
        example = source[i]
        caption = _text(example['caption'])
        long_caption = _text(example['long_caption'])
        negatives = [_text(n) for n in example['negative_captions']]
        pairs = _pairs(example)
        assert example['num_objects'] == len(pairs)
        assert 1 <= len(pairs) <= 4
        assert len(caption.split()) < 20
        # Every object is named '<colour> <shape>' in both captions.
        for color, shape in pairs:
            assert f'{color} {shape}' in caption
            assert f'{color} {shape}' in long_caption
        if len(pairs) == 1:
            num_single += 1
            assert shapes.CLASS_NAMES[example['label']] == ' '.join(pairs[0])
            assert 'There is one object.' in long_caption
        else:
            assert example['label'] == -1
            assert f'There are {shapes.NUMBER_WORDS[len(pairs)]} objects.' in long_caption
        # Three hard negatives, none equal to a true statement.
        assert len(negatives) == len(shapes.NEGATIVE_KINDS) == 3
        assert len(set(negatives)) == 3
        assert caption not in negatives
        attribute, relation, count = negatives
        assert relation not in long_caption.lower()
        assert count not in long_caption.lower()
        assert count.startswith('there ')
    # Even indices are single-object scenes: an exact 50/50 mix.
    assert num_single == len(source) // 2


# sha256 of every 1.0.0 field of every record of `tiny` (all splits, in order), as version 1.0.0 of
# the builder wrote them: version 1.1.0 only adds `questions`.
TINY_1_0_0_DIGEST = '8fe423c75363caf73d72733b668e9db3d59b0165d360b77e363718b40d5bafd4'
FIELDS_1_0_0 = ('image', 'caption', 'long_caption', 'negative_captions', 'objects', 'label', 'num_objects')


# The same over every 1.1.0 field, as version 1.1.0 wrote them: version 1.2.0 only adds `translations`.
TINY_1_1_0_DIGEST = '2016c00117f7b32617be3ec196b910934c5d14d63d87c8bb5e561513ccbd6df1'


def _digest(sources, fields) -> str:
    digest = hashlib.sha256()
    for split in shapes.SPLITS:
        for i in range(len(sources[split])):
            record = sources[split][i]
            for key in fields:
                value = record[key]
                parts = ([value[k] for k in sorted(value)] if isinstance(value, dict)
                         else value if isinstance(value, (list, tuple)) else [value])
                for part in parts:
                    digest.update(part if isinstance(part, bytes) else np.asarray(part).tobytes())
    return digest.hexdigest()


def test_version_1_0_0_records_unchanged(sources):
    assert _digest(sources, FIELDS_1_0_0) == TINY_1_0_0_DIGEST


def test_version_1_1_0_records_unchanged(sources):
    assert _digest(sources, (*FIELDS_1_0_0, 'questions')) == TINY_1_1_0_DIGEST


# The same over every 1.2.0 field, as version 1.2.0 wrote them: version 1.3.0 only adds `edit` and
# the `<split>_edited` splits.
TINY_1_2_0_DIGEST = '88be422f84c535cba146658fcd4848a5cf81f585fc43d68ee9f15b43abe8543e'


def test_version_1_2_0_records_unchanged(sources):
    assert _digest(sources, (*FIELDS_1_0_0, 'questions', 'translations')) == TINY_1_2_0_DIGEST


def test_translations_are_in_every_record(sources):
    record = sources['test_unseen'][0]
    assert sorted(record['translations']) == ['de', 'fr']
    assert all(isinstance(t, bytes) and t for t in record['translations'].values())


def _true_relation(a, b):
    dx, dy = a['x'] - b['x'], a['y'] - b['y']
    if abs(dx) >= abs(dy):
        return 'left of' if dx < 0 else 'right of'
    return 'above' if dy < 0 else 'below'


def _cell_answer(obj):
    row = 'top' if obj['y'] < 1 / 3 else ('bottom' if obj['y'] > 2 / 3 else 'middle')
    col = 'left' if obj['x'] < 1 / 3 else ('right' if obj['x'] > 2 / 3 else 'center')
    return {('middle', 'center'): 'center'}.get((row, col), col if row == 'middle' else row if col == 'center'
                                                else f'{row} {col}')


def test_questions_are_true_of_the_scene(sources):
    seen_types, answers = set(), {'presence': [], 'relation': []}
    for split in ('train', 'test_unseen'):
        for i in range(len(sources[split])):
            record = sources[split][i]
            columns = (record['objects'][k] for k in ('shape', 'color', 'size', 'x', 'y'))
            objects = [dict(shape=shapes.SHAPES[s], color=shapes.COLORS[c], size=shapes.SIZES[z], x=x, y=y)
                       for s, c, z, x, y in zip(*columns)]
            names = {f"{o['color']} {o['shape']}": o for o in objects}
            questions = record['questions']
            types = [shapes.QUESTION_TYPES[t] for t in questions['type']]
            assert len(set(types)) == len(types)
            assert ('relation' in types) == (len(objects) > 1)
            texts = zip(map(_text, questions['question']), map(_text, questions['answer']))
            for kind, (question, answer) in zip(types, texts):
                seen_types.add(kind)
                assert question.endswith('?') and answer
                if kind == 'count':
                    assert answer == shapes.NUMBER_WORDS[len(objects)]
                elif kind == 'color':
                    words = question[len('what color is the '):-1]
                    matching = [o for o in objects if words in (o['shape'], f"{o['size']} {o['shape']}")]
                    assert [o['color'] for o in matching] == [answer], question
                elif kind == 'presence':
                    name = question.split(' ', 3)[3][:-1]
                    assert (name in names) == (answer == 'yes'), question
                    if split != 'test_unseen':
                        assert tuple(name.split()) not in shapes.UNSEEN
                    answers['presence'].append(answer)
                elif kind == 'position':
                    assert _cell_answer(names[question[len('where is the '):-1]]) == answer, question
                else:
                    rest = question[len('is the '):-1]
                    a, b = [n for n in names if rest.startswith(n)], [n for n in names if rest.endswith(n)]
                    relation = rest[len(a[0]) + 1:-len(b[0]) - 5]
                    assert (relation == _true_relation(names[a[0]], names[b[0]])) == (answer == 'yes'), question
                    answers['relation'].append(answer)
    assert seen_types == set(shapes.QUESTION_TYPES)
    for kind, values in answers.items():  # yes and no about equally often
        assert 0.4 < np.mean(np.array(values) == 'yes') < 0.6, kind


def test_overrides_get_their_own_config(tmp_path):
    dataset_dir = shapes.build(str(tmp_path), 'tiny', num_train=8, num_validation=4, num_test=4, num_test_unseen=4)
    name = pathlib.Path(dataset_dir).parent.name
    assert name.startswith('tiny_') and name != 'tiny'
    builder = tfds.builder_from_directory(dataset_dir)
    assert len(builder.as_data_source('train')) == 8
    # The first records equal those of the full tiny config (same seed).
    expected = shapes.make_example(0, 'train', 3, image_size=32)
    np.testing.assert_array_equal(builder.as_data_source('train')[3]['image'], expected['image'])
    # Readable by name too: TFDS falls back to the files for unknown configs.
    source = tfds.data_source(f'vlmjax_shapes/{name}', data_dir=str(tmp_path), split='test', download=False)
    assert len(source) == 4


def test_tensorflow_not_needed():
    assert 'tensorflow' not in sys.modules
