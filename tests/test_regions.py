"""Object regions through the pipeline (boxes checked against the drawn pixels, with and without the
augmentation's crop), and GRAIN's region–description loss against a numpy reference."""
import jax
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from vlmjax.data import pipeline, regions, shapes
from vlmjax.objectives.regions import region_embeddings, region_text_loss

FIELDS = (regions.REGION_BOXES, regions.REGION_VALID, regions.REGION_TEXT, regions.REGION_LABEL,
          regions.REGION_ATTRIBUTES)


def _pixel_box(mask, threshold=0.5):
  """The box (x0, y0, x1, y1) in [0, 1] of the pixels of `mask` [S, S] above `threshold`."""
  rows, cols = np.nonzero(mask > threshold)
  size = mask.shape[0]
  return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]) / size


def _objects(tiny_source, index):
  return shapes._object_dicts(tiny_source.source[index]["objects"])


def test_region_boxes_frame_the_drawn_objects(tiny_source):
  for index in range(12):
    for obj, region in zip(_objects(tiny_source, index), tiny_source[index]["regions"]):
      mask = shapes._object_mask(obj, 256)  # drawn finer than the dataset, so the box is tight
      np.testing.assert_allclose(region["box"], _pixel_box(mask, 0.0), atol=1.5 / 256)
      assert region["text"].endswith(f"{obj['color']} {obj['shape']}")
      assert shapes.CLASS_NAMES[region["label"]] == f"{obj['color']} {obj['shape']}"


@pytest.mark.parametrize("crop_min", [1.0, 0.6])
def test_boxes_follow_the_augmentation_onto_the_pixels(tiny_source, tiny_tokenizer, crop_min):
  """The example's boxes against each object's mask put through the very same crop and resize."""
  preprocess = pipeline.Preprocess(tiny_tokenizer, 48, 16, train=True, crop_min=crop_min, fields=FIELDS,
                                   input_config=tiny_config("").input)
  checked, dropped = 0, 0
  for index in range(24):
    record = tiny_source[index]
    example = preprocess.random_map(record, np.random.default_rng(index))
    objects = _objects(tiny_source, index)
    kept = 0
    for k, obj in enumerate(objects):
      mask = Image.fromarray(np.uint8(255 * shapes._object_mask(obj, 64))).convert("RGB")
      pixels, crop = preprocess.augment_with_crop(mask, np.random.default_rng(index))  # the example's draws
      drawn = (pixels[..., 0] + 1) / 2
      visible = drawn.sum() / max(shapes._object_mask(obj, 64).sum() * (48 / 64) ** 2 * (
          (64 / crop[2]) ** 2 if crop else 1.0), 1e-9)
      if visible < 0.6:  # mostly cropped away: may be dropped, whatever the box says
        continue
      if example["region_valid"][kept] and example["region_label"][kept] == record["regions"][k]["label"]:
        np.testing.assert_allclose(example["region_boxes"][kept], _pixel_box(drawn, 0.02), atol=2.5 / 48,
                                   err_msg=f"record {index} object {k}")
        checked += 1
        kept += 1
      else:
        dropped += 1
  assert checked >= 40 and dropped <= 2, (checked, dropped)


def test_region_fields_pad_and_label(tiny_source, tiny_tokenizer):
  preprocess = pipeline.Preprocess(tiny_tokenizer, 32, 16, fields=FIELDS, input_config=tiny_config("").input)
  for index in range(10):
    record = tiny_source[index]
    example = preprocess.map(record)
    n = len(record["regions"])
    assert example["region_valid"].tolist() == [1] * n + [0] * (4 - n)
    assert example["region_label"].tolist() == [r["label"] for r in record["regions"]] + [-1] * (4 - n)
    assert example["region_attributes"][:n].tolist() == [list(r["attributes"]) for r in record["regions"]]
    texts = tiny_tokenizer.decode(example["region_text"])
    assert texts[:n] == [r["text"] for r in record["regions"]] and texts[n:] == [""] * (4 - n)


def test_records_without_regions_are_a_clear_error(tiny_tokenizer):
  preprocess = pipeline.Preprocess(tiny_tokenizer, 32, 16, fields=FIELDS, input_config=tiny_config("").input)
  record = {"image": np.zeros((8, 8, 3), np.uint8), "caption": "a red circle"}
  with pytest.raises(ValueError, match="needs records with object regions"):
    preprocess.map(record)


def test_token_weights_cover_the_tokens_in_each_box():
  boxes = np.array([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 1.0], [0.6, 0.6, 0.62, 0.62], [0, 0, 1, 1]]], np.float32)
  valid = np.array([[1, 1, 1, 0]])
  weights = np.asarray(regions.token_weights(boxes, valid, 4)).reshape(4, 4, 4)
  np.testing.assert_allclose(weights[0], np.pad(np.full((2, 2), 0.25), ((0, 2), (0, 2))))
  np.testing.assert_allclose(weights[1], np.pad(np.full((4, 2), 1 / 8), ((0, 0), (2, 0))))
  assert weights[2].sum() == 1.0 and weights[2][2, 2] == 1.0  # smaller than a token: the one under its centre
  assert not weights[3].any()  # invalid


