"""Composed image retrieval: the generator's edits and edited splits, the caption-editing rule
(CIReVL's language step), and the `cir` evaluator."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import tiny_config
from vlmjax import train as train_lib
from vlmjax.data import shapes

MESH = dict(data=1, fsdp=-1, tensor=1)


def _pairs(objects):
  return sorted((o["color"], o["shape"]) for o in objects)


@pytest.mark.parametrize("split", shapes.SPLITS)
def test_edit_says_what_changed(split):
  """The edited scene differs from the reference exactly as the edit text says; the other objects stay put."""
  import re
  for index in range(60):
    example, target = shapes.make_example(0, split, index, 32), shapes.make_edited_example(0, split, index, 32)
    before, after = _pairs(example["objects"]), _pairs(target["objects"])
    text = example["edit"]["text"]
    kind = example["edit"]["kind"]
    words = re.findall(r"[a-z]+", text)
    if kind == "remove":
      assert sorted(set(before) - set(after)) == [(words[2], words[3])] and set(after) < set(before)
    elif kind == "add":
      assert sorted(set(after) - set(before)) == [(words[-2], words[-1])] and set(before) < set(after)
    elif kind == "color":
      assert sorted(set(before) - set(after)) == [(words[2], words[3])]
      assert sorted(set(after) - set(before)) == [(words[4], words[3])]
    else:
      assert kind == "shape" and sorted(set(after) - set(before)) == [(words[2], words[-1])]
    kept = [o for o in target["objects"] if (o["color"], o["shape"]) in before]
    for o in kept:  # unchanged objects keep their place
      assert any(abs(o["x"] - p["x"]) < 1e-9 and abs(o["y"] - p["y"]) < 1e-9 for p in example["objects"])
    assert not np.array_equal(example["image"], target["image"])
    assert len(set(after)) == len(after)
    if split == "test_unseen":
      assert kind == "add" and all(p in shapes.UNSEEN for p in after)
    else:
      assert not set(after) & shapes.UNSEEN


def test_edit_caption_is_a_true_caption_of_the_target():
  for index in range(200):
    example, target = shapes.make_example(0, "test", index, 32), shapes.make_edited_example(0, "test", index, 32)
    assert shapes.edit_caption(example["caption"], example["edit"]["text"]) in shapes.reference_captions(target["objects"])
  # A captioner's miss: the named object is not in the caption, so the edit adds it as it describes it.
  assert shapes.edit_caption("a blue star.", "make the red circle green.") == "a blue star and a green circle."
  assert shapes.edit_caption("a blue star.", "remove the blue star.") == "a blue star."  # never an empty scene
  with pytest.raises(ValueError, match="cannot read the edit 'paint it black'"):
    shapes.edit_caption("a blue star.", "paint it black")


def test_edited_splits_are_built(tiny_data_dir):
  builder = tfds.builder_from_directory(f"{tiny_data_dir}/vlmjax_shapes/tiny/1.3.0")
  for split in shapes.SPLITS:
    reference, edited = builder.as_data_source(split), builder.as_data_source(f"{split}_edited")
    assert len(reference) == len(edited)
    record = edited[7]
    expected = shapes.make_edited_example(0, split, 7, 32)
    assert record["caption"].decode() == expected["caption"]
    np.testing.assert_array_equal(record["image"], expected["image"])
    assert reference[7]["edit"]["text"].decode() == shapes.make_example(0, split, 7, 32)["edit"]["text"]


def test_cir_evaluator(tiny_data_dir, tmp_path):
  """Every query kind runs over the same 64 targets; bad options and a split without targets are
  one-line errors before training."""
  evals = {q: dict(type="cir", split="test", num_examples=64, query=q)
           for q in ("image", "text", "sum", "edited_caption")}
  config = tiny_config(tiny_data_dir, total_steps=2, mesh=MESH, evals=evals)
  results = train_lib.train(config, str(tmp_path / "run"))
  for q in evals:
    assert results[f"{q}/queries"] == 64
    assert results[f"{q}/R@1"] <= results[f"{q}/R@5"] <= results[f"{q}/R@10"]
  with pytest.raises(ValueError, match=r"evals.c.query must be one of image, text, sum, composed, edited_caption, "
                     r"generated_caption, pseudo_sentence, pseudo_image, got 'both'"):
    train_lib.train(tiny_config(tiny_data_dir, mesh=MESH, evals=dict(c=dict(type="cir", query="both"))),
                    str(tmp_path / "a"))
  with pytest.raises(ValueError, match="'captioner' .* goes with query 'generated_caption'"):
    train_lib.train(tiny_config(tiny_data_dir, mesh=MESH, evals=dict(c=dict(type="cir", query="generated_caption"))),
                    str(tmp_path / "b"))
  # A split without targets (no '<split>_edited'): one line naming the entry and the split.
  with pytest.raises(OSError, match=r"^evals.c: .*split 'test_unseen_edited_edited'"):
    train_lib.train(tiny_config(tiny_data_dir, mesh=MESH, evals=dict(c=dict(type="cir", split="test_unseen_edited"))),
                    str(tmp_path / "c"))


def test_composer_trains_on_triplets(tiny_data_dir, tmp_path):
  """SPRC's composer: the triplet records carry the edit text and the target image; the composed
  retrieval loss trains (falls), and the `composed` query of the cir evaluator reads the composer."""
  from vlmjax.data import sources
  config = tiny_config(tiny_data_dir, total_steps=8, mesh=MESH, **{
      "data.name": "vlmjax_shapes_cir", "model.composer": dict(width=16, depth=1, num_heads=2, num_queries=2),
      "objectives": dict(composed_retrieval=dict(weight=1.0)), "optimizer.learning_rate": 3e-3,
      "evals": dict(cir=dict(type="cir", split="test", num_examples=32, query="composed",
                             data=dict(name="vlmjax_shapes", data_dir=tiny_data_dir, builder_config="tiny")))})
  source = sources.make_source(config.data, "train")
  record = source[3]
  assert record["caption"] == shapes.make_example(0, "train", 3, 32)["edit"]["text"]
  np.testing.assert_array_equal(record["target_image"], shapes.make_edited_example(0, "train", 3, 32)["image"])
  results = train_lib.train(config, str(tmp_path / "run"))
  assert results["cir/queries"] == 32 and 0.0 <= results["cir/R@10"] <= 1.0
  from vlmjax.run import read_metrics
  losses = [m["loss"] for m in read_metrics(str(tmp_path / "run")) if "loss" in m]
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  # Without a composer the objective says what to set.
  with pytest.raises(ValueError, match="objectives.composed_retrieval needs the model's composer: set model.composer"):
    train_lib.train(tiny_config(tiny_data_dir, total_steps=1, mesh=MESH, **{
        "data.name": "vlmjax_shapes_cir", "objectives": dict(composed_retrieval=dict(weight=1.0))}),
        str(tmp_path / "b"))


def test_missing_target_is_a_counted_bad_record(tiny_source):
  from vlmjax.data import pipeline, sources
  short_targets = [tiny_source[i] for i in range(4)]
  triplets = sources.ComposedTriplets(tiny_source, short_targets)
  assert "target_image" in triplets[3]
  bad = triplets[4]
  assert isinstance(bad, pipeline.BadRecord) and bad.reason == "corrupt_image" and "target of record 4" in bad.detail
