"""GIST: the CLIP run fine-tuned on its labelled (single-object) training images paired with the
class description that matches each image best (`python -m vlmjax.gist`), for 100 steps.

  python -m vlmjax.gist --workdir workdirs/clip --out workdirs/gist
  python -m vlmjax.gist --workdir workdirs/clip --out workdirs/gist_names --text names
  python -m vlmjax.train --config configs/gist.py --workdir workdirs/gist_ft
  python -m vlmjax.train --config configs/gist.py:names --workdir workdirs/gist_names_ft
  python -m vlmjax.train --config configs/gist.py:captions --workdir workdirs/gist_captions

':names' is GIST's baseline, the class names as text ('a red circle'); ':captions' another
control, the images' own dataset captions; both with the same images, steps and schedule.
GIST (Lewis et al. 2023) claims that image-specific descriptions, matched by a pretrained CLIP, make
a better fine-tuning text than the labels for fine-grained classification. Not reproduced: 48.5%
zero-shot top-1 and a 68.1% linear probe, against 57.6% and 71.1% with the class names; the matcher
names the right size for 98.9% of the images but the right place for 11.6% (chance 11.1%).
docs/results.md.
"""
import os

from vlmjax.config import load_file

GIST = "workdirs/gist"  # where the python -m vlmjax.gist command above writes


def get_config(arg=None):
  if arg not in (None, "", "names", "captions"):
    raise ValueError(f"configs/gist.py: unknown variant '{arg}' (use ':names', ':captions' or nothing)")
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  c.init = dict(workdir="workdirs/clip", params=".*")
  c.data.subset_file = os.path.join(GIST, "subset.txt")
  if arg == "names":
    c.data.caption_file = os.path.join(GIST + "_names", "captions.tsv")
  elif arg != "captions":
    c.data.caption_file = os.path.join(GIST, "captions.tsv")
  c.total_steps = 100
  c.optimizer.learning_rate = 1e-4
  c.optimizer.warmup_steps = 10
  c.checkpoint.every_steps = 100
  return c
