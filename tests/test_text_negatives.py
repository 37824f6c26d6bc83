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


# Paraphrases: SVLC's positives, also from the caption text alone.

@pytest.mark.parametrize("rule,caption,possible", [
    ("reorder", "a red circle and a blue square.", {"a blue square and a red circle."}),
    ("reorder", "three objects: a red circle, a blue square and a star.",
     {f"three objects: {a}, {b} and {c}." for a, b, c in
      [("a red circle", "a star", "a blue square"), ("a blue square", "a red circle", "a star"),
       ("a blue square", "a star", "a red circle"), ("a star", "a red circle", "a blue square"),
       ("a star", "a blue square", "a red circle")]}),
    ("count", "a red circle and a blue square.", {"two objects: a red circle and a blue square."}),
    ("count", "three objects: a red circle, a blue square and a star.", {"a red circle, a blue square and a star."}),
    ("there_is", "A large red circle in the top left.", {"there is a large red circle in the top left."}),
    ("there_is", "there is a small star at the top.", {"a small star at the top."}),
    ("converse", "the red circle is left of the blue square.", {"the blue square is right of the red circle."}),
    ("converse", "the star is above the cross.", {"the cross is below the star."}),
])
def test_each_paraphrase_rule_keeps_what_the_caption_asserts(rule, caption, possible):
  from vlmjax.data.text_paraphrases import apply_rule as paraphrase
  rng = np.random.default_rng(0)
  seen = {paraphrase(caption, rule, rng) for _ in range(60)}
  assert seen <= possible and len(seen) >= min(len(possible), 3), seen


def test_paraphrase_rules_that_do_not_fit():
  from vlmjax.data import text_paraphrases
  rng = np.random.default_rng(0)
  assert text_paraphrases.apply_rule("two red circles.", "there_is", rng) is None
  assert text_paraphrases.apply_rule("a red circle left of a star and a cross.", "reorder", rng) is None
  assert text_paraphrases.apply_rule("a red circle.", "converse", rng) is None
  assert text_paraphrases.rule_paraphrases("a dog sleeps on a sofa", 2, rng) == [None, None]
  with pytest.raises(ValueError, match="unknown paraphrase rule 'synonym'"):
    text_paraphrases.apply_rule("a red circle", "synonym", rng)


def test_svlc_pipeline_and_loss(tiny_source, tiny_tokenizer):
  """The paraphrase field holds the example's own caption reworded (a slot no rule fills is all
  padding, so not a positive), and the objective adds the multi-positive loss over them to the
  rule-negatives loss, checked against a numpy reference."""
  import jax
  from conftest import tiny_config
  from vlmjax.objectives.contrastive import RULE_NEGATIVE_TEXT, RULE_PARAPHRASE_TEXT, SvlcObjective
  from vlmjax.batch_spec import RECORD_INDEX
  preprocess = pipeline.Preprocess(tiny_tokenizer, 32, 16, train=True,
                                   fields=(RULE_NEGATIVE_TEXT, RULE_PARAPHRASE_TEXT, RECORD_INDEX),
                                   input_config=tiny_config("").input)
  stream = pipeline.train_examples(tiny_source, preprocess, seed=0)
  filled = 0
  for i in range(6):
    example = stream[i]
    caption = tiny_source[int(example["record_index"])]["caption"].lower()
    for row in example["multi_text"]:
      if row.any():
        filled += 1
        text = tiny_tokenizer.decode(row[None])[0]
        assert text != caption and sorted(text.replace(",", " ").split()) != [], (caption, text)
  assert filled >= 6

  rng = np.random.default_rng(0)
  b, k, d = 4, 2, 8
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  image, text = unit(rng.normal(size=(b, d))), unit(rng.normal(size=(b, d)))
  negatives, paraphrases = unit(rng.normal(size=(b, 3, d))), unit(rng.normal(size=(b, k, d)))
  valid = np.array([[1, 1], [1, 0], [0, 0], [1, 0]], bool)
  scale = 3.0

  def log_softmax(x, axis):
    x = x - x.max(axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis, keepdims=True))

  logits = np.exp(scale) * image @ text.T
  rows = log_softmax(np.concatenate([logits, np.exp(scale) * np.einsum("id,ikd->ik", image, negatives)], 1), 1)
  want = 0.5 * (-np.diag(rows).mean() - np.diag(log_softmax(logits, 0)).mean())
  slots = []
  for slot in range(k):
    ok = valid[:, slot]
    if not ok.any():
      continue
    p = np.exp(scale) * image @ paraphrases[:, slot].T
    p = np.where(ok[None, :], p, -1e9)
    i2t, t2i = -np.diag(log_softmax(p, 1)), -np.diag(log_softmax(p, 0))
    slots.append(0.5 * ((i2t * ok).sum() + (t2i * ok).sum()) / ok.sum())
  want += 0.5 * np.mean(slots)
  outputs = {"image_embeds": np.float32(image), "text_embeds": np.float32(text),
             "negative_text_embeds": np.float32(negatives), "multi_text_embeds": np.float32(paraphrases),
             "multi_text_valid": valid, "logit_scale": np.float32(scale)}
  loss, metrics = SvlcObjective(paraphrase_weight=0.5)(outputs, {})
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert set(metrics) >= {"negatives", "paraphrases"}
  grads = jax.grad(lambda e: SvlcObjective()({**outputs, "multi_text_embeds": e}, {})[0])(outputs["multi_text_embeds"])
  assert np.abs(np.asarray(grads)[2]).max() == 0 and np.abs(np.asarray(grads)[0]).max() > 0  # padding: no gradient
