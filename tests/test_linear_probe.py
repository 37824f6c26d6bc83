"""Linear probe and few-shot evaluators on synthetic frozen features: answers known by construction,
the validation split choosing the L2 weight, big_vision's ridge system against a numpy solve, and
the evaluators' `run` through a stand-in eval context (no model is built or trained)."""
import numpy as np
import pytest

from vlmjax import registry
from vlmjax.evals import linear_probe as lp

D, C = 8, 3  # every logistic fit below has 120 train examples of this shape: one compilation


def _clusters(counts, seed, sep=6.0, labels=None):
  """Gaussian clusters around fixed, well-apart centres: `counts[c]` points of class c, shuffled.
  -> features float32 [sum(counts), D], labels int [sum(counts)]."""
  centres = np.random.default_rng(123).standard_normal((C, D)) * sep
  rng = np.random.default_rng(seed)
  y = rng.permutation(np.repeat(np.arange(C), counts)) if labels is None else np.asarray(labels)
  return (centres[y] + rng.standard_normal((len(y), D))).astype(np.float32), y


def _one_hot_features(y, noise, seed):
  """Class c's features: one-hot(c) in the first C dimensions, zeros after, plus Gaussian noise."""
  x = np.zeros((len(y), D), np.float32)
  x[np.arange(len(y)), y] = 1.0
  return x + noise * np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)


# --- linear probe ---------------------------------------------------------------------------------


def test_separable_clusters_are_probed_perfectly():
  out = lp.linear_probe(*_clusters((40, 40, 40), 1), *_clusters((20, 20, 20), 2), *_clusters((30, 30, 30), 3))
  assert out["test_top1"] == 1.0 and out["validation_top1"] == 1.0
  assert len(out["validation_curve"]) == len(lp.L2_GRID) == 10
  assert lp.L2_GRID[0] == pytest.approx(1e-6) and lp.L2_GRID[-1] == pytest.approx(1e2)
  # Among the weights with the best validation accuracy, the heaviest is chosen.
  assert out["l2"] == max(l2 for l2, top1 in zip(lp.L2_GRID, out["validation_curve"]) if top1 == 1.0)


def test_one_hot_features_give_the_answer_worked_out_by_hand():
  """Features one-hot(class) + small noise: the probe predicts each test point's largest one-hot
  coordinate. Test points (no noise): 6 clean one-hots, 2 mixtures, 2 with a wrong label."""
  train_y = np.repeat(np.arange(C), 40)
  test_x = np.zeros((10, D), np.float32)
  test_x[:6, :C] = np.eye(C)[[0, 1, 2, 0, 1, 2]]
  test_x[6, :C] = [0.8, 0.2, 0.0]  # mostly class 0
  test_x[7, :C] = [0.0, 0.3, 0.7]  # mostly class 2
  test_x[8, :C] = [1.0, 0.0, 0.0]  # labelled 1 below: a miss
  test_x[9, :C] = [0.0, 0.0, 1.0]  # labelled 0 below: a miss
  test_y = np.array([0, 1, 2, 0, 1, 2, 0, 2, 1, 0])
  val_y = np.arange(30) % C
  out = lp.linear_probe(_one_hot_features(train_y, 0.05, 0), train_y, _one_hot_features(val_y, 0.05, 1), val_y,
                        test_x, test_y, l2_grid=(1e-3, 1e-1))
  assert out["validation_top1"] == 1.0
  assert out["test_top1"] == 0.8  # 8 of 10
  assert out["l2"] == 1e-1  # both weights separate the classes; ties go to the heavier


def test_the_validation_split_decides_the_weight():
  """One train set (class 0 the majority), two validation sets. The heavy weight leaves only the bias,
  so it predicts class 0 everywhere; the light one follows the features. Validation labelled by the
  features picks the light weight; validation where every point is labelled 0 picks the heavy one,
  and the test accuracy is then the share of class 0 in the test split."""
  grid = (1e-4, 1e2)
  train = _clusters((60, 30, 30), 1)
  test = _clusters((10, 20, 20), 3)
  val_x, val_y = _clusters((10, 20, 10), 2)
  light = lp.linear_probe(*train, val_x, val_y, *test, l2_grid=grid)
  assert light["l2"] == 1e-4 and light["validation_curve"] == [1.0, 0.25] and light["test_top1"] == 1.0
  heavy = lp.linear_probe(*train, val_x, np.zeros_like(val_y), *test, l2_grid=grid)
  assert heavy["l2"] == 1e2 and heavy["validation_curve"] == [0.25, 1.0]
  assert heavy["validation_top1"] == 1.0 and heavy["test_top1"] == 10 / 50


