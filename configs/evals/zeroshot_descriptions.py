"""Zero-shot classification with description prompts: each class embedded as the mean of 30
descriptions that add a size and a place ('a large red circle in the top left'), against the
captions' own prompt wording, on `test` and `test_unseen`.

  python -m vlmjax.evaluate --workdir workdirs/grain --suite configs/evals/zeroshot_descriptions.py
"""
import ml_collections


def get_config(arg=None):
  del arg
  return ml_collections.ConfigDict(dict(
      zeroshot_descriptions=dict(type="zeroshot", split="test", prompts="descriptions"),
      zeroshot_unseen_descriptions=dict(type="zeroshot", split="test_unseen", prompts="descriptions")))
