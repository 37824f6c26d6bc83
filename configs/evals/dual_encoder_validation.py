"""What a dual encoder's hyper-parameters are chosen by: zero-shot top-1 and retrieval on the
`validation` split of vlmjax_shapes (the comparison reports `test`).

  python -m vlmjax.evaluate --workdir workdirs/nevlp_noisy --suite configs/evals/dual_encoder_validation.py
"""
import ml_collections


def get_config(arg=None):
  del arg
  return ml_collections.ConfigDict(dict(
      zeroshot=dict(type="zeroshot", split="validation"),
      retrieval=dict(type="retrieval", split="validation", num_examples=1000)))
