"""Dataset reduction (TL;DR): choose a fraction of the train split to train on.

  python -m vlmjax.select_data --workdir workdirs/clip --fraction 0.3 --out workdirs/subset.txt \
      [--method centroids|random] [--clusters 64] [--seed 0]

`centroids` embeds every training pair with a trained dual encoder (the image embedding plus the
caption's, L2-normalised), clusters them with k-means, and keeps from each cluster its share
`fraction` of the pairs nearest its centroid: the most typical examples of every mode of the data,
in the proportions of the modes. `random` keeps a uniform random subset of the same size. Train on
the file with `--config.data.subset_file=FILE` (`vlmjax.data.subset`).
"""
import math
import os

from absl import app, flags
import numpy as np

from vlmjax import cli, config as config_lib
from vlmjax.data import pipeline, sources, subset
from vlmjax.evals.common import Embedder
from vlmjax.metrics import quiet_absl_logging
from vlmjax.run import RunDir

METHODS = ("centroids", "random")


def kmeans(points, clusters: int, seed: int = 0, iterations: int = 25):
  """Lloyd's k-means with k-means++ seeding: points [N, D] -> (centroids [k, D], assignment [N])."""
  rng = np.random.default_rng(seed)
  points = np.asarray(points, np.float64)
  centroids = [points[rng.integers(len(points))]]
  distance = ((points - centroids[0]) ** 2).sum(1)
  for _ in range(1, clusters):
    centroids.append(points[rng.choice(len(points), p=distance / distance.sum())])
    distance = np.minimum(distance, ((points - centroids[-1]) ** 2).sum(1))
  centroids = np.stack(centroids)
  for _ in range(iterations):
    assignment = _nearest(points, centroids)
    for k in range(clusters):
      members = points[assignment == k]
      if len(members):
        centroids[k] = members.mean(0)
  return centroids, _nearest(points, centroids)


def _nearest(points, centroids):
  squared = (points ** 2).sum(1)[:, None] - 2 * points @ centroids.T + (centroids ** 2).sum(1)[None]
  return squared.argmin(1)


def cluster_quotas(sizes, total: int) -> np.ndarray:
  """How many to keep of clusters of `sizes` so that they sum to `total`, each in proportion to its
  size (largest remainders get the rounding)."""
  sizes = np.asarray(sizes, np.int64)
  share = sizes * total / sizes.sum()
  quotas = np.floor(share).astype(np.int64)
  order = np.argsort(-(share - quotas), kind="stable")
  quotas[order[:total - quotas.sum()]] += 1
  return np.minimum(quotas, sizes)


def nearest_to_centroids(points, fraction: float, clusters: int, seed: int = 0) -> np.ndarray:
  """Indices of the ⌈fraction · N⌉ points nearest their k-means centroids, each cluster giving its
  share in proportion to its size, sorted."""
  centroids, assignment = kmeans(points, clusters, seed)
  members = [np.flatnonzero(assignment == k) for k in range(clusters)]
  quotas = cluster_quotas([len(m) for m in members], math.ceil(fraction * len(points)))
  keep = []
  for k, (member, quota) in enumerate(zip(members, quotas)):
    distance = ((points[member] - centroids[k]) ** 2).sum(1)
    keep.extend(member[np.argsort(distance, kind="stable")[:quota]])
  return np.sort(np.asarray(keep, np.int64))


def pair_embeddings(workdir: str, batch_size: int = 256):
  """Every train record's image and caption embedded by the run in `workdir` -> (indices [n] of the
  records that could be read, embeddings [n, D] of image + caption, L2-normalised)."""
  loaded = RunDir(workdir).load()
  config = loaded.config
  source = sources.make_source(config.data, config.data.train_split)
  preprocess = pipeline.Preprocess(loaded.tokenizer, config.input.image_size, config.input.max_text_len,
                                   input_config=config.input, caption_field=pipeline.caption_field(config.input))
  embedder = Embedder(loaded.model, loaded.params, loaded.experiment.mesh, batch_size)
  indices, embeds = [], []
  for batch in pipeline.eval_batches(source, preprocess, batch_size):
    pair = embedder.embed_images(batch["image"]) + embedder.embed_texts(batch["text"])
    embeds.append(pair / np.maximum(np.linalg.norm(pair, axis=1, keepdims=True), 1e-6))
    indices.extend(int(i) for i in batch["index"])
  return np.asarray(indices, np.int64), np.concatenate(embeds), len(source)


def select(workdir: str, fraction: float, method: str = "centroids", clusters: int = 64, seed: int = 0):
  """-> (kept record indices, the split's size, a description of how they were chosen)."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"select_data: --fraction {fraction} must be in (0, 1]")
  if method not in METHODS:
    raise ValueError(f"select_data: --method '{method}' must be one of {', '.join(METHODS)}")
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"select_data: --workdir '{workdir}' does not exist (a trained dual-encoder run)")
  indices, embeds, size = pair_embeddings(workdir)
  if method == "centroids":
    if not 1 <= clusters <= len(indices):
      raise ValueError(f"select_data: --clusters {clusters} must be in [1, {len(indices)}] (the readable records)")
    kept = indices[nearest_to_centroids(embeds, fraction, clusters, seed)]
  else:
    count = math.ceil(fraction * len(indices))
    kept = np.sort(np.random.default_rng(seed).choice(indices, count, replace=False))
  about = (f"vlmjax.select_data --workdir {workdir} --fraction {fraction} --method {method}"
           + (f" --clusters {clusters}" if method == "centroids" else "") + f" --seed {seed}\n"
           f"{len(kept)} of {size} train records")
  return kept, size, about


def main(argv):
  quiet_absl_logging()
  if len(argv) > 1:
    cli.fail("select_data", f"select_data: unexpected arguments: {' '.join(argv[1:])}")
  try:
    kept, size, about = select(FLAGS.workdir, FLAGS.fraction, FLAGS.method, FLAGS.clusters, FLAGS.seed)
    subset.write_indices(FLAGS.out, kept, about)
  except (OSError, ValueError, config_lib.ConfigError) as e:
    cli.fail("select_data", e)
  print(f"Wrote {FLAGS.out}: {len(kept)} of {size} train records ({FLAGS.method})")


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "A trained dual-encoder run that embeds the pairs.", required=True)
  flags.DEFINE_float("fraction", None, "The share of the train split to keep, in (0, 1].", required=True)
  flags.DEFINE_string("out", None, "The subset file to write (one record index per line).", required=True)
  flags.DEFINE_enum("method", "centroids", list(METHODS), "How to choose the records.")
  flags.DEFINE_integer("clusters", 64, "k of k-means (method 'centroids').")
  flags.DEFINE_integer("seed", 0, "Seed of the k-means seeding or the random choice.")
  app.run(main, flags_parser=cli.flags_parser("select_data"))
