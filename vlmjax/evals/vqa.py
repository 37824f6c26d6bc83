"""Visual question answering: `vqa`, exact-match accuracy per question type.

Every question of the first `num_examples` records of a split (a record's `questions`: {type,
question, answer}, as `vlmjax_shapes` writes them) is asked in the training layout of a question
record: `[image] BOS prompt question`, then the answer (`batch_spec.caption_sequence`). Two ways to
answer:

- `scoring='generate'`: the decoder generates the answer greedily with the KV cache (prefixes of
  different lengths left-padded); it is right when its words equal the answer's (lower-cased, as
  `captioning.words`). An open answer: a model that never learnt the answer format scores 0.
- `scoring='likelihood'`: the answer is the candidate of highest log-likelihood among the answers
  that questions of its type have in the evaluated records (closed set: for yes/no questions, 'yes'
  against 'no'), teacher-forced as `vlm_compositional` scores captions. It needs no answer format,
  so it also reads a captioning model's knowledge. For a type whose answers are yes and no it
  also reports `<name>/<type>_auc`: the ROC AUC of log p(yes) − log p(no) against the truth, which
  asks whether the image moves the answer, whatever the model's prior for 'yes' (a model that
  always prefers one answer scores that answer's share as accuracy, and 0.5 as AUC only if the
  margin ignores the image).

Reports `<name>/accuracy` over all questions and `<name>/<type>` per type, over the types in
`types` (default: all the source's). A question whose layout does not fit `input.max_text_len` is an
error naming its record, as is a type the source does not have.
"""
import collections

import jax
import numpy as np

from vlmjax import registry, sharding
from vlmjax.data import pipeline
from vlmjax.evals.captioning import generation_prefix, words
from vlmjax.evals.compositional import likelihood_scorer
from vlmjax.models.generate import make_generate

SCORINGS = ("generate", "likelihood")