def _reference_loss(r, t, valid, same, theta):
  s = np.exp(theta)
  logits = s * r @ t.T
  total, count = 0.0, 0
  for m in range(len(r)):
    if not valid[m]:
      continue
    cols = [n for n in range(len(r)) if valid[n] and (n == m or not same[m, n])]
    rows = [n for n in range(len(r)) if valid[n] and (n == m or not same[n, m])]
    lse = lambda v: np.log(np.sum(np.exp(v)))
    total += 0.5 * ((lse(logits[m, cols]) - logits[m, m]) + (lse(logits[rows, m]) - logits[m, m]))
    count += 1
  return total / max(count, 1)


def test_region_text_loss_matches_reference_values_and_gradients():
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  r, t = unit(rng.normal(size=(7, 5))), unit(rng.normal(size=(7, 5)))
  valid = np.array([1, 1, 0, 1, 1, 1, 0], bool)
  labels = np.array([0, 1, 2, 0, 3, 1, 4])
  same = labels[:, None] == labels[None, :]
  theta = 1.5
  got = region_text_loss(np.float32(r), np.float32(t), valid, same, np.float32(theta))
  np.testing.assert_allclose(float(got), _reference_loss(r, t, valid, same, theta), rtol=1e-5)
  with jax.enable_x64(True):
    grad = np.asarray(jax.grad(region_text_loss)(r, t, valid, same, np.float64(theta)))
  eps = 1e-6
  for m, d in [(0, 0), (3, 2), (5, 4)]:
    bump = np.zeros_like(r)
    bump[m, d] = eps
    numeric = (_reference_loss(r + bump, t, valid, same, theta) - _reference_loss(r - bump, t, valid, same, theta)) / (2 * eps)
    np.testing.assert_allclose(grad[m, d], numeric, rtol=1e-5, atol=1e-9)
  assert not grad[2].any() and not grad[6].any() and np.all(np.isfinite(grad))


def test_region_embeddings_pool_the_tokens_in_the_box():
  rng = np.random.default_rng(1)
  tokens = rng.normal(size=(1, 16, 3)).astype(np.float32)
  boxes = np.array([[[0.0, 0.0, 0.5, 0.5]]], np.float32)
  got = np.asarray(region_embeddings(tokens, boxes, np.array([[1]])))[0, 0]
  want = tokens[0].reshape(4, 4, 3)[:2, :2].mean(axis=(0, 1))
  np.testing.assert_allclose(got, want / np.linalg.norm(want), rtol=1e-5)


def test_grain_step_has_finite_gradients_with_missing_regions(tiny_data_dir):
  """Scenes of one object leave region slots empty: the step must stay finite (a zero region
  vector's norm would make the gradient NaN)."""
  import jax.numpy as jnp
  from conftest import single_device_mesh
  from vlmjax import experiment, sharding, trainer
  config = tiny_config(tiny_data_dir, objectives=dict(clip=dict(weight=1.0), grain=dict(weight=0.5)))
  built = experiment.build(config, 64, mesh=single_device_mesh(), validate=False)
  batch = built.synthetic_batch(64)
  batch["region_valid"][:, 1:] = 0
  batch["region_valid"][::2] = 1
  state, shardings = built.init_state()
  step = built.train_step(shardings)
  with built.use_mesh():
    state, metrics = step(state, sharding.global_batch(batch, built.mesh))
  metrics = jax.device_get(metrics)
  assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"]) and metrics["nonfinite_steps"] == 0
  assert metrics["grain/loss"] > 0


# Structure-CLIP: the scene graph's triplets, the knowledge encoder and the hinge.

def test_triplet_text_holds_the_visible_objects_pairs(tiny_source, tiny_tokenizer):
  """Each ordered pair of the scene's objects, as (subject description, relation, object
  description), in the record's order; all padding past them."""
  preprocess = pipeline.Preprocess(tiny_tokenizer, 32, 16, fields=(regions.TRIPLET_TEXT,),
                                   input_config=tiny_config("").input)
  checked = 0
  for index in range(12):
    record = tiny_source[index]
    example = preprocess.map(record)
    want = [(record["regions"][s]["text"], relation, record["regions"][o]["text"])
            for s, relation, o in record["triplets"]][:regions.MAX_TRIPLETS]
    expected = tiny_tokenizer.encode([part for triplet in want for part in triplet], 16).reshape(-1, 3, 16)
    np.testing.assert_array_equal(example["triplet_text"][:len(want)], expected)
    assert not example["triplet_text"][len(want):].any()
    checked += len(want)
  assert checked >= 6