# --- few-shot -------------------------------------------------------------------------------------


def _numpy_ridge(x, y, classes, l2):
  """big_vision's few-shot system in float64, the primal form solved directly whatever the shape."""
  mean, std = x.mean(axis=0), x.std(axis=0) + lp.STD_EPS
  xb = np.concatenate([(x - mean) / std, np.full((len(x), 1), lp.BIAS_FEATURE)], axis=1)
  targets = 2.0 * (y[:, None] == classes[None, :]) - 1.0
  w = np.linalg.solve(xb.T @ xb + l2 * np.eye(xb.shape[1]), xb.T @ targets)
  return mean, std, w


def test_fewshot_matches_a_numpy_ridge_solve():
  x, y = _clusters((30, 30, 30), 5, sep=0.6)  # overlapping: accuracies well below 1
  y = y + 4  # class ids need not start at 0 or be contiguous in the code under test
  test_x, test_y = _clusters((40, 40, 40), 6, sep=0.6)
  test_y = test_y + 4
  classes = np.unique(y)
  assert lp.FEWSHOT_L2 == 2.0 ** 10
  results = lp.fewshot_top1(x, y, test_x, test_y, shots=(1, 5, 10), seed=0)
  assert list(results) == [1, 5, 10]
  for k in (1, 5, 10):  # 3 and 15 examples: the dual form (N < D + 1); 30: the primal
    picked = lp.fewshot_indices(y, classes, k, seed=0)
    assert len(picked) == C * k and all((y[picked[c * k:(c + 1) * k]] == classes[c]).all() for c in range(C))
    mean, std, w = _numpy_ridge(x[picked].astype(np.float64), y[picked], classes, lp.FEWSHOT_L2)
    fit = lp.fit_ridge(x[picked], lp._columns(classes, y[picked]), np.float32(lp.FEWSHOT_L2), C)
    np.testing.assert_allclose(np.asarray(fit["mean"]), mean, atol=1e-5)
    np.testing.assert_allclose(np.asarray(fit["w"]), w, rtol=1e-3, atol=1e-3 * np.abs(w).max())
    scores = np.concatenate([(test_x - mean) / std, np.full((len(test_x), 1), lp.BIAS_FEATURE)], axis=1) @ w
    expected = np.mean(classes[scores.argmax(axis=1)] == test_y)
    assert results[k] == pytest.approx(expected), k
  assert 1 / C < results[1] < results[10] < 1.0
  # The draws are nested: the 1-shot examples are the first of each class's 5.
  five = lp.fewshot_indices(y, classes, 5, seed=0)
  np.testing.assert_array_equal(lp.fewshot_indices(y, classes, 1, seed=0), five[::5])
  assert not np.array_equal(lp.fewshot_indices(y, classes, 5, seed=1), five)


def test_fewshot_needs_k_examples_of_each_class():
  y = np.array([0] * 6 + [1] * 6 + [2] * 4)
  with pytest.raises(ValueError, match="class 2 has 4 examples, fewer than 5 shots"):
    lp.fewshot_indices(y, np.arange(C), 5)


# --- the evaluators through a stand-in eval context -----------------------------------------------


class _Source(list):
  class_names = ()


class _Embedder:
  """An image's first pixel holds a key; its embedding is the feature stored under that key."""

  def __init__(self):
    self.features, self.seen = {}, 0

  def embed_images(self, images):
    self.seen += len(images)
    return np.stack([self.features[int(image[0, 0, 0])] for image in images])


class _Context:
  """`batches` and `embedder.embed_images` as an EvalContext has them, over given features."""

  def __init__(self, splits: dict, class_names=(), with_labels=True, batch_size=16):
    self.splits, self.class_names, self.with_labels, self.batch_size = splits, class_names, with_labels, batch_size
    self.embedder = _Embedder()
    for s, (x, _) in enumerate(splits.values()):
      self.embedder.features.update({1000 * s + i: f for i, f in enumerate(x)})
    self.offsets = {name: 1000 * s for s, name in enumerate(splits)}

  def batches(self, split, passthrough=(), limit=0):
    assert passthrough == ("label",)
    x, y = self.splits[split]
    source = _Source(range(len(y)))
    source.class_names = self.class_names
    n = min(limit, len(y)) if limit > 0 else len(y)

    def batches():
      for start in range(0, n, self.batch_size):
        keys = self.offsets[split] + np.arange(start, min(start + self.batch_size, n))
        batch = {"image": np.broadcast_to(keys[:, None, None, None], (len(keys), 4, 4, 3)).astype(np.float32)}
        if self.with_labels:
          batch["label"] = np.asarray(y[start:start + len(keys)])
        yield batch

    return source, batches()


