"""Pseudo-labels from an open vocabulary, without annotations (S3A's cluster-and-vote step).

  python -m vlmjax.pseudo_label --workdir workdirs/clip --vocabulary shapes_broad \
      --out workdirs/s3a_labels.tsv [--clusters 0] [--seed 0]

The run in `workdir` embeds every train image and every vocabulary name (the data's zero-shot
prompts, averaged). Each image's own label is its nearest name; the images are clustered with
k-means (`--clusters`, 0: one cluster per vocabulary name) and every member of a cluster gets the
name most of the cluster's images are nearest to (the vote): images that look alike get one label,
even where a single image's zero-shot guess is wrong. Writes `index<TAB>vocabulary index` lines, a
label file for `data.pseudo_label_file` (`vlmjax.data.recaption`); no record's annotation is read.
"""
from absl import app, flags
import numpy as np

from vlmjax import cli, config as config_lib
from vlmjax.data import pipeline, recaption, sources
from vlmjax.evals import classes
from vlmjax.evals.common import Embedder
from vlmjax.evals.zeroshot import DEFAULT_PROMPTS, class_embeddings
from vlmjax.metrics import quiet_absl_logging
from vlmjax.run import RunDir
from vlmjax.select_data import kmeans

PROGRAM = "pseudo_label"


def cluster_vote(assignment, predictions, num_clusters: int) -> np.ndarray:
  """Each example's cluster's most frequent prediction (ties: the smallest index): assignment [N]
  (cluster of each), predictions [N] (vocabulary index of each) -> [N]."""
  votes = np.zeros(num_clusters, np.int64)
  for k in range(num_clusters):
    members = predictions[assignment == k]
    votes[k] = np.bincount(members).argmax() if len(members) else -1
  return votes[assignment]


def _open(workdir: str, batch_size: int):
  loaded = RunDir(workdir).load()
  source = sources.make_source(loaded.config.data, loaded.config.data.train_split)
  return loaded, source, Embedder(loaded.model, loaded.params, loaded.experiment.mesh, batch_size)


def _text_embeddings(loaded, source, embedder, vocabulary) -> np.ndarray:
  prompts = getattr(source, "prompts", None) or DEFAULT_PROMPTS
  tokenize = lambda texts: loaded.tokenizer.encode(texts, loaded.config.input.max_text_len)
  return class_embeddings(embedder, tokenize, classes.class_names(vocabulary), prompts)


def run_text_embeddings(workdir: str, vocabulary, batch_size: int = 256) -> np.ndarray:
  """The vocabulary embedded by the run in `workdir` with its training data's zero-shot prompts: [C, E]."""
  return _text_embeddings(*_open(workdir, batch_size), vocabulary)


def run_embeddings(workdir: str, vocabulary, batch_size: int = 256):
  """-> (train record indices [N], image embeddings [N, E], vocabulary embeddings [C, E], split size)."""
  loaded, source, embedder = _open(workdir, batch_size)
  text = _text_embeddings(loaded, source, embedder, vocabulary)
  config = loaded.config
  preprocess = pipeline.Preprocess(loaded.tokenizer, config.input.image_size, config.input.max_text_len,
                                   input_config=config.input)
  indices, images = [], []
  for batch in pipeline.eval_batches(source, preprocess, batch_size):
    images.append(embedder.embed_images(batch["image"]))
    indices.extend(int(i) for i in batch["index"])
  return np.asarray(indices, np.int64), np.concatenate(images), text, len(source)


def pseudo_labels(workdir: str, vocabulary, clusters: int = 0, seed: int = 0) -> tuple[dict, dict]:
  """-> ({train record index: voted vocabulary index}, a summary)."""
  indices, images, text, size = run_embeddings(workdir, vocabulary)
  clusters = clusters or len(text)
  if not 1 <= clusters <= len(indices):
    raise ValueError(f"--clusters {clusters} must be in [1, {len(indices)}] (the readable records)")
  own = (images @ text.T).argmax(1)
  _, assignment = kmeans(images, clusters, seed)
  voted = cluster_vote(assignment, own, clusters)
  summary = {"records": len(indices), "split_size": size, "clusters": clusters, "vocabulary": len(text),
             "names_used": int(len(np.unique(voted))), "vote_changed": float(np.mean(voted != own))}
  return dict(zip(indices.tolist(), voted.tolist())), summary


def main(argv):
  quiet_absl_logging()
  if len(argv) > 1:
    cli.fail(PROGRAM, f"unexpected arguments: {' '.join(argv[1:])}")
  vocabulary = FLAGS.vocabulary[0] if len(FLAGS.vocabulary) == 1 else FLAGS.vocabulary  # a set's name, or names
  try:
    labels, summary = pseudo_labels(FLAGS.workdir, vocabulary, FLAGS.clusters, FLAGS.seed)
    about = (f"vlmjax.pseudo_label --workdir {FLAGS.workdir} --vocabulary {','.join(FLAGS.vocabulary)} "
             f"--clusters {FLAGS.clusters} --seed {FLAGS.seed}\n{summary}")
    recaption.write_captions(FLAGS.out, labels, about)
  except (OSError, ValueError, TypeError, config_lib.ConfigError) as e:
    cli.fail(PROGRAM, e)
  print(f"Wrote {FLAGS.out}: {summary}")


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "A trained dual-encoder run that embeds images and names.", required=True)
  flags.DEFINE_list("vocabulary", ["shapes_broad"], "A shipped class-name set or a comma-separated list of names.")
  flags.DEFINE_string("out", None, "The label file to write (index<TAB>vocabulary index).", required=True)
  flags.DEFINE_integer("clusters", 0, "k of k-means (0: the vocabulary's size).")
  flags.DEFINE_integer("seed", 0, "Seed of the k-means seeding.")
  app.run(main, flags_parser=cli.flags_parser(PROGRAM))
