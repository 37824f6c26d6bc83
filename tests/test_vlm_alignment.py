"""VLM alignment objectives (CG-VLM, Sugar) against numpy references, the VLM's sequence codes, and
the decoder evaluators (vlm_compositional, token_nll) against a per-example recomputation."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, tiny_config
from vlmjax import batch_spec
from vlmjax.data import pipeline, sources
from vlmjax.data.tokenizer import EOS
from vlmjax.models.decoder import LanguageModel
from vlmjax.models.vlm import VLM
from vlmjax.objectives.alignment import CgvlmObjective, SugarObjective
from vlmjax.objectives.contrastive import NEGATIVE_TEXT
from vlmjax.run import RunDir
from vlmjax.train import train

TAU = 0.07


def np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_infonce(u, v, negatives=None):
  """Symmetric InfoNCE of normalised u, v [B, D] at τ; negatives [B, K, D]: extra columns of their
  image's row only."""
  logits = u @ v.T / TAU
  rows = logits if negatives is None else np.concatenate([logits, np.einsum("id,ikd->ik", u, negatives) / TAU], 1)
  idx = np.arange(len(u))
  return 0.5 * (-np_log_softmax(rows, 1)[idx, idx].mean() - np_log_softmax(logits, 0)[idx, idx].mean())


def numeric_grad(f, x, eps=1e-6):
  grad = np.zeros_like(x)
  for i in np.ndindex(*x.shape):
    step = np.zeros_like(x)
    step[i] = eps
    grad[i] = (f(x + step) - f(x - step)) / (2 * eps)
  return grad


def np_cgvlm(image_code, table, targets, weights):
  pieces = (weights > 0) & (targets != EOS)
  caption = (table[targets] * pieces[..., None]).sum(1) / pieces.sum(1, keepdims=True)
  return np_infonce(np_normalize(image_code), np_normalize(caption))


def test_cgvlm_loss_and_gradients_match_numpy():
  rng = np.random.default_rng(0)
  b, t, v, d = 5, 7, 11, 6
  image_code, table = rng.normal(size=(b, d)), rng.normal(size=(v, d))
  targets = rng.integers(4, v, size=(b, t))
  lengths = rng.integers(2, t, size=b)
  targets[np.arange(b), lengths] = EOS  # the EOS is supervised but not a piece of the caption
  weights = (np.arange(t)[None] <= lengths[:, None]).astype(np.float32)
  weights[:, 0] = 0.0  # an unsupervised (prompt) position: its target is not part of the caption
  objective = CgvlmObjective(temperature=TAU)
  batch = {"targets": jnp.asarray(targets), "loss_weights": jnp.asarray(weights)}
  loss_fn = lambda x, w: objective({"image_code": x, "word_embeddings": w}, batch)[0]
  loss, (grad_x, grad_w) = jax.value_and_grad(loss_fn, argnums=(0, 1))(jnp.float32(image_code), jnp.float32(table))
  assert float(loss) == pytest.approx(np_cgvlm(image_code, table, targets, weights), rel=1e-5)
  np.testing.assert_allclose(grad_x, numeric_grad(lambda x: np_cgvlm(x, table, targets, weights), image_code),
                             rtol=2e-3, atol=2e-5)
  np.testing.assert_allclose(grad_w, numeric_grad(lambda w: np_cgvlm(image_code, w, targets, weights), table),
                             rtol=2e-3, atol=2e-5)
  with pytest.raises(ValueError, match="objectives.cgvlm.temperature 0.0 must be above 0"):
    CgvlmObjective(temperature=0.0)


def test_sugar_loss_and_gradients_match_numpy():
  rng = np.random.default_rng(1)
  b, k, d = 4, 3, 5
  image, text, negatives = rng.normal(size=(b, d)), rng.normal(size=(b, d)), rng.normal(size=(b, k, d))
  objective = SugarObjective(temperature=TAU)
  loss_fn = lambda i, t, n: objective({"image_state": i, "text_state": t, "negative_text_states": n}, {})[0]
  reference = lambda i, t, n: np_infonce(np_normalize(i), np_normalize(t), np_normalize(n))
  loss, grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(*map(jnp.float32, (image, text, negatives)))
  assert float(loss) == pytest.approx(reference(image, text, negatives), rel=1e-5)
  for grad, numeric in zip(grads, (numeric_grad(lambda x: reference(x, text, negatives), image),
                                   numeric_grad(lambda x: reference(image, x, negatives), text),
                                   numeric_grad(lambda x: reference(image, text, x), negatives))):
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-5)
  # Without hard negatives it is the plain symmetric InfoNCE.
  plain = SugarObjective(temperature=TAU, hard_negatives=False)
  value = plain({"image_state": jnp.float32(image), "text_state": jnp.float32(text)}, {})[0]
  assert float(value) == pytest.approx(np_infonce(np_normalize(image), np_normalize(text)), rel=1e-5)
  with pytest.raises(ValueError, match="set model.sequence_codes = True"):
    objective({"image_state": image}, {})


