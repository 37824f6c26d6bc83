"""What a VLM's hyper-parameters are chosen by: greedy captions of the first 250 `validation` images
(CIDEr, object recall) and the likelihood test against hard negatives on the first 500.

  python -m vlmjax.evaluate --workdir workdirs/vlm_sugar --suite configs/evals/vlm_validation.py
"""
import ml_collections


def get_config(arg=None):
  del arg
  return ml_collections.ConfigDict(dict(
      caption=dict(type="object_mentions", split="validation", num_examples=250, max_new_tokens=32),
      compositional=dict(type="vlm_compositional", split="validation", num_examples=500)))
