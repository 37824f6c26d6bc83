"""A linear probe on the image embeddings of vlmjax_shapes: logistic regression on 5,000 training
images' single-object labels, the L2 weight chosen on `validation`, top-1 reported on `test`.

  python -m vlmjax.evaluate --workdir workdirs/plip --suite configs/evals/linear_probe.py
"""
import ml_collections


def get_config(arg=None):
  del arg
  return ml_collections.ConfigDict(dict(
      linear_probe=dict(type="linear_probe", train_split="train", validation_split="validation",
                        test_split="test", num_train_examples=5000)))