def test_sequence_codes_are_the_last_token_states_of_image_and_text_alone():
  decoder = dict(variant="mu", width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=2)
  model = VLM(image=dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2), decoder=decoder,
              vocab_size=40, sequence_codes=True)
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, size=(3, 16, 16, 3)).astype(np.float32)
  texts = batch_spec.random_texts(rng, (3,), 10, 40)
  negatives = batch_spec.random_texts(rng, (3, 2), 10, 40)
  examples = [batch_spec.caption_sequence(t, 4) for t in texts]
  seq = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  params = jax.jit(model.init)(jax.random.PRNGKey(0), images, seq["tokens"], seq["attention_mask"])["params"]
  apply = jax.jit(lambda p, tokens, negatives=None: model.apply(
      {"params": p}, images, tokens, seq["attention_mask"], negative_texts=negatives))
  out = apply(params, seq["tokens"], negatives)
  assert out["negative_text_states"].shape == (3, 2, 32)
  lm = LanguageModel(decoder=decoder, vocab_size=40)
  last_hidden = jax.jit(lambda p, tokens: lm.apply({"params": {"decoder": p}}, tokens)["hidden"][0, -1])
  for i in range(3):
    for row, state in ((texts[i], out["text_state"][i]), (negatives[i, 1], out["negative_text_states"][i, 1])):
      alone = row[row != batch_spec.PAD][None]  # unpadded: its last position is the EOS
      np.testing.assert_allclose(state, last_hidden(params["decoder"], alone), rtol=1e-4, atol=1e-5)
  # The image's state does not depend on its caption, and differs between images.
  other = apply(params, np.roll(seq["tokens"], 1, axis=0))
  np.testing.assert_allclose(out["image_state"], other["image_state"], rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(out["image_state"][0] - out["image_state"][1])).max() > 1e-3


@pytest.fixture(scope="module")
def vlm_run(tiny_data_dir, tmp_path_factory):
  """A tiny VLM trained for 4 steps with NTP + CG-VLM + Sugar on 8 devices, evaluated by the decoder
  evaluators."""
  config = tiny_config(tiny_data_dir, **{
      "total_steps": 4, "mesh": dict(data=2, fsdp=4, tensor=1),
      "model": dict(name="vlm", image=dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2),
                    decoder=dict(variant="mu", width=32, depth=1, mlp_dim=64, num_heads=4, num_kv_heads=2),
                    projector=dict(kind="mlp"), sequence_codes=True),
      "objectives": {"ntp": {"weight": 1.0}, "cgvlm": {"weight": 1.0}, "sugar": {"weight": 1.0}}})
  config.evals = dict(nll=dict(type="token_nll", split="test", num_examples=13),
                      compositional=dict(type="vlm_compositional", split="test", num_examples=13),
                      caption=dict(type="object_mentions", split="test", num_examples=13, max_new_tokens=8))
  workdir = str(tmp_path_factory.mktemp("vlm") / "run")
  train(config, workdir)
  return config, workdir


def test_decoder_evaluators_equal_a_per_example_recomputation(vlm_run):
  config, workdir = vlm_run
  reported = json.load(open(os.path.join(workdir, "eval_results.json")))
  history = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any("cgvlm/retrieval_accuracy" in h and "sugar/retrieval_accuracy" in h for h in history)
  loaded = RunDir(workdir).load()
  model, params, tokenizer = loaded.model, loaded.params, loaded.tokenizer
  source = sources.make_source(config.data, "test")
  preprocess = pipeline.Preprocess(tokenizer, config.input.image_size, config.input.max_text_len,
                                   fields=(NEGATIVE_TEXT,), input_config=config.input)
  n = model.num_image_tokens(config.input.image_size)

  logits_of = jax.jit(lambda p, *example: model.apply({"params": p}, *(x[None] for x in example))["logits"][0])

  def log_likelihood(image, text):  # one example, one device, no padding rows, float64 softmax
    e = batch_spec.caption_sequence(text, n)
    logits = np.asarray(logits_of(params, image, e["tokens"], e["attention_mask"], e["loss_weights"]), np.float64)
    logp = np_log_softmax(logits, -1)[np.arange(len(e["targets"])), e["targets"]]
    return float((logp * (e["loss_weights"] > 0)).sum()), int((e["loss_weights"] > 0).sum())

  wins, nll, tokens = np.zeros(3), 0.0, 0
  margins = np.zeros(3)
  for i in range(13):
    example = preprocess.map(source[i])
    true, count = log_likelihood(example["image"], example["text"])
    nll, tokens = nll - true, tokens + count
    for k in range(3):
      negative, _ = log_likelihood(example["image"], example["negative_text"][k])
      wins[k] += true > negative
      margins[k] += true - negative
  for k, kind in enumerate(("attribute", "relation", "count")):
    assert reported[f"compositional/{kind}"] == pytest.approx(wins[k] / 13), kind
    assert reported[f"compositional/{kind}_margin"] == pytest.approx(margins[k] / 13, abs=1e-3), kind
  assert reported["nll/nll"] == pytest.approx(nll / tokens, rel=1e-4)
  assert reported["nll/perplexity"] == pytest.approx(np.exp(nll / tokens), rel=1e-4)
  assert {"caption/CIDEr", "caption/object_recall", "caption/hallucination_rate"} <= set(reported)


