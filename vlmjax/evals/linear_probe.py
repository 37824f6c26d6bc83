"""Classifiers trained on frozen image features: a linear probe and few-shot regression.

Both embed the labelled images of a train split with the current image tower, fit a linear
classifier on those features alone (the model is never updated) and measure top-1 accuracy on a
held-out split. They say how linearly separable the representation is, which zero-shot accuracy
(bounded by the text tower and the prompts) does not.

Linear probe (the protocol of the CLIP paper's linear-probe results; CLIP_benchmark reports
linear probes on frozen features too): multinomial logistic regression with a bias and an L2
penalty on the weights, fit full-batch with L-BFGS on features standardised by the training mean
and std. The penalty weight is swept over a log-spaced grid, each fit scored on a validation split,
and the test accuracy reported at the weight that scored best there (ties go to the heavier weight,
the simpler classifier). The loss is the mean cross-entropy plus `l2 / 2 * |W|^2`, so a weight
means the same whatever the number of training examples; the CLIP paper sweeps a finer grid over
a wider range, here 10 values from 1e-6 (all but unregularised) to 1e2 (the features all but
ignored, only the bias left) cover the same span of behaviour.

Few-shot (big_vision's `fewshot_lsr` evaluator): for k in `shots`, k training examples of each
class drawn with a seed (nested: the 5-shot set holds the 1-shot set), features whitened by the
mean and std of those examples, a constant 100 appended as the bias feature (so the bias is all but
unregularised), targets one-hot rescaled to +-1, and the closed-form ridge regression
`W = (X^T X + l2 I)^-1 X^T Y` (or its dual form when there are fewer examples than features) with
big_vision's fixed l2 = 2^10. A test image's class is the argmax of its regressed scores. big_vision
reports each of its 3 seeds; the evaluator here reports their mean.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from vlmjax import registry

L2_GRID = tuple(float(v) for v in np.logspace(-6, 2, 10))  # the linear probe's sweep
FEWSHOT_L2 = 2.0 ** 10  # big_vision's l2_reg for few-shot regression
BIAS_FEATURE = 100.0  # big_vision's constant bias feature
STD_EPS = 1e-5  # added to feature stds, as big_vision does


# --- features -------------------------------------------------------------------------------------


def standardize(train_x, *others):
  """Standardises features by the mean and std of `train_x` [N, D] -> each array [*, D] (float32)."""
  train_x = np.asarray(train_x, np.float32)
  mean, std = train_x.mean(axis=0), train_x.std(axis=0) + STD_EPS
  return tuple((np.asarray(x, np.float32) - mean) / std for x in (train_x,) + others)


def image_features(ctx, name: str, split: str, limit: int = 0):
  """The labelled records of `split` (its first `limit` records when > 0) embedded by the image
  tower -> (features float32 [N, E], labels int32 [N], the source). Records with label < 0 are
  skipped. ValueError (one line naming `evals.{name}` and the split) without labels or records."""
  source, batches = ctx.batches(split, passthrough=("label",), limit=limit)
  features, labels = [], []
  try:
    for batch in batches:
      label = np.asarray(batch["label"])
      if label.dtype.kind not in "iu":
        raise ValueError(f"evals.{name}: split '{split}' has {label.dtype} labels; integer class ids needed")
      keep = label >= 0
      if keep.any():
        features.append(np.asarray(ctx.embedder.embed_images(batch["image"][keep]), np.float32))
        labels.append(label[keep].astype(np.int32))
  except KeyError as e:
    if e.args != ("label",):
      raise
    raise ValueError(f"evals.{name}: split '{split}' has no 'label' field") from None
  if not labels:
    raise ValueError(f"evals.{name}: split '{split}' has no labelled records")
  return np.concatenate(features), np.concatenate(labels), source


def check_labels(name: str, split: str, labels, known=None, num_classes: int = 0):
  """ValueError unless every label is below `num_classes` (the dataset's class count; 0: not known)
  and one of `known` (the classes the classifier was trained on; None: any)."""
  if num_classes and labels.max() >= num_classes:
    raise ValueError(f"evals.{name}: split '{split}' has label {labels.max()}, but the dataset names "
                     f"{num_classes} classes")
  unknown = np.setdiff1d(labels, labels if known is None else known)
  if unknown.size:
    raise ValueError(f"evals.{name}: split '{split}' has class {unknown[0]} ({unknown.size} class(es) in "
                     "all), which the train split never shows")


# --- linear probe: L2-regularised logistic regression ---------------------------------------------


def _dot(a, b):
  # Full float32 matmuls: accelerators may otherwise round float32 operands (TF32, bfloat16 passes).
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def fit_logistic(x, y, l2, num_classes: int, max_iter: int = 1000, tol: float = 1e-5):
  """Multinomial logistic regression, full batch, by L-BFGS (optax.lbfgs with its zoom line search).

  x: float32 [N, D] (standardised), y: int [N] in [0, num_classes), l2: the weight of
  `l2 / 2 * |W|^2` added to the mean cross-entropy (the bias is not penalised). Stops after
  `max_iter` iterations or once the gradient's norm is below `tol`. -> {'w': [D, C], 'b': [C]}.
  """
  params = {"w": jnp.zeros((x.shape[1], num_classes), jnp.float32), "b": jnp.zeros((num_classes,), jnp.float32)}

  def loss(p):
    logits = _dot(x, p["w"]) + p["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + 0.5 * l2 * jnp.sum(p["w"] ** 2)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(p, updates), state

  def keep_going(carry):
    _, state = carry
    count = otu.tree_get(state, "count")
    return (count == 0) | ((count < max_iter) & (otu.tree_norm(otu.tree_get(state, "grad")) >= tol))

  params, _ = jax.lax.while_loop(keep_going, step, (params, opt.init(params)))
  return params


def _columns(classes, y):
  """Labels y [N] -> their indices in `classes` (sorted ids); -1 for labels not among them."""
  y = np.asarray(y, np.int64)
  index = np.clip(np.searchsorted(classes, y), 0, len(classes) - 1)
  return np.where(classes[index] == y, index, -1).astype(np.int32)


def linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, l2_grid=L2_GRID, max_iter: int = 1000) -> dict:
  """Fits `fit_logistic` for each weight of `l2_grid` on the train features, chooses the weight with
  the best validation accuracy (the heaviest among ties) and reports the test accuracy there.

  train_x [N, D], train_y int [N]; val_x [M, D], val_y [M]; test_x [T, D], test_y [T]. The classes
  are those train_y holds; a validation or test label outside them counts as a miss.
  -> {'l2', 'validation_top1', 'test_top1', 'validation_curve': validation top-1 per weight of l2_grid}.
  """
  classes = np.unique(np.asarray(train_y))
  train_c, val_c, test_c = (_columns(classes, y) for y in (train_y, val_y, test_y))
  train_x, val_x, test_x = standardize(train_x, val_x, test_x)
  top1 = lambda p, x, c: float(np.mean(np.argmax(x @ p["w"] + p["b"], axis=1) == c))
  curve, fits = [], []
  for l2 in l2_grid:
    fits.append(jax.device_get(fit_logistic(train_x, train_c, np.float32(l2), len(classes), max_iter)))
    curve.append(top1(fits[-1], val_x, val_c))
  best = max(range(len(l2_grid)), key=lambda i: (curve[i], l2_grid[i]))
  return {"l2": float(l2_grid[best]), "validation_top1": curve[best], "test_top1": top1(fits[best], test_x, test_c),
          "validation_curve": curve}


# --- few-shot: big_vision's regularised least squares ---------------------------------------------


def ridge_weights(x, targets, l2):
  """Closed-form ridge regression (no separate bias): x [N, D], targets [N, C] -> w [D, C] =
  (x^T x + l2 I)^-1 x^T targets, computed in the dual form x^T (x x^T + l2 I)^-1 targets when N < D
  (the same solution from an N x N system)."""
  n, d = x.shape
  if n >= d:
    return jax.scipy.linalg.solve(_dot(x.T, x) + l2 * jnp.eye(d, dtype=x.dtype), _dot(x.T, targets), assume_a="pos")
  return _dot(x.T, jax.scipy.linalg.solve(_dot(x, x.T) + l2 * jnp.eye(n, dtype=x.dtype), targets, assume_a="pos"))


def _with_bias(x):
  return jnp.pad(x, ((0, 0), (0, 1)), constant_values=BIAS_FEATURE)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def fit_ridge(x, y, l2, num_classes: int):
  """big_vision's few-shot regression. x: float32 [N, D], y: int [N] in [0, num_classes), l2: the
  ridge weight. x is whitened by its own mean and std, the bias feature appended, and +-1 one-hot
  targets regressed. -> {'mean': [D], 'std': [D], 'w': [D + 1, C]}."""
  mean, std = x.mean(axis=0), x.std(axis=0) + STD_EPS
  targets = 2.0 * jax.nn.one_hot(y, num_classes, dtype=x.dtype) - 1.0
  return {"mean": mean, "std": std, "w": ridge_weights(_with_bias((x - mean) / std), targets, l2)}


@jax.jit
def ridge_scores(fit, x):
  """`fit_ridge`'s class scores for x [N, D] -> [N, C]."""
  return _dot(_with_bias((x - fit["mean"]) / fit["std"]), fit["w"])


def fewshot_indices(train_y, classes, shots: int, seed: int = 0):
  """big_vision's draw: a seeded permutation of each class's examples, its first `shots` kept (so
  the draws for growing `shots` are nested). -> int [len(classes) * shots], class by class.
  ValueError when a class has fewer than `shots` examples."""
  rng = np.random.default_rng(seed)
  train_y = np.asarray(train_y)
  picked = []
  for c in classes:
    where = np.flatnonzero(train_y == c)
    if len(where) < shots:
      raise ValueError(f"class {c} has {len(where)} examples, fewer than {shots} shots")
    picked.append(rng.permutation(where)[:shots])
  return np.concatenate(picked)


def fewshot_top1(train_x, train_y, test_x, test_y, shots=(1, 5, 10), l2: float = FEWSHOT_L2, seed: int = 0) -> dict:
  """k-shot top-1 accuracy for each k in `shots`: `fit_ridge` on k examples of each class of train_y
  (drawn by `fewshot_indices` with `seed`), scored on the test features.

  train_x [N, D], train_y int [N]; test_x [T, D], test_y [T] (a label train_y never holds counts as
  a miss). -> {k: top-1}."""
  classes = np.unique(np.asarray(train_y))
  train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
  train_c, test_c = _columns(classes, train_y), _columns(classes, test_y)
  results = {}
  for k in shots:
    picked = fewshot_indices(train_y, classes, k, seed)
    fit = fit_ridge(train_x[picked], train_c[picked], np.float32(l2), len(classes))
    results[k] = float(np.mean(np.argmax(np.asarray(ridge_scores(fit, test_x)), axis=1) == test_c))
  return results


# --- evaluators -----------------------------------------------------------------------------------


@registry.register("evaluator", "linear_probe")
class LinearProbe:
  """Logistic regression on frozen image features; the L2 weight chosen on `validation_split`.

  Reports `{name}/test_top1`, `{name}/validation_top1` and `{name}/l2` (the chosen weight).
  `num_train_examples` / `num_examples`: read only the first that many records of the train split /
  of the validation and test splits (0: all).
  """

  def __init__(self, name: str, train_split: str = "train", validation_split: str = "validation",
               test_split: str = "test", num_train_examples: int = 0, num_examples: int = 0,
               l2_grid: tuple = L2_GRID, max_iter: int = 1000):
    self.name, self.train_split, self.test_split = name, train_split, test_split
    self.validation_split = validation_split
    self.num_train_examples, self.num_examples = num_train_examples, num_examples
    self.l2_grid, self.max_iter = tuple(float(v) for v in l2_grid), max_iter
    if not self.l2_grid or min(self.l2_grid) < 0:
      raise ValueError(f"evals.{name}: 'l2_grid' {l2_grid!r} must hold at least one weight >= 0")
    self.splits = (train_split, validation_split, test_split)

  def run(self, ctx) -> dict:
    train_x, train_y, source = image_features(ctx, self.name, self.train_split, self.num_train_examples)
    num_classes = len(getattr(source, "class_names", ()) or ())
    check_labels(self.name, self.train_split, train_y, None, num_classes)
    evals = {}
    for split in (self.validation_split, self.test_split):
      evals[split] = image_features(ctx, self.name, split, self.num_examples)[:2]
      check_labels(self.name, split, evals[split][1], np.unique(train_y), num_classes)
    out = linear_probe(train_x, train_y, *evals[self.validation_split], *evals[self.test_split],
                       l2_grid=self.l2_grid, max_iter=self.max_iter)
    return {f"{self.name}/test_top1": out["test_top1"], f"{self.name}/validation_top1": out["validation_top1"],
            f"{self.name}/l2": out["l2"]}


@registry.register("evaluator", "fewshot")
class FewShot:
  """big_vision's few-shot regression on frozen image features: `{name}/{k}shot_top1` for k in
  `shots`, the mean over `num_seeds` draws of the k examples per class (seeds 0, 1, ...).

  `num_train_examples` / `num_examples`: read only the first that many records of the train / test
  split (0: all); every class the train records hold needs at least max(shots) of them.
  """

  def __init__(self, name: str, train_split: str = "train", test_split: str = "test", num_train_examples: int = 0,
               num_examples: int = 0, shots: tuple = (1, 5, 10), l2: float = FEWSHOT_L2, num_seeds: int = 3):
    self.name, self.train_split, self.test_split = name, train_split, test_split
    self.num_train_examples, self.num_examples = num_train_examples, num_examples
    self.shots, self.l2, self.num_seeds = tuple(int(k) for k in shots), float(l2), num_seeds
    if not self.shots or min(self.shots) < 1 or num_seeds < 1:
      raise ValueError(f"evals.{name}: 'shots' {shots!r} and 'num_seeds' {num_seeds} must be positive")
    self.splits = (train_split, test_split)

  def run(self, ctx) -> dict:
    train_x, train_y, source = image_features(ctx, self.name, self.train_split, self.num_train_examples)
    num_classes = len(getattr(source, "class_names", ()) or ())
    check_labels(self.name, self.train_split, train_y, None, num_classes)
    classes, counts = np.unique(train_y, return_counts=True)
    if counts.min() < max(self.shots):
      raise ValueError(f"evals.{self.name}: split '{self.train_split}' has {counts.min()} labelled example(s) of "
                       f"class {classes[counts.argmin()]}, fewer than {max(self.shots)} shots (lower 'shots' or "
                       "raise 'num_train_examples')")
    test_x, test_y, _ = image_features(ctx, self.name, self.test_split, self.num_examples)
    check_labels(self.name, self.test_split, test_y, np.unique(train_y), num_classes)
    runs = [fewshot_top1(train_x, train_y, test_x, test_y, self.shots, self.l2, seed) for seed in range(self.num_seeds)]
    return {f"{self.name}/{k}shot_top1": float(np.mean([r[k] for r in runs])) for k in self.shots}
