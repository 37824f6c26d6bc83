"""PLIP: images sharing a class label are each other's positives, and a head on the image tower
predicts the scene's colours, shapes and sizes, at the comparison's budget (configs/clip.py).

  python -m vlmjax.train --config configs/plip.py --workdir workdirs/plip

PLIP (Zuo et al. 2023) claims that identity-level contrast and attribute prediction give better
zero-shot transfer and linear-probe features for fine-grained recognition. The labels here are the
single-object scenes' colour–shape classes (multi-object scenes have none, so only their own caption
is positive). Reproduced: 62.2% zero-shot top-1 against CLIP's 48.0%, with the caveat that the labels
are the zero-shot test's own classes. docs/results.md.
"""
import os

from vlmjax.config import load_file
from vlmjax.data import shapes

ATTRIBUTE_CLASSES = tuple(len(values) for values in shapes.REGION_ATTRIBUTES.values())  # colour, shape, size


def get_config(arg=None):
  del arg
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  c.model.attribute_classes = ATTRIBUTE_CLASSES
  c.objectives = dict(plip=dict(weight=1.0, attribute_classes=ATTRIBUTE_CLASSES, attribute_weight=1.0))
  return c