def test_vlm_compositional_names_mismatched_negative_kinds(vlm_run, tiny_data_dir, tmp_path):
  from vlmjax import evaluate
  _, workdir = vlm_run
  suite = tmp_path / "suite.py"
  suite.write_text(
      "import ml_collections\n"
      "def get_config(arg=None):\n"
      f"  data = dict(name='vlmjax_shapes', data_dir={tiny_data_dir!r}, builder_config='tiny')\n"
      "  return ml_collections.ConfigDict(dict(c=dict(type='vlm_compositional', split='test', num_examples=4,\n"
      "                                                kinds=('a', 'b'), data=data)))\n")
  with pytest.raises(ValueError, match="evals.c: records have 3 negative captions but 2 kinds are named"):
    evaluate.evaluate_suite(str(suite), workdir=workdir, out=str(tmp_path / "out"), show=lambda *a: None)


def test_ridge_equals_the_augmented_least_squares_solution():
  from vlmjax.projector_fit import ridge
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(40, 6)) + 3.0, rng.normal(size=(40, 4))
  for l2 in (0.0, 0.05, 2.0):
    w, b = ridge(x, y, l2)
    xc, yc = x - x.mean(0), y - y.mean(0)  # the bias is not penalised: centre, then solve
    augmented_x = np.concatenate([xc, np.sqrt(l2 * len(x)) * np.eye(6)])
    augmented_y = np.concatenate([yc, np.zeros((6, 4))])
    expected = np.linalg.lstsq(augmented_x, augmented_y, rcond=None)[0]
    np.testing.assert_allclose(w, expected, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b, y.mean(0) - x.mean(0) @ expected, rtol=1e-8, atol=1e-10)


