"""The LXMERT fusion encoder: its cross-modal layers, its pre-training tasks, and its evaluators."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from vlmjax import train as train_lib
from vlmjax.models.fusion import FusionEncoder
from vlmjax.objectives import fusion as lxmert

MESH = dict(data=1, fsdp=-1, tensor=1)
IMAGE = dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2, pool="gap")
TINY = dict(name="fusion", image=IMAGE, width=32, num_heads=2, language_layers=1, object_layers=1, cross_layers=1,
            max_len=16, num_answers=21)


def _model_and_inputs():
  model = FusionEncoder(image=IMAGE, vocab_size=40, width=16, num_heads=2, language_layers=1, object_layers=1,
                        cross_layers=2, max_len=12, num_answers=5)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (3, 32, 32, 3)), jnp.float32)
  boxes = jnp.asarray([[[0, 0, .5, .5], [.5, .5, 1, 1], [0, 0, 1, 1]]] * 3, jnp.float32)
  valid = jnp.asarray([[1, 1, 0], [1, 0, 0], [1, 1, 1]], jnp.int32)
  texts = jnp.asarray([[2, 5, 6, 3, 0, 0], [2, 7, 3, 0, 0, 0], [2, 8, 9, 10, 3, 0]], jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), images, boxes, valid, None, texts, texts, texts, texts)["params"])
  return model, params, (images, boxes, valid, texts)


def test_streams_see_each_other_only_through_cross_layers():
  """Changing an object's box changes the word states, and a word changes the object states (the
  cross-modal layers); an invalid object changes nothing."""
  model, params, (images, boxes, valid, texts) = _model_and_inputs()
  run = jax.jit(lambda b, t: model.apply({"params": params}, images=images, region_boxes=b, region_valid=valid,
                                         masked_texts=t))
  apply = lambda **kw: run(kw.get("boxes", boxes), kw.get("texts", texts))  # noqa: E731
  base = apply()
  moved = apply(boxes=boxes.at[0, 0].set(jnp.array([.2, .2, .7, .7])))
  assert not np.allclose(base["mlm_logits"][0], moved["mlm_logits"][0])  # words read the objects
  np.testing.assert_allclose(base["mlm_logits"][1], moved["mlm_logits"][1], atol=1e-6)  # other examples do not
  other_word = apply(texts=texts.at[0, 1].set(11))
  assert not np.allclose(base["attribute_logits"][0], other_word["attribute_logits"][0])  # objects read the words
  invalid_moved = apply(boxes=boxes.at[0, 2].set(jnp.array([.1, .3, .4, .9])))  # object 2 of example 0 is invalid
  np.testing.assert_allclose(base["mlm_logits"][0], invalid_moved["mlm_logits"][0], atol=1e-5)
  padded_word = apply(texts=texts.at[1, 4].set(0).at[1, 5].set(0))  # already padding: the same
  np.testing.assert_allclose(base["attribute_logits"], padded_word["attribute_logits"], atol=1e-6)


def test_losses_against_numpy():
  logits = np.random.default_rng(1).normal(size=(2, 4, 7)).astype(np.float32)
  targets = np.array([[0, 3, 0, 5], [2, 0, 0, 0]])
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -(log_p[0, 1, 3] + log_p[0, 3, 5] + log_p[1, 0, 2]) / 3
  assert float(lxmert.masked_cross_entropy(logits, targets, targets > 0)) == pytest.approx(expected, rel=1e-5)
  z, y, r = np.array([2.0, -1.0]), np.array([True, False]), np.array([0.5, -3.0])
  bce = lambda z, y: np.mean(np.log1p(np.exp(-z)) * y + np.log1p(np.exp(z)) * (1 - y))  # noqa: E731
  assert float(lxmert.itm_loss(z, y, r)) == pytest.approx(0.5 * (bce(z, y.astype(float)) + bce(r, 0.0)), rel=1e-5)


def test_pipeline_makes_the_tasks(tiny_data_dir, tiny_tokenizer):
  """Masked pieces are the mask id where the targets hold the caption's pieces; ITM texts are the
  caption or the negative their kind names; the answer indexes the question's answer."""
  from vlmjax import experiment
  from vlmjax.data import sources
  from vlmjax.data.shapes import ANSWERS
  config = tiny_config(tiny_data_dir, model=TINY, objectives=dict(lxmert=dict(weight=1.0)), mesh=MESH)
  built = experiment.build(config, tiny_tokenizer.vocab_size, validate=False)
  preprocess = built.preprocess(tiny_tokenizer)
  source = sources.make_source(config.data, "train")
  kinds = set()
  for i in range(40):
    record = source[i]
    ex = preprocess.random_map(record, np.random.default_rng(i))
    masked = ex["masked_text"] != ex["text"]
    assert masked.any() and (ex["masked_text"][masked] == lxmert.MASK_ID).all()
    np.testing.assert_array_equal(ex["mlm_targets"][masked], ex["text"][masked])
    assert (ex["mlm_targets"][~masked] == 0).all()
    kind = int(ex["itm_kind"])
    kinds.add(kind)
    expected = record["caption"] if kind == 0 else record["negative_captions"][kind - 1]
    np.testing.assert_array_equal(ex["itm_text"], tiny_tokenizer.encode([expected], 16)[0])
    assert ANSWERS[int(ex["answer"])] in {q["answer"] for q in record["questions"]}
    assert ((ex["region_masked"] > 0) <= (ex["region_valid"] > 0)).all()
    assert "_question" not in ex
  assert kinds == {0, 1, 2, 3}


def test_lxmert_run_and_evaluators(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, total_steps=2, mesh=MESH, model=TINY,
                       objectives=dict(lxmert=dict(weight=1.0)), evals=dict(
                           itm=dict(type="itm", split="test", num_examples=16),
                           qa=dict(type="fusion_qa", split="test", num_examples=8)))
  results = train_lib.train(config, str(tmp_path / "run"))
  for kind in ("caption", "attribute", "relation", "count", "random"):
    assert 0.0 <= results[f"itm/{kind}"] <= 1.0
  assert results["itm/examples"] == 16 and 0.0 <= results["qa/all"] <= 1.0 and "qa/color" in results
  from vlmjax.run import read_metrics
  metrics = [m for m in read_metrics(str(tmp_path / "run")) if "loss" in m]
  assert {"lxmert/mlm", "lxmert/itm", "lxmert/attributes", "lxmert/qa"} <= set(metrics[-1])
