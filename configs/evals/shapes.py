"""The built-in dataset's evaluation suite: what `make demo`'s model is measured on.

  python -m vlmjax.evaluate --bundle workdirs/demo/bundle --suite configs/evals/shapes.py --out workdirs/demo/suite

Zero-shot on the seen and the held-out (colour, shape) classes, retrieval, the compositional
hard-negative test, a linear probe (L2 weight chosen on `validation`, reported on `test`) and
few-shot regression, all on `vlmjax_shapes` in its default folder.
"""
import ml_collections

SHAPES = dict(name="vlmjax_shapes")


def get_config(arg=None):
  del arg
  return ml_collections.ConfigDict(dict(
      zeroshot=dict(type="zeroshot", split="test", data=SHAPES),
      zeroshot_unseen=dict(type="zeroshot", split="test_unseen", data=SHAPES),
      retrieval=dict(type="retrieval", split="test", num_examples=1000, data=SHAPES),
      compositional=dict(type="compositional", split="test", data=SHAPES),
      linear_probe=dict(type="linear_probe", train_split="train", validation_split="validation",
                        test_split="test", num_train_examples=10000, data=SHAPES),
      fewshot=dict(type="fewshot", train_split="train", test_split="test", shots=(1, 5, 10), num_train_examples=10000,
                   data=SHAPES),
  ))