def test_ridge_projector_fit_is_what_the_frozen_run_evaluates(tiny_data_dir, tmp_path):
  from vlmjax.projector_fit import pairs, ridge
  overrides = {
      "total_steps": 1, "optimizer.frozen": ".*", "optimizer.warmup_steps": 0, "mesh": dict(data=2, fsdp=4, tensor=1),
      "model": dict(name="vlm", image=dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2),
                    decoder=dict(variant="mu", width=32, depth=1, mlp_dim=64, num_heads=4, num_kv_heads=2),
                    projector=dict(kind="linear")),
      "objectives": {"ntp": {"weight": 1.0}}}
  config = tiny_config(tiny_data_dir, **overrides)
  config.init.fit = dict(ridge_projector=dict(examples=200, validation_examples=60, l2=(1e-4, 1e-2, 1.0)))
  workdir = str(tmp_path / "run")
  train(config, workdir)
  report = json.load(open(os.path.join(workdir, "fit_ridge_projector.json")))
  assert report["l2"] == float(min(report["validation_mse"], key=report["validation_mse"].get))
  assert report["validation_mse"][str(report["l2"])] < report["validation_mse_of_the_mean_caption"]
  loaded = RunDir(workdir).load()
  x, y = pairs(loaded.model, loaded.params, loaded.tokenizer, config.data, config.input, "train", 200)
  w, b = ridge(x, y, report["l2"])
  np.testing.assert_allclose(loaded.params["projector"]["linear"]["kernel"], w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(loaded.params["projector"]["linear"]["bias"], b, rtol=1e-4, atol=1e-5)
  config = tiny_config(tiny_data_dir, **{**overrides, "model.projector": dict(kind="mlp")})
  config.init.fit = dict(ridge_projector=dict(examples=20))
  with pytest.raises(ValueError, match="init.fit.ridge_projector: fits a 'linear' projector; model.projector.kind "
                                       "is 'mlp'"):
    train(config, str(tmp_path / "mlp"))


def test_object_mentions_hand_count():
  from vlmjax.evals.objects import mention_metrics, mentioned
  names = ["red circle", "blue square", "red square"]
  assert mentioned("Two objects: a large Red circle and two blue squares.", names) == {"red circle", "blue square"}
  assert mentioned("a reddish circle, a red circles2", names) == set()  # whole words only
  rates = mention_metrics(["a red circle and a blue square.", "a red square.", "a red circle."],
                          [["red circle"], ["red square", "blue square"], ["red circle"]], names)
  # mentioned 2 + 1 + 1 = 4, of which 1 false (blue square in scene 1); present 1 + 2 + 1 = 4, found 3.
  assert rates == {"object_recall": 3 / 4, "hallucination_rate": 1 / 4, "captions_hallucinating": 1 / 3,
                   "objects_per_caption": 4 / 3}


def test_caption_field_makes_the_long_caption_the_text(tiny_data_dir, tiny_tokenizer):
  config = tiny_config(tiny_data_dir)
  record = sources.make_source(config.data, "train")[1]
  preprocess = pipeline.Preprocess(tiny_tokenizer, 32, 200, caption_field="long_caption")
  assert tiny_tokenizer.decode([preprocess.map(record)["text"]]) == tiny_tokenizer.decode(
      [tiny_tokenizer.encode([record["long_caption"]], 200)[0]])
  reasoning = pipeline.Preprocess(tiny_tokenizer, 32, 200, caption_field="reasoning").map(record)["text"]
  expected = record["caption"] + " " + " ".join(f"{q['question']} {q['answer']}." for q in record["questions"])
  assert tiny_tokenizer.decode([reasoning]) == tiny_tokenizer.decode([tiny_tokenizer.encode([expected], 200)[0]])
  with pytest.raises(KeyError, match="input.caption_field: the records have no 'longer_caption'"):
    pipeline.Preprocess(tiny_tokenizer, 32, 200, caption_field="longer_caption").map(record)


def test_a_suite_file_takes_an_argument():
  from vlmjax.evaluate import load_suite
  suite = str(REPO / "configs" / "evals" / "vlm_captions.py")
  name, entries = load_suite(suite + ":likelihood")
  assert name == "vlm_captions_likelihood" and list(entries) == ["compositional"]
  assert sorted(load_suite(suite)[1]) == ["caption", "compositional"]
  # An argument that is a path names one file, not a folder.
  assert load_suite(str(REPO / "configs" / "evals" / "cir.py") + ":workdirs/vlm_ntp")[0] == "cir_workdirs_vlm_ntp"
  with pytest.raises(ValueError, match="unknown variant 'nope'"):
    load_suite(suite + ":nope")


def test_nearest_token_prompts_are_the_pieces_nearest_the_image_code(vlm_run, tiny_data_dir, tmp_path):
  from vlmjax import evaluate
  from vlmjax.evals.captioning import Captioning, generation_prefix
  from vlmjax.evals.common import Embedder, EvalContext
  from conftest import single_device_mesh
  config, workdir = vlm_run
  loaded = RunDir(workdir).load()
  model, params, tokenizer = loaded.model, loaded.params, loaded.tokenizer
  ctx = EvalContext(config.data, config.input, tokenizer, Embedder(model, params, single_device_mesh(), 4), 4)
  n = model.num_image_tokens(config.input.image_size)
  prefix, kinds = generation_prefix(n, (), tokenizer.bos_id)
  prefixes, prefix_kinds = np.tile(prefix, (4, 1)), np.tile(kinds, (4, 1))
  prompts = Captioning("c", nearest_tokens=5).nearest_token_prompts(ctx, prefixes, prefix_kinds)
  images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  got = prompts(images)
  out = model.apply({"params": params}, images=images, tokens=prefixes, attention_mask=prefix_kinds)
  code, table = np.asarray(out["image_code"], np.float64), np.asarray(out["word_embeddings"], np.float64)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  similarity = unit(code) @ unit(table).T
  similarity[:, [0, 1, 2, 3]] = -np.inf  # pad, unknown, BOS, EOS
  assert (got[:, 0] == tokenizer.bos_id).all()
  np.testing.assert_array_equal(got[:, 1:], np.argsort(-similarity, axis=1)[:, :5])
  suite = tmp_path / "suite.py"
  data = dict(name="vlmjax_shapes", data_dir=tiny_data_dir, builder_config="tiny")
  suite.write_text("import ml_collections\ndef get_config(arg=None):\n  return ml_collections.ConfigDict(dict(c=dict("
                   "type='captioning', split='test', num_examples=6, max_new_tokens=5, nearest_tokens=3, "
                   f"data={data!r})))\n")
  results = evaluate.evaluate_suite(str(suite), workdir=workdir, out=str(tmp_path / "out"), show=lambda *a: None)
  assert "c/CIDEr" in results["results"]
