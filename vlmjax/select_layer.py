"""Which layers of two frozen towers to align (STRUCTURE's layer selection by mutual kNN).

  python -m vlmjax.select_layer --workdir workdirs/clip [--split validation] [--num_examples 1000] \
      [--k 0] [--out FILE.json]

Embeds `--num_examples` image–caption pairs of the run's data with each layer of the image tower and
each layer of the text tower (the tower's pooled features with `output_layer` = that layer, before
any projection) and scores every (image layer, text layer) pair by mutual k-nearest-neighbour
alignment: for each pair i, the share of its k nearest neighbours among the image features that
are also among its k nearest neighbours among the text features, averaged over i (Huh et al. 2024;
STRUCTURE picks its layers by this metric). k defaults to the Rice rule, ⌈2·N^(1/3)⌉. Prints the
table and the best pair as config overrides (`--config.model.image.output_layer=...`), and with
`--out` writes them as JSON.
"""
import json
import math

from absl import app, flags
import jax
import numpy as np

from vlmjax import cli, config as config_lib, experiment as experiment_lib, sharding
from vlmjax.data import pipeline, sources
from vlmjax.evals.common import Embedder
from vlmjax.metrics import quiet_absl_logging
from vlmjax.models.sizes import decode_variant
from vlmjax.run import RunDir

PROGRAM = "select_layer"


def rice_k(n: int) -> int:
  """The Rice rule's ⌈2·n^(1/3)⌉, at most n − 1."""
  return max(1, min(n - 1, math.ceil(2 * n ** (1 / 3))))


def nearest_neighbours(features, k: int) -> np.ndarray:
  """features [N, D] -> int [N, k]: each row's k most cosine-similar other rows (ties by index)."""
  x = np.asarray(features, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  similarity = x @ x.T
  np.fill_diagonal(similarity, -np.inf)
  return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def mutual_knn(a, b, k: int) -> float:
  """Mutual kNN alignment of paired features a [N, Da], b [N, Db]: mean over i of
  |kNN_a(i) ∩ kNN_b(i)| / k, in [0, 1] (1: the same neighbourhoods; about k/(N−1) for unrelated)."""
  if len(a) != len(b):
    raise ValueError(f"mutual_knn: {len(a)} and {len(b)} features are not paired")
  if not 1 <= k < len(a):
    raise ValueError(f"mutual_knn: k={k} must be in [1, {len(a) - 1}] for {len(a)} examples")
  na, nb = nearest_neighbours(a, k), nearest_neighbours(b, k)
  return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


def tower_depth(config, tower: str) -> int:
  settings = dict(config.model.get(tower) or {})
  return int(settings.get("depth", decode_variant(settings.get("variant", "S"))["depth"]))


def layer_features(workdir: str, split: str, num_examples: int, batch_size: int = 256):
  """-> ({image layer: [N, Wi]}, {text layer: [N, Wt]}): the pooled features of every layer of each
  tower of the run in `workdir`, on the first `num_examples` pairs of `split`."""
  loaded = RunDir(workdir).load()
  config = loaded.config
  if "image" not in config.model or "text" not in config.model:
    raise ValueError(f"the run in '{workdir}' is not a dual encoder (model.image, model.text)")
  source = sources.make_source(config.data, split)
  preprocess = pipeline.Preprocess(loaded.tokenizer, config.input.image_size, config.input.max_text_len,
                                   input_config=config.input, caption_field=pipeline.caption_field(config.input))
  images, texts = [], []
  for batch in pipeline.eval_batches(source, preprocess, batch_size):
    images.append(batch["image"])
    texts.append(batch["text"])
    if sum(len(x) for x in images) >= num_examples:
      break
  images, texts = np.concatenate(images)[:num_examples], np.concatenate(texts)[:num_examples]
  features = {}
  for tower, inputs in (("image", images), ("text", texts)):
    features[tower] = {}
    for layer in range(1, tower_depth(config, tower) + 1):
      layered = config.copy_and_resolve_references()
      with layered.unlocked():
        layered.model[tower].output_layer = layer
      model = experiment_lib.build_model(layered, loaded.tokenizer.vocab_size)
      embedder = Embedder(model, loaded.params, loaded.experiment.mesh, batch_size)
      argument = "images" if tower == "image" else "texts"
      apply = jax.jit(lambda p, x, model=model, argument=argument, tower=tower: model.apply(
          {"params": p}, **{argument: x})[f"{tower}_features"], out_shardings=sharding.replicated(embedder.mesh))
      features[tower][layer] = embedder.run(apply, inputs)
  return features["image"], features["text"]


def select(workdir: str, split: str = "validation", num_examples: int = 1000, k: int = 0) -> dict:
  if num_examples < 3:
    raise ValueError(f"--num_examples {num_examples} must be at least 3")
  image, text = layer_features(workdir, split, num_examples)
  return {"workdir": workdir, "split": split, **score_layers(image, text, k)}


def score_layers(image: dict, text: dict, k: int = 0) -> dict:
  """Mutual kNN of every ({image layer: [N, Wi]}, {text layer: [N, Wt]}) pair -> {'examples', 'k',
  'scores', 'best', 'overrides'}; k = 0: the Rice rule."""
  n = len(next(iter(image.values())))
  k = k or rice_k(n)
  scores = [{"image_layer": i, "text_layer": t, "mutual_knn": mutual_knn(image[i], text[t], k)}
            for i in image for t in text]
  best = max(scores, key=lambda s: s["mutual_knn"])
  return {"examples": n, "k": k, "scores": scores, "best": best,
          "overrides": [f"--config.model.image.output_layer={best['image_layer']}",
                        f"--config.model.text.output_layer={best['text_layer']}"]}


def main(argv):
  quiet_absl_logging()
  if len(argv) > 1:
    cli.fail(PROGRAM, f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    result = select(FLAGS.workdir, FLAGS.split, FLAGS.num_examples, FLAGS.k)
  except (OSError, ValueError, KeyError, config_lib.ConfigError) as e:
    cli.fail(PROGRAM, e)
  print(f"mutual kNN (k={result['k']}, {result['examples']} pairs of '{result['split']}'):")
  print("| image layer | text layer | mutual kNN |\n|---|---|---|")
  for s in result["scores"]:
    print(f"| {s['image_layer']} | {s['text_layer']} | {s['mutual_knn']:.4f} |")
  print("best: " + " ".join(result["overrides"]))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(result, f, indent=1)
    print(f"Wrote {FLAGS.out}")


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "A trained dual-encoder run whose towers are scored.", required=True)
  flags.DEFINE_string("split", "validation", "The data split whose pairs are embedded.")
  flags.DEFINE_integer("num_examples", 1000, "Pairs embedded (N).")
  flags.DEFINE_integer("k", 0, "Neighbours per example (0: the Rice rule, ⌈2·N^(1/3)⌉).")
  flags.DEFINE_string("out", None, "A JSON file for the scores and the chosen layers.")
  app.run(main, flags_parser=cli.flags_parser(PROGRAM))
