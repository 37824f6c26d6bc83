"""`vlmjax_shapes_video`: clips of `vlmjax_shapes` objects moving across a still background.

Every clip shows 1 (even indices) or 2 (odd indices) coloured shapes, each moving in a straight line
at a constant speed in one of four directions (`DIRECTIONS`: left, right, up, down) over
`num_frames` frames, on one textured background of `vlmjax_shapes` (the camera does not move).
The caption names each object and its direction ('a small red circle moving left.'), and three
`negative_captions` say the same with every object's direction replaced by another: hard negatives
only the motion tells apart. A single-object clip's `label` is its class in `CLASS_NAMES`,
'<colour> <shape> moving <direction>' (the (colour, shape) pairs `vlmjax_shapes` holds out,
`shapes.UNSEEN`, never appear), else -1.

A path is drawn so that a clip and its reverse are equally likely: a start point and a travel
length, uniformly, with the whole path inside the frame. The set of frames of a clip moving left
is then as likely to be the set of frames of one moving right: a model that averages its frames
cannot tell a direction from its opposite, only the axis (what the frame-averaging baseline of
video CLIP models misses).

The frames are stored side by side as one PNG filmstrip `image` [S, T·S, 3] (frame t is columns
t·S .. (t+1)·S), so the records are read like every image record, without TensorFlow. A record
whose strip does not hold exactly `num_frames` frames is a bad record of the source
(`vlmjax.data.sources`), counted and skipped like a corrupt image.

Like `vlmjax_shapes`, each clip depends only on (seed, split, index), and record i of a split is
`make_clip(seed, split, i, ...)`:

    python -m vlmjax.data.shapes_video --data_dir data/tfds [--config default|tiny]
"""
from __future__ import annotations

import dataclasses
import math

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from vlmjax.data import shapes

DIRECTIONS = ('left', 'right', 'up', 'down')
# Unit steps in image coordinates (y grows downwards).
DIRECTION_STEP = {'left': (-1.0, 0.0), 'right': (1.0, 0.0), 'up': (0.0, -1.0), 'down': (0.0, 1.0)}
SPLITS = ('train', 'validation', 'test')
SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
# The travel of an object over the whole clip, as a fraction of the frame side.
TRAVEL = (0.3, 0.45)
MAX_OBJECTS = 2
CLASS_NAMES = [f'{color} {shape} moving {direction}' for direction in DIRECTIONS
               for color, shape in shapes._allowed_pairs('train')]
# How a caption says a direction; zero-shot prompts use the first.
DIRECTION_PHRASES = {'left': ('moving left', 'moving to the left'), 'right': ('moving right', 'moving to the right'),
                     'up': ('moving up', 'moving upwards'), 'down': ('moving down', 'moving downwards')}


def class_parts(class_name: str) -> tuple[str, str]:
    """'red circle moving left' -> ('red circle', 'left')."""
    name, _, direction = class_name.rpartition(' moving ')
    return name, direction


def _positions(obj: dict, num_frames: int) -> list[tuple[float, float]]:
    """The object's centre in each frame: evenly spaced from its start along its direction."""
    dx, dy = DIRECTION_STEP[obj['direction']]
    step = obj['travel'] / (num_frames - 1)
    return [(obj['x'] + dx * step * t, obj['y'] + dy * step * t) for t in range(num_frames)]


