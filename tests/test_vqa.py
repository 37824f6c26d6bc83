"""Visual question answering: the question layout, question records through the pipeline (and their bad
input), a captioning + VQA mixture, and the `vqa` evaluator against a per-question recomputation."""
import json
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from vlmjax import batch_spec
from vlmjax.data import pipeline, shapes, sources
from vlmjax.evals.captioning import generation_prefix
from vlmjax.models.generate import make_generate
from vlmjax.run import RunDir
from vlmjax.train import train


def test_a_question_is_prefix_and_only_the_answer_is_supervised():
  text = np.array([2, 11, 12, 13, 21, 22, 3, 0, 0], np.int32)  # BOS question(3) answer(2) EOS pad
  for attention in ("causal", "bidirectional"):
    e = batch_spec.caption_sequence(text, 2, prompt=(7,), prefix_attention=attention, question_len=3)
    assert e["tokens"].tolist() == [-1, -1, 2, 7, 11, 12, 13, 21, 22, 3, 0, 0]
    # The position before each answer piece and before EOS predicts it; nothing else is supervised.
    assert e["loss_weights"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert e["targets"][6:9].tolist() == [21, 22, 3]
    prefix, kinds = generation_prefix(2, (7, 11, 12, 13), 2, attention)
    assert prefix.tolist() == e["tokens"][:7].tolist() and kinds.tolist() == e["attention_mask"][:7].tolist()
  assert e["attention_mask"].tolist() == [1] * 7 + [2] * 3 + [0] * 2  # bidirectional: the question too


def test_question_records_and_their_bad_input(tiny_tokenizer):
  image = np.zeros((32, 32, 3), np.uint8)
  preprocess = pipeline.Preprocess(tiny_tokenizer, 32, 32)
  questions = [dict(type="count", question="how many objects are there?", answer="two"),
               dict(type="color", question="what color is the circle?", answer="red")]
  drawn = set()
  for seed in range(8):
    example = preprocess.random_map(dict(image=image, questions=questions), np.random.default_rng(seed))
    question_len = example["question_len"]
    text = example["text"]
    decoded = tiny_tokenizer.decode([text])[0]
    drawn.add(decoded)
    assert decoded in {f"{q['question']} {q['answer']}" for q in questions} or decoded.endswith(("two", "red"))
    asked = tiny_tokenizer.decode([np.concatenate([text[:question_len + 1], [3]])])[0]
    assert asked in {tiny_tokenizer.decode(tiny_tokenizer.encode([q["question"]], 32))[0] for q in questions}
  assert len(drawn) == 2  # the question is drawn per example
  no_answer = preprocess.map(dict(image=image, questions=[dict(type="count", question="how many?", answer=" ")]))
  assert no_answer == pipeline.BadRecord("empty_caption", "the question 'how many?' has no answer")
  long = preprocess.map(dict(image=image, questions=[dict(type="count", question="how many " * 20, answer="two")]))
  assert long.reason == "long_caption" and "over input.max_text_len = 32" in long.detail
  assert preprocess.map(dict(image=image, questions=[])).reason == "empty_caption"


def test_the_vqa_source_reads_the_scene_questions(tiny_data_dir):
  config = tiny_config(tiny_data_dir)
  config.data.name = "vlmjax_shapes_vqa"
  record = sources.make_source(config.data, "validation")[5]
  assert "caption" not in record
  assert record["questions"] == shapes.make_example(0, "validation", 5, 32)["questions"]


@pytest.fixture(scope="module")
def vqa_run(tiny_data_dir, tmp_path_factory):
  """A tiny VLM trained 4 steps on 8 devices on captions and questions mixed half and half, evaluated by
  `vqa` both ways."""
  data = dict(data_dir=tiny_data_dir, builder_config="tiny")
  config = tiny_config(tiny_data_dir, **{
      "total_steps": 4, "mesh": dict(data=2, fsdp=4, tensor=1),
      "input": dict(image_size=32, max_text_len=24, crop_min=1.0, brightness=0.0),
      "model": dict(name="vlm", image=dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2),
                    decoder=dict(variant="mu", width=32, depth=1, mlp_dim=64, num_heads=4, num_kv_heads=2),
                    projector=dict(kind="mlp")),
      "objectives": {"ntp": {"weight": 1.0}}})
  config.data.mixture = dict(captions=dict(weight=1.0, data=dict(name="vlmjax_shapes", **data)),
                             questions=dict(weight=1.0, data=dict(name="vlmjax_shapes_vqa", **data)))
  config.evals = dict(vqa=dict(type="vqa", split="test", num_examples=9),
                      closed=dict(type="vqa", split="test", num_examples=9, scoring="likelihood"))
  workdir = str(tmp_path_factory.mktemp("vqa") / "run")
  train(config, workdir)
  return config, workdir


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_vqa_evaluator_equals_a_per_question_recomputation(vqa_run):
  config, workdir = vqa_run
  reported = json.load(open(os.path.join(workdir, "eval_results.json")))
  history = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any(h.get("data/share/questions", 0) > 0.3 for h in history)  # both parts trained
  loaded = RunDir(workdir).load()
  model, params, tokenizer = loaded.model, loaded.params, loaded.tokenizer
  source = sources.make_source(config.data, "test")
  preprocess = pipeline.Preprocess(tokenizer, 32, 24)
  n = model.num_image_tokens(32)
  generate = make_generate(model, 8, eos_id=tokenizer.eos_id)
  logits_of = jax.jit(lambda p, *example: model.apply({"params": p}, *(x[None] for x in example))["logits"][0])
  rows = []
  for i in range(9):
    record = source[i]
    image = preprocess.map(record)["image"]
    for q in record["questions"]:
      rows.append((image, q, tokenizer.pieces([q["question"]])[0]))
  candidates = {}
  for _, q, _ in rows:
    candidates.setdefault(q["type"], set()).add(q["answer"])
  right_generated, right_likely, margins = {}, {}, {}
  for image, q, pieces in rows:
    # Generated alone, its prefix unpadded, on one device.
    prefix, _ = generation_prefix(n, pieces, tokenizer.bos_id)
    out = generate(params, prefix[None], jax.random.PRNGKey(0), image[None])
    answer = tokenizer.decode(np.asarray(out))[0]
    right_generated.setdefault(q["type"], []).append(" ".join(answer.lower().split()) == q["answer"])
    # Each candidate's log-likelihood in float64.
    scores = {}
    for candidate in sorted(candidates[q["type"]]):
      row = [tokenizer.bos_id, *pieces, *tokenizer.pieces([candidate])[0], tokenizer.eos_id]
      text = np.zeros(24, np.int32)
      text[:len(row)] = row
      e = batch_spec.caption_sequence(text, n, question_len=len(pieces))
      logits = np.asarray(logits_of(params, image, e["tokens"], e["attention_mask"], e["loss_weights"]), np.float64)
      logp = np_log_softmax(logits)[np.arange(len(e["targets"])), e["targets"]]
      scores[candidate] = float((logp * e["loss_weights"]).sum())
    right_likely.setdefault(q["type"], []).append(max(scores, key=scores.get) == q["answer"])
    if set(scores) == {"yes", "no"}:
      margins.setdefault(q["type"], []).append((scores["yes"] - scores["no"], q["answer"] == "yes"))
  assert set(right_generated) == set(shapes.QUESTION_TYPES)
  for name, right in (("vqa", right_generated), ("closed", right_likely)):
    everything = [r for values in right.values() for r in values]
    assert reported[f"{name}/accuracy"] == pytest.approx(np.mean(everything)), name
    for kind, values in right.items():
      assert reported[f"{name}/{kind}"] == pytest.approx(np.mean(values)), (name, kind)
  for kind, pairs in margins.items():  # AUC: over all (yes, no) pairs, ties half
    yes = [m for m, truth in pairs if truth]
    no = [m for m, truth in pairs if not truth]
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a in yes for b in no]
    assert reported[f"closed/{kind}_auc"] == pytest.approx(np.mean(wins), abs=1e-6) if wins else True, kind
  assert {"closed/presence_auc", "closed/relation_auc"} <= set(reported)


