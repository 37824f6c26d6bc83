"""Object regions through the input pipeline: boxes, labels, descriptions and relation triplets.

A source whose records know their objects gives each record (the built-in dataset does):

- `regions`: a list of {'box': (x0, y0, x1, y1) in [0, 1] of the image, 'label': a class index,
  'text': a short description ('a small red circle'), 'attributes': class indices, one per kind};
- `triplets`: (subject, relation, object) tuples, subject and object indices into `regions` and the
  relation a phrase ('left of'); `triplet_text` gives each as three tokenized texts (Structure-CLIP's
  scene-graph knowledge).

The batch fields below turn them into fixed-size arrays of the augmented example: boxes follow the
crop the augmentation cut (and the evaluation's centre crop), so a box always frames its object in
the pixels the model sees. A region cut off by the crop to less than `MIN_VISIBLE` of its area is
left out (`region_valid` 0), and so are regions past `input.max_regions`.
"""
import numpy as np

from vlmjax.batch_spec import Field, random_texts
from vlmjax.data.sources import DataFileError

MIN_VISIBLE = 0.5  # a cropped region keeps at least this share of its box's area, or is dropped


def max_regions(input_config) -> int:
  return int(input_config.get("max_regions", 4))


def view_rectangle(image_size: tuple, crop: tuple, resize: str) -> tuple:
  """The part of the source image the model sees, (x0, y0, width, height) in its pixels:
  `image_size` (w, h), the augmentation's `crop` ((x0, y0, side) or ()), and the resize mode
  ('crop' keeps the centre square of what is left; 'squash' all of it)."""
  w, h = image_size
  x0, y0, vw, vh = (crop[0], crop[1], crop[2], crop[2]) if crop else (0.0, 0.0, float(w), float(h))
  if resize == "crop" and vw != vh:
    side = min(vw, vh)
    x0, y0, vw, vh = x0 + (vw - side) / 2, y0 + (vh - side) / 2, side, side
  return x0, y0, vw, vh


def box_in_view(box, image_size: tuple, view: tuple):
  """A box (x0, y0, x1, y1) in [0, 1] of the source image -> (box in [0, 1] of the view, clipped,
  the share of its area still inside the view)."""
  w, h = image_size
  vx, vy, vw, vh = view
  x0, y0, x1, y1 = ((box[0] * w - vx) / vw, (box[1] * h - vy) / vh, (box[2] * w - vx) / vw, (box[3] * h - vy) / vh)
  area = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
  clipped = np.clip([x0, y0, x1, y1], 0.0, 1.0)
  inside = max(clipped[2] - clipped[0], 0.0) * max(clipped[3] - clipped[1], 0.0)
  return clipped.astype(np.float32), (inside / area if area > 0 else 0.0)


def _regions(example) -> list:
  if "regions" not in example.record:
    raise DataFileError("data: this objective needs records with object regions ('regions': boxes and "
                        "descriptions), which this dataset does not give")
  return list(example.record["regions"])


def visible_regions(example) -> list:
  """[(index into the record's regions, box in the view)] of the regions the model sees, in order,
  at most `input.max_regions`."""
  view = view_rectangle(example.image.size, example.crop, example.preprocess.resize)
  out = []
  for i, region in enumerate(_regions(example)):
    box, visible = box_in_view(region["box"], example.image.size, view)
    if visible >= MIN_VISIBLE:
      out.append((i, box))
  return out[:max_regions(example.preprocess.input_config)]


def _make_boxes(example, shape):
  boxes = np.zeros(shape, np.float32)
  for k, (_, box) in enumerate(visible_regions(example)):
    boxes[k] = box
  return boxes


def _make_valid(example, shape):
  valid = np.zeros(shape, np.int32)
  valid[:len(visible_regions(example))] = 1
  return valid


def _make_text(example, shape):
  regions = _regions(example)
  texts = [regions[i]["text"] for i, _ in visible_regions(example)]
  return example.tokenize(texts + [""] * (shape[0] - len(texts)))


def _make_labels(example, shape):
  labels = np.full(shape, -1, np.int32)
  regions = _regions(example)
  for k, (i, _) in enumerate(visible_regions(example)):
    labels[k] = regions[i]["label"]
  return labels


def _make_attributes(example, shape):
  attributes = np.full(shape, -1, np.int32)
  regions = _regions(example)
  for k, (i, _) in enumerate(visible_regions(example)):
    attributes[k, :len(regions[i]["attributes"])] = regions[i]["attributes"][:shape[1]]
  return attributes