def _sample_moving_objects(rng: np.random.Generator, num_objects: int, num_frames: int) -> list[dict]:
    """Objects with distinct (colour, shape), each with a direction and a path inside the frame that
    keeps clear of the other objects' in every frame (rejection sampling, restarted when stuck)."""
    pairs = shapes._allowed_pairs('train')
    while True:
        chosen = rng.choice(len(pairs), size=num_objects, replace=False)
        objects = []
        for pair_index in chosen:
            color, shape = pairs[pair_index]
            size = shapes.SIZES[rng.integers(len(shapes.SIZES))]
            direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
            radius = shapes.SIZE_RADIUS[size]
            dx, dy = DIRECTION_STEP[direction]
            for _ in range(100):
                travel = float(rng.uniform(*TRAVEL))
                # The start point is uniform over where the whole path fits: along the motion the
                # path's far end must stay inside too.
                lo_x, hi_x = radius - min(dx, 0) * travel, 1.0 - radius - max(dx, 0) * travel
                lo_y, hi_y = radius - min(dy, 0) * travel, 1.0 - radius - max(dy, 0) * travel
                x, y = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
                obj = dict(shape=shape, color=color, size=size, direction=direction, x=float(x), y=float(y),
                           travel=travel)
                path = _positions(obj, num_frames)
                if all(math.hypot(p[0] - q[0], p[1] - q[1])
                       >= shapes.MIN_SEPARATION * (radius + shapes.SIZE_RADIUS[o['size']])
                       for o in objects for p, q in zip(path, _positions(o, num_frames))):
                    break
            else:
                break  # no room for this object's path: restart the clip
            objects.append(obj)
        if len(objects) == num_objects:
            return objects


def render_clip(rng: np.random.Generator, objects: list[dict], image_size: int, num_frames: int) -> np.ndarray:
    """The clip's frames, uint8 [T, S, S, 3]: one background, each object's colour jittered once."""
    background = shapes._background(rng, image_size)
    colors = [np.clip(np.array(shapes.COLOR_RGB[o['color']]) + rng.integers(
        -shapes.COLOR_JITTER, shapes.COLOR_JITTER + 1, size=3), 0, 255) for o in objects]
    paths = [_positions(o, num_frames) for o in objects]
    frames = []
    for t in range(num_frames):
        image = background
        for obj, color, path in zip(objects, colors, paths):
            alpha = shapes._object_mask(dict(obj, x=path[t][0], y=path[t][1]), image_size)[..., None]
            image = image * (1 - alpha) + color * alpha
        frames.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
    return np.stack(frames)


def filmstrip(frames: np.ndarray) -> np.ndarray:
    """[T, S, S, 3] -> [S, T·S, 3]: the frames side by side."""
    return np.concatenate(list(frames), axis=1)


def caption(objects: list[dict], phrases: list[int], with_size: list[bool]) -> str:
    """'a small red circle moving left and a blue star moving upwards.'"""
    parts = [f"{shapes._describe(o, s)} {DIRECTION_PHRASES[o['direction']][p]}"
             for o, p, s in zip(objects, phrases, with_size)]
    return ' and '.join(parts) + '.'


def direction_negatives(objects: list[dict], phrases: list[int], with_size: list[bool]) -> list[str]:
    """The caption with every object's direction replaced by the k-th direction after its own in
    `DIRECTIONS` (k = 1, 2, 3), in the same words: three captions only the motion tells from it."""
    out = []
    for k in range(1, len(DIRECTIONS)):
        turned = [dict(o, direction=DIRECTIONS[(DIRECTIONS.index(o['direction']) + k) % len(DIRECTIONS)])
                  for o in objects]
        out.append(caption(turned, phrases, with_size))
    return out


def zero_shot_prompts(class_name: str) -> list[str]:
    """Prompts for '<colour> <shape> moving <direction>', in the captions' own words."""
    name, direction = class_parts(class_name)
    return [f'{shapes._with_article(name)} {phrase}.' for phrase in DIRECTION_PHRASES[direction]] + [
        f'a small {name} {DIRECTION_PHRASES[direction][0]}.', f'a large {name} {DIRECTION_PHRASES[direction][0]}.']


