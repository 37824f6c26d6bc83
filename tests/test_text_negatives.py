"""SVLC's rule-based negatives: made from the caption text alone, one change per rule."""
import numpy as np
import pytest

from vlmjax.data import pipeline, text_negatives
from vlmjax.data.text_negatives import apply_rule, rule_negatives


@pytest.mark.parametrize("rule,caption,possible", [
    ("colour", "a red circle.", {f"a {c} circle." for c in text_negatives.COLOURS if c not in ("red", "orange")}
     | {"an orange circle."}),
    ("colour_swap", "a red circle and a blue square.", {"a blue circle and a red square."}),
    ("colour_swap", "an orange star and a red cross.", {"a red star and an orange cross."}),
    ("size", "a small green square and a large red star.",
     {"a large green square and a large red star.", "a small green square and a small red star."}),
    ("shape", "a red circle.", {f"a red {s}." for s in text_negatives.SHAPES if s != "circle"}),
    ("relation", "the red circle is left of the blue square.", {"the red circle is right of the blue square."}),
    ("relation", "a cat in front of a dog.", {"a cat behind a dog."}),
    ("relation", "a green square on the left.", {"a green square on the right."}),
])
def test_each_rule_changes_one_thing(rule, caption, possible):
  rng = np.random.default_rng(0)
  seen = {apply_rule(caption, rule, rng) for _ in range(60)}
  assert seen <= possible and len(seen) >= min(len(possible), 3), seen


def test_rules_that_find_nothing_and_unknown_rules():
  rng = np.random.default_rng(0)
  assert apply_rule("a dog on a sofa", "colour", rng) is None
  assert apply_rule("a red circle and a red star", "colour_swap", rng) is None  # nothing to exchange
  assert rule_negatives("a dog on a sofa", 3, rng) == ["", "", ""]
  with pytest.raises(ValueError, match="unknown negative rule 'texture'"):
    apply_rule("a red circle", "texture", rng)


def test_negatives_are_distinct_changes_of_the_caption():
  rng = np.random.default_rng(1)
  caption = "a small red circle above a large blue star."
  for _ in range(20):
    negatives = rule_negatives(caption, 3, rng)
    assert len(negatives) == 3 and len(set(negatives)) == 3
    assert caption not in negatives
    # One change each: the words differ from the caption's in one place (a swap: two).
    for negative in negatives:
      changed = [a != b for a, b in zip(caption.split(), negative.split())]
      assert len(negative.split()) == len(caption.split()) and 1 <= sum(changed) <= 2, negative
  assert rule_negatives("a red circle.", 3, rng)[0] != "a red circle."


def test_train_pipeline_makes_rule_negatives_of_each_caption(tiny_source, tiny_tokenizer):
  """The field made in the train pipeline: the tokenized rule negatives of the example's own
  caption, drawn with the example's RNG (the same example, the same negatives)."""
  from conftest import tiny_config
  from vlmjax.objectives.contrastive import RULE_NEGATIVE_TEXT
  from vlmjax.batch_spec import RECORD_INDEX
  preprocess = pipeline.Preprocess(tiny_tokenizer, 32, 16, train=True, fields=(RULE_NEGATIVE_TEXT, RECORD_INDEX),
                                   input_config=tiny_config("").input)
  stream = pipeline.train_examples(tiny_source, preprocess, seed=0)
  for i in range(6):
    example = stream[i]
    caption = tiny_source[int(example["record_index"])]["caption"]
    texts = tiny_tokenizer.decode(example["negative_text"])
    assert example["negative_text"].shape == (3, 16)
    assert all(t and t != caption for t in texts), (caption, texts)
    np.testing.assert_array_equal(stream[i]["negative_text"], example["negative_text"])