def _with_unlabelled(x, y, every=10, extra=0):
  """Inserts a record labelled -1 (a multi-object scene) after every `every`, then `extra` more
  labelled records at the end."""
  xs, ys = [], []
  for i in range(len(y)):
    xs.append(x[i])
    ys.append(y[i])
    if i % every == every - 1:
      xs.append(np.full(D, 1e3, np.float32))  # would wreck the fit if it were used
      ys.append(-1)
  tail_x, tail_y = _clusters((extra, 0, 0), 9)
  return np.concatenate([np.stack(xs), tail_x]), np.concatenate([np.array(ys), tail_y])


def test_linear_probe_evaluator():
  train = _with_unlabelled(*_clusters((40, 40, 40), 1), extra=7)  # 120 labelled, 12 unlabelled, 7 past the limit
  ctx = _Context({"train": train, "validation": _clusters((10, 10, 10), 2), "test": _clusters((30, 30, 30), 3)},
                 class_names=("a", "b", "c"))
  evaluator = registry.get("evaluator", "linear_probe")(name="probe", num_train_examples=132)
  assert isinstance(evaluator, lp.LinearProbe)
  assert evaluator.splits == ("train", "validation", "test")
  results = evaluator.run(ctx)
  assert set(results) == {"probe/test_top1", "probe/validation_top1", "probe/l2"}
  assert results["probe/test_top1"] == 1.0 and results["probe/validation_top1"] == 1.0
  assert results["probe/l2"] in lp.L2_GRID
  assert ctx.embedder.seen == 120 + 30 + 90  # unlabelled records and those past the limit never embedded


def test_fewshot_evaluator():
  train, test = _clusters((12, 12, 12), 1, sep=1.0), _clusters((20, 20, 20), 3, sep=1.0)
  ctx = _Context({"train": _with_unlabelled(*train), "test": test})
  evaluator = registry.get("evaluator", "fewshot")(name="fs", num_examples=45)
  assert isinstance(evaluator, lp.FewShot) and evaluator.splits == ("train", "test")
  results = evaluator.run(ctx)
  assert ctx.embedder.seen == 36 + 45  # unlabelled records and test records past the limit never embedded
  # The mean over big_vision's 3 seeds of the labelled train records' draws, on the first 45 test records.
  runs = [lp.fewshot_top1(*train, test[0][:45], test[1][:45], seed=seed) for seed in range(3)]
  assert results == {f"fs/{k}shot_top1": pytest.approx(np.mean([r[k] for r in runs])) for k in (1, 5, 10)}
  assert len({r[1] for r in runs}) > 1  # the seeds draw different examples


def _error(evaluator, ctx) -> str:
  with pytest.raises(ValueError) as info:
    evaluator.run(ctx)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_evaluator_errors_are_one_line_naming_the_eval_and_split():
  test = _clusters((5, 5, 5), 3)
  few = _Context({"train": _clusters((12, 12, 4), 1), "test": test})
  assert _error(lp.FewShot(name="fs", shots=(1, 5)), few) == (
      "evals.fs: split 'train' has 4 labelled example(s) of class 2, fewer than 5 shots (lower 'shots' or "
      "raise 'num_train_examples')")
  unlabelled = _Context({"train": (test[0], np.full(15, -1)), "test": test})
  assert _error(lp.FewShot(name="fs"), unlabelled) == "evals.fs: split 'train' has no labelled records"
  no_labels = _Context({"train": test, "test": test}, with_labels=False)
  assert _error(lp.FewShot(name="fs", shots=(1,)), no_labels) == "evals.fs: split 'train' has no 'label' field"
  unseen = _Context({"train": _clusters((5, 5, 0), 1), "test": test})
  assert _error(lp.FewShot(name="fs", shots=(1,)), unseen) == (
      "evals.fs: split 'test' has class 2 (1 class(es) in all), which the train split never shows")
  with pytest.raises(ValueError, match="evals.fs: 'shots' \\(\\) and 'num_seeds' 3 must be positive"):
    lp.FewShot(name="fs", shots=())
  named = _Context({"tr": test, "va": test, "te": (test[0], test[1] + 1)}, class_names=("a", "b", "c"))
  message = _error(lp.LinearProbe(name="lp", train_split="tr", validation_split="va", test_split="te"), named)
  assert message == "evals.lp: split 'te' has label 3, but the dataset names 3 classes"