def make_clip(seed: int, split: str, index: int, image_size: int = 64, num_frames: int = 4) -> dict:
    """Clip `index` of `split`; a pure function of its arguments. `image` is the uint8 filmstrip."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    num_objects = 1 if index % 2 == 0 else MAX_OBJECTS
    objects = _sample_moving_objects(rng, num_objects, num_frames)
    frames = render_clip(rng, objects, image_size, num_frames)
    phrases = [int(rng.integers(2)) for _ in objects]
    with_size = [bool(rng.integers(2)) for _ in objects]
    name = f"{objects[0]['color']} {objects[0]['shape']} moving {objects[0]['direction']}"
    return dict(
        image=filmstrip(frames),
        caption=caption(objects, phrases, with_size),
        negative_captions=direction_negatives(objects, phrases, with_size),
        label=CLASS_NAMES.index(name) if num_objects == 1 else -1,
        num_objects=num_objects,
        objects=[{k: o[k] for k in ('shape', 'color', 'size', 'direction', 'x', 'y', 'travel')} for o in objects],
    )


@dataclasses.dataclass(eq=False)
class VideoConfig(tfds.core.BuilderConfig):
    """Split sizes, frame size, frame count and seed of one `vlmjax_shapes_video` variant."""
    num_train: int = 8000
    num_validation: int = 500
    num_test: int = 1000
    image_size: int = 64
    num_frames: int = 4
    seed: int = 0


class VlmjaxShapesVideo(tfds.core.GeneratorBasedBuilder):
    """Clips of coloured shapes moving left, right, up or down, with captions."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    BUILDER_CONFIGS = [
        VideoConfig(name='default', description='8000 train clips of 4 frames at 64x64, as vlmjax_shapes images.'),
        VideoConfig(name='tiny', description='Small variant for tests: 4 frames at 16x16.',
                    num_train=256, num_validation=64, num_test=64, image_size=16, num_frames=4),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = 'default'
    code_path = epath.Path(__file__)  # as in `shapes.VlmjaxShapes`: no checksums file to look for

    def __init__(self, *, file_format='array_record', **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size, frames = self.builder_config.image_size, self.builder_config.num_frames
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=(size, frames * size, 3), encoding_format='png'),
                'caption': tfds.features.Text(),
                'negative_captions': tfds.features.Sequence(tfds.features.Text(), length=len(DIRECTIONS) - 1),
                'label': tfds.features.Scalar(dtype=np.int64),
                'num_objects': tfds.features.Scalar(dtype=np.int64),
                'objects': tfds.features.Sequence(tfds.features.FeaturesDict({
                    'shape': tfds.features.ClassLabel(names=shapes.SHAPES),
                    'color': tfds.features.ClassLabel(names=shapes.COLORS),
                    'size': tfds.features.ClassLabel(names=shapes.SIZES),
                    'direction': tfds.features.ClassLabel(names=DIRECTIONS),
                    'x': tfds.features.Scalar(dtype=np.float32),  # the start, in [0, 1] image coordinates
                    'y': tfds.features.Scalar(dtype=np.float32),
                    'travel': tfds.features.Scalar(dtype=np.float32),  # over the clip, a fraction of the side
                })),
            }),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(class_names=CLASS_NAMES, num_frames=frames, frame_size=size),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        config = self.builder_config
        sizes = dict(train=config.num_train, validation=config.num_validation, test=config.num_test)
        return {split: self._generate_examples(split, n) for split, n in sizes.items()}

    def _generate_examples(self, split: str, num_examples: int):
        config = self.builder_config
        for index in range(num_examples):
            example = make_clip(config.seed, split, index, config.image_size, config.num_frames)
            example['image'] = shapes._png_bytes(example['image'])
            yield index, example


def build(data_dir: str, config: str = 'default') -> str:
    """Generates the dataset under `data_dir` (no-op if already there); returns its directory."""
    names = [c.name for c in VlmjaxShapesVideo.BUILDER_CONFIGS]
    if config not in names:
        raise ValueError(f'Unknown config {config!r} of vlmjax_shapes_video; known: {names}')
    builder = VlmjaxShapesVideo(data_dir=data_dir, config=config)
    builder.download_and_prepare()
    return str(builder.data_dir)


def config_of(name: str) -> VideoConfig:
    return next(c for c in VlmjaxShapesVideo.BUILDER_CONFIGS if c.name == name)


def main(argv=None):
    """python -m vlmjax.data.shapes_video --data_dir DIR [--config default|tiny]: build the dataset."""
    shapes.build_command(argv, main.__doc__, 'vlmjax_shapes_video', VlmjaxShapesVideo.BUILDER_CONFIGS, build)


if __name__ == '__main__':
    main()