@registry.register("evaluator", "vqa")
class Vqa:

  def __init__(self, name: str, split: str = "test", num_examples: int = 500, types: tuple = (),
               scoring: str = "generate", max_new_tokens: int = 8):
    if scoring not in SCORINGS:
      raise ValueError(f"evals.{name}: scoring {scoring!r} is not one of {', '.join(SCORINGS)}")
    self.name, self.split, self.num_examples, self.types = name, split, num_examples, tuple(types)
    self.scoring, self.max_new_tokens = scoring, max_new_tokens
    self.results = []  # (type, question, answer, prediction) of the last run
    self.scores = []  # with scoring 'likelihood': {candidate: log-likelihood} per question

  def questions(self, ctx):
    """-> (images float32 [N, S, S, 3], rows [(type, question, answer, question pieces)], the image of
    each row [len(rows)]) for the first `num_examples` records, over the types asked."""
    source = ctx.source(self.split)
    known = tuple(getattr(source, "question_types", ()) or ())
    unknown = [t for t in self.types if known and t not in known]
    if unknown:
      raise ValueError(f"evals.{self.name}: question type '{unknown[0]}' is not one of {', '.join(known)}")
    count = min(self.num_examples, len(source)) if self.num_examples > 0 else len(source)
    room = ctx.input_config.max_text_len - 3  # BOS, at least one answer piece, EOS
    images, rows, image_of = [], [], []
    _, batches = ctx.batches(self.split, limit=count)
    for batch in batches:
      for image, index in zip(np.asarray(batch["image"], np.float32), batch["index"]):
        record = source[int(index)]
        if "questions" not in record:
          raise ValueError(f"evals.{self.name}: the records of '{self.split}' have no questions (data.name "
                           "vlmjax_shapes has them)")
        for q in record["questions"]:
          if self.types and q["type"] not in self.types:
            continue
          if known and q["type"] not in known:
            raise ValueError(f"evals.{self.name}: record {int(index)} of '{self.split}' has question type "
                             f"'{q['type']}', not one of {', '.join(known)}")
          pieces = ctx.tokenizer.pieces([q["question"]])[0]
          if len(pieces) > room:
            raise ValueError(f"evals.{self.name}: the question '{q['question']}' of record {int(index)} of "
                             f"'{self.split}' is {len(pieces)} pieces, over the {room} that input.max_text_len = "
                             f"{ctx.input_config.max_text_len} leaves")
          rows.append((q["type"], q["question"], q["answer"], pieces))
          image_of.append(len(images))
        images.append(image)
    if not rows:
      raise ValueError(f"evals.{self.name}: no questions of types {', '.join(self.types) or 'any'} in the first "
                       f"{count} records of '{self.split}'")
    return np.stack(images), rows, np.asarray(image_of)

  def generated(self, ctx, images, rows, image_of) -> list[str]:
    embedder = ctx.embedder
    model, mesh, batch_size = embedder.model, embedder.mesh, embedder.batch_size
    prompt = pipeline.prompt_ids(ctx.tokenizer, ctx.input_config)
    num_image_tokens = model.num_image_tokens(ctx.input_config.image_size)
    width = num_image_tokens + 1 + len(prompt) + ctx.input_config.max_text_len  # one compilation
    generate = make_generate(model, self.max_new_tokens, eos_id=ctx.tokenizer.eos_id)
    prefixes = np.zeros((len(rows), width), np.int32)  # left-padded: PAD tokens of kind PAD
    kinds = np.zeros((len(rows), width), np.int32)
    for i, (_, _, _, pieces) in enumerate(rows):
      tokens, mask = generation_prefix(num_image_tokens, (*prompt, *pieces), ctx.tokenizer.bos_id,
                                       pipeline.prefix_attention(ctx.input_config))
      prefixes[i, width - len(tokens):], kinds[i, width - len(tokens):] = tokens, mask
    predictions = []
    for start in range(0, len(rows), batch_size):
      chunk = slice(start, start + batch_size)
      batch = {k: sharding.global_batch(sharding.padded(v, batch_size), mesh)
               for k, v in (("tokens", prefixes[chunk]), ("kinds", kinds[chunk]), ("image", images[image_of[chunk]]))}
      with embedder.use():
        out = generate(embedder.params, batch["tokens"], jax.random.PRNGKey(0), batch["image"], batch["kinds"])
      predictions += ctx.tokenizer.decode(np.asarray(jax.device_get(out))[:len(prefixes[chunk])])
    return predictions

  def most_likely(self, ctx, images, rows, image_of) -> list[str]:
    score = likelihood_scorer(ctx, f"evals.{self.name}: vqa with scoring 'likelihood'")
    candidates = collections.defaultdict(set)
    for kind, _, answer, _ in rows:
      candidates[kind].add(answer)
    bos, eos, length = ctx.tokenizer.bos_id, ctx.tokenizer.eos_id, ctx.input_config.max_text_len
    pairs = []  # (row, candidate, text, question length)
    for i, (kind, _, _, pieces) in enumerate(rows):
      answers = sorted(candidates[kind])
      for answer, answer_pieces in zip(answers, ctx.tokenizer.pieces(answers)):
        text = np.full(length, ctx.tokenizer.pad_id, np.int32)
        row = [bos, *pieces, *answer_pieces, eos][:length]
        text[:len(row)] = row
        pairs.append((i, answer, text, len(pieces)))
    scores = []
    step = ctx.embedder.batch_size
    for start in range(0, len(pairs), step):
      chunk = pairs[start:start + step]
      scores.append(score(images[image_of[[p[0] for p in chunk]]], np.stack([p[2] for p in chunk]),
                          np.array([p[3] for p in chunk])))
    scores = np.concatenate(scores)
    self.scores = [{} for _ in rows]  # row -> {candidate: log-likelihood}
    for (i, answer, _, _), value in zip(pairs, scores):
      self.scores[i][answer] = float(value)
    return [max(row_scores, key=row_scores.get) for row_scores in self.scores]

  def run(self, ctx) -> dict:
    model = ctx.embedder.model
    if not hasattr(model, "num_image_tokens") or not model.num_image_tokens(ctx.input_config.image_size):
      raise ValueError(f"evals.{self.name}: vqa needs a model that reads images into a decoder ('vlm'), "
                       f"not '{type(model).__name__}'")
    images, rows, image_of = self.questions(ctx)
    answer = self.generated if self.scoring == "generate" else self.most_likely
    predictions = answer(ctx, images, rows, image_of)
    self.results = [(kind, question, truth, prediction)
                    for (kind, question, truth, _), prediction in zip(rows, predictions)]
    right = collections.defaultdict(list)
    for kind, _, truth, prediction in self.results:
      right[kind].append(words(prediction) == words(truth))
    out = {f"{self.name}/accuracy": float(np.mean([r for values in right.values() for r in values]))}
    out.update({f"{self.name}/{kind}": float(np.mean(values)) for kind, values in sorted(right.items())})
    if self.scoring == "likelihood":
      for kind in sorted(right):
        rows_of = [i for i, (k, _, _, _) in enumerate(self.results) if k == kind]
        if set(self.scores[rows_of[0]]) == {"yes", "no"}:
          margin = [self.scores[i]["yes"] - self.scores[i]["no"] for i in rows_of]
          out[f"{self.name}/{kind}_auc"] = roc_auc(margin, [self.results[i][2] == "yes" for i in rows_of])
    return out


def roc_auc(scores, positive) -> float:
  """The probability that a random positive scores above a random negative (ties count half): the
  area under the ROC curve, by Mann–Whitney ranks. NaN without both classes."""
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  n_pos, n_neg = positive.sum(), (~positive).sum()
  if not n_pos or not n_neg:
    return float("nan")
  order = np.argsort(scores, kind="stable")
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  # Average ranks over ties.
  starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
  ends = np.r_[starts[1:], len(scores)]
  for start, end in zip(starts, ends):
    ranks[order[start:end]] = (start + end + 1) / 2
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