def test_roc_auc_counts_ties_half():
  from vlmjax.evals.vqa import roc_auc
  assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
  assert roc_auc([1.0, 1.0], [True, False]) == 0.5
  assert np.isnan(roc_auc([1.0, 2.0], [True, True]))


def _suite(tmp_path, tiny_data_dir, **entry):
  suite = tmp_path / "suite.py"
  data = dict(name="vlmjax_shapes", data_dir=tiny_data_dir, builder_config="tiny")
  suite.write_text("import ml_collections\n"
                   "def get_config(arg=None):\n"
                   f"  return ml_collections.ConfigDict(dict(q=dict(type='vqa', split='test', num_examples=4, "
                   f"data={data!r}, **{entry!r})))\n")
  return str(suite)


def test_vqa_bad_input_is_one_line(vqa_run, tiny_data_dir, tmp_path):
  from vlmjax import evaluate
  _, workdir = vqa_run
  run = lambda **entry: evaluate.evaluate_suite(_suite(tmp_path, tiny_data_dir, **entry), workdir=workdir,
                                                out=str(tmp_path / "out"), show=lambda *a: None)
  with pytest.raises(ValueError, match=r"^evals.q: question type 'colour' is not one of color, count, presence, "
                                       r"position, relation$"):
    run(types=("colour",))
  with pytest.raises(ValueError, match=r"^config: evals.q: scoring 'vote' is not one of generate, likelihood$"):
    run(scoring="vote")
  assert set(run(types=("count",))["results"]) == {"q/accuracy", "q/count"}


def test_a_question_too_long_for_the_layout_names_the_record(vqa_run, tiny_data_dir):
  from vlmjax.evals.common import EvalContext
  from vlmjax.evals.vqa import Vqa
  config, workdir = vqa_run
  data = tiny_config(tiny_data_dir).data
  short = config.input.copy_and_resolve_references()
  short.max_text_len = 8
  ctx = EvalContext(data, short, RunDir(workdir).load().tokenizer, embedder=None, batch_size=16)
  with pytest.raises(ValueError, match=r"^evals.q: the question '.*' of record \d+ of 'test' is \d+ pieces, over "
                                       r"the 5 that input.max_text_len = 8 leaves$"):
    Vqa("q").questions(ctx)