def _draw_boxes(rng, n, inp, vocab, batch):
  xs = np.sort(rng.uniform(0, 1, size=(n, max_regions(inp), 2)), axis=-1)
  ys = np.sort(rng.uniform(0, 1, size=(n, max_regions(inp), 2)), axis=-1)
  return np.stack([xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]], -1).astype(np.float32)


REGION_BOXES = Field("region_boxes", lambda inp: (max_regions(inp), 4), "float32", make=_make_boxes,
                     draw=_draw_boxes)
REGION_VALID = Field("region_valid", lambda inp: (max_regions(inp),), "int32", make=_make_valid,
                     draw=lambda rng, n, inp, vocab, batch: np.ones((n, max_regions(inp)), np.int32))
REGION_TEXT = Field("region_text", lambda inp: (max_regions(inp), inp.max_text_len), "int32", make=_make_text,
                    draw=lambda rng, n, inp, vocab, batch: random_texts(rng, (n, max_regions(inp)), inp.max_text_len,
                                                                        vocab))
REGION_LABEL = Field("region_label", lambda inp: (max_regions(inp),), "int32", make=_make_labels,
                     draw=lambda rng, n, inp, vocab, batch: rng.integers(0, 8, (n, max_regions(inp))).astype(np.int32))
NUM_ATTRIBUTES = 3  # the attribute kinds a region carries (the built-in dataset's colour, shape, size)
REGION_ATTRIBUTES = Field("region_attributes", lambda inp: (max_regions(inp), NUM_ATTRIBUTES), "int32",
                          make=_make_attributes,
                          draw=lambda rng, n, inp, vocab, batch: rng.integers(
                              0, 2, (n, max_regions(inp), NUM_ATTRIBUTES)).astype(np.int32))


MAX_TRIPLETS = 6  # scene-graph triplets per example (the built-in scenes have up to 4·3 = 12)


def _make_triplet_text(example, shape):
  """The (subject, relation, object) triplets among the regions the model sees, each part tokenized:
  int32 [M, 3, T], subject and object as their region's description; rows past the scene's
  triplets all padding."""
  record = example.record
  if "triplets" not in record:
    raise DataFileError("data: this objective needs records with scene-graph triplets ('triplets' over "
                        "'regions'), which this dataset does not give")
  regions = _regions(example)
  seen = {i for i, _ in visible_regions(example)}
  texts = [(regions[s]["text"], relation, regions[o]["text"]) for s, relation, o in record["triplets"]
           if s in seen and o in seen][:shape[0]]
  tokens = np.zeros(shape, np.int32)
  if texts:
    tokens[:len(texts)] = example.tokenize([part for triplet in texts for part in triplet]).reshape(len(texts), 3, -1)
  return tokens


TRIPLET_TEXT = Field("triplet_text", lambda inp: (MAX_TRIPLETS, 3, inp.max_text_len), "int32", make=_make_triplet_text,
                     draw=lambda rng, n, inp, vocab, batch: random_texts(rng, (n, MAX_TRIPLETS, 3), inp.max_text_len,
                                                                         vocab))


def token_weights(boxes, valid, grid: int):
  """Which image tokens lie in each box: boxes [B, K, 4] (x0, y0, x1, y1 in [0, 1]), valid [B, K],
  a grid × grid token grid (row-major, as the ViT flattens its patches) -> [B, K, grid²] float32,
  each valid row summing to 1 over the tokens whose centre is inside the box (the token under the
  box's centre when none is: a box smaller than a patch). jax or numpy arrays."""
  import jax.numpy as jnp
  centres = (jnp.arange(grid) + 0.5) / grid
  cy, cx = jnp.meshgrid(centres, centres, indexing="ij")
  cx, cy = cx.reshape(-1), cy.reshape(-1)                                   # [N]
  x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))                  # [B, K, 1]
  inside = (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)                # [B, K, N]
  col = jnp.clip(jnp.floor((x0 + x1) / 2 * grid), 0, grid - 1)
  row = jnp.clip(jnp.floor((y0 + y1) / 2 * grid), 0, grid - 1)
  centre_token = (row * grid + col).astype(jnp.int32)                       # [B, K, 1]
  fallback = jnp.arange(grid * grid) == centre_token
  mask = jnp.where(inside.any(-1, keepdims=True), inside, fallback) & (valid[..., None] > 0)
  mask = mask.astype(jnp.float32)
  return mask / jnp.maximum(mask.sum(-1, keepdims=True), 1.0)
