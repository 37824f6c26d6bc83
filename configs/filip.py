"""FILIP token-wise late-interaction loss, at the comparison's budget (configs/clip.py).

  python -m vlmjax.train --config configs/filip.py --workdir workdirs/filip
  # distributed: local rows against gathered tokens, keeping FILIP's top 25% of tokens per sample:
  python -m vlmjax.train --config configs/filip.py --workdir workdirs/filip \
      --config.objectives.filip.distributed=local --config.objectives.filip.top_token_fraction=0.25

Texts are scored 32 at a time (chunk_size), so the [B, c, N, T] similarity block stays small.
Zero-shot and `retrieval` use the pooled embeddings; `retrieval_tokens` ranks by FILIP's own
token-wise late interaction, as its paper retrieves: level with the pooled score image→text (R@1
22.5%), 4 points below it text→image (16.4% against 20.4%). 39.8% zero-shot top-1, 23.2% on unseen
pairs (docs/results.md).
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  del arg
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  c.objectives = dict(filip=dict(weight=1.0, chunk_size=32, distributed="global", top_token_fraction=1.0))
  c.evals.retrieval_tokens = dict(type="retrieval", split="test", num_examples=1000, score="tokens")
  return c
