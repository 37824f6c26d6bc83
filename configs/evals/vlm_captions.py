"""What every captioning VLM row of the results is scored on, for runs whose config predates it.

  python -m vlmjax.evaluate --workdir workdirs/vlm_limber --suite configs/evals/vlm_captions.py

Greedy captions of the first 500 `test` images (CIDEr-D, BLEU, object recall and hallucination:
`object_mentions`) and the likelihood test of the true caption against its hard negatives
(`vlm_compositional`), on the run's own data. On a text-only LM run both read no image: its
scores are the floor a VLM's must rise above.
"""
import ml_collections


def get_config(arg=None):
  del arg
  return ml_collections.ConfigDict(dict(
      caption=dict(type="object_mentions", split="test", num_examples=500, max_new_tokens=32),
      compositional=dict(type="vlm_compositional", split="test", num_examples=500),
  ))