def test_knowledge_encoder_is_directional_and_zero_without_triplets():
  import jax.numpy as jnp
  from vlmjax.models.knowledge import KnowledgeEncoder
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, 60, size=(3, 2, 3, 5)).astype(np.int32)
  tokens[:, :, :, 4] = 0
  tokens[1, 1] = 0          # one triplet of example 1 absent
  tokens[2] = 0             # example 2: no scene graph
  encoder = KnowledgeEncoder(vocab_size=64, width=16, embed_dim=8)
  params = encoder.init(jax.random.PRNGKey(0), tokens)
  out, swapped = encoder.apply(params, tokens), encoder.apply(params, tokens, swap=True)
  assert out.shape == (3, 8) and np.abs(np.asarray(out[2])).max() == 0
  assert np.abs(np.asarray(out[:2] - swapped[:2])).min() > 0
  # An absent triplet changes nothing: example 1 equals itself with that row's tokens changed to padding.
  again = tokens.copy()
  again[1, 1] = 0
  np.testing.assert_allclose(encoder.apply(params, again)[1], out[1], atol=1e-6)
  np.testing.assert_allclose(encoder.apply(params, jnp.asarray(tokens[:, ::-1]))[1],  # triplet order: a set
                             encoder.apply(params, tokens[:, ::-1])[1], atol=1e-6)


def test_structure_clip_loss_matches_numpy():
  from vlmjax.objectives.scene_graph import StructureClipObjective
  rng = np.random.default_rng(0)
  b, d = 4, 6
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  image, text = unit(rng.normal(size=(b, d))), unit(rng.normal(size=(b, d)))
  negatives = unit(rng.normal(size=(b, 3, d)))
  knowledge, swapped = rng.normal(size=(b, d)) * 0.3, rng.normal(size=(b, d)) * 0.3
  scale = 2.0
  t = unit(text + knowledge)
  n = unit(negatives[:, 1] + swapped)
  logits = np.exp(scale) * image @ t.T

  def log_softmax(x, axis):
    x = x - x.max(axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis, keepdims=True))
  contrast = 0.5 * (-np.diag(log_softmax(logits, 1)).mean() - np.diag(log_softmax(logits, 0)).mean())
  hinge = np.maximum(0.0, 0.2 - (image * t).sum(1) + (image * n).sum(1)).mean()
  outputs = {"image_embeds": np.float32(image), "text_embeds": np.float32(text),
             "negative_text_embeds": np.float32(negatives), "knowledge_embeds": np.float32(knowledge),
             "swapped_knowledge_embeds": np.float32(swapped), "logit_scale": np.float32(scale)}
  loss, metrics = StructureClipObjective(hinge_weight=0.5)(outputs, {})
  np.testing.assert_allclose(loss, contrast + 0.5 * hinge, rtol=1e-5)
  assert hinge > 0
  plain = {k: v for k, v in outputs.items() if "knowledge" not in k}
  with pytest.raises(ValueError, match="set model.knowledge"):
    StructureClipObjective()(plain, {})
  # The ablation without knowledge: the hinge on the plain embeddings.
  logits = np.exp(scale) * image @ text.T
  contrast = 0.5 * (-np.diag(log_softmax(logits, 1)).mean() - np.diag(log_softmax(logits, 0)).mean())
  hinge = np.maximum(0.0, 0.2 - (image * text).sum(1) + (image * negatives[:, 1]).sum(1)).mean()
  loss, _ = StructureClipObjective(knowledge=False)(plain, {})
  np.testing.assert_allclose(loss, contrast + hinge, rtol=1e-5)
  # The hinge's gradient: −(v_i − n_i)/B for the images whose margin is violated, 0 otherwise.
  from vlmjax.objectives.scene_graph import hinge_loss
  active = (0.2 - (image * text).sum(1) + (image * negatives[:, 1]).sum(1)) > 0
  want_grad = -(text - negatives[:, 1]) * active[:, None] / b
  got_grad = jax.grad(hinge_loss)(np.float32(image), np.float32(text), np.float32(negatives[:, 1]), 0.2)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-6)


def test_structure_clip_step_trains_the_knowledge_encoder(tiny_data_dir):
  import jax.numpy as jnp
  from conftest import single_device_mesh
  from vlmjax import experiment, sharding
  config = tiny_config(tiny_data_dir, objectives=dict(structure_clip=dict(weight=1.0)),
                       **{"model.knowledge": dict(width=16, depth=1, num_heads=2)})
  built = experiment.build(config, 64, mesh=single_device_mesh(), validate=False)
  batch = built.synthetic_batch(64)
  batch["triplet_text"][::2] = 0  # scenes without a scene graph
  state, shardings = built.init_state()
  before = jax.device_get(state["params"]["knowledge"])
  step = built.train_step(shardings)
  with built.use_mesh():
    for _ in range(2):  # the first step's learning rate is 0 (warm-up)
      state, metrics = step(state, sharding.global_batch(batch, built.mesh))
  metrics = jax.device_get(metrics)
  assert np.isfinite(metrics["loss"]) and metrics["nonfinite_steps"] == 0 and metrics["structure_clip/hinge"] > 0
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), before, jax.device_get(state["params"]["knowledge"]))
  assert min(jax.tree.leaves(moved)) > 0
