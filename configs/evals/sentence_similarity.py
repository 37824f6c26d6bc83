"""Sentence similarity of a dual encoder's caption embeddings against scene overlap, on `test`
(vlmjax/evals/sentence_similarity.py).

  python -m vlmjax.evaluate --workdir workdirs/clip --suite configs/evals/sentence_similarity.py
"""
import ml_collections


def get_config(arg=None):
  del arg
  return ml_collections.ConfigDict(dict(
      sentence_similarity=dict(type="sentence_similarity", split="test", num_pairs=2000)))
