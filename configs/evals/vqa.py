"""Visual question answering on any decoder run: every question of the first 500 `test` scenes of
vlmjax_shapes, answered greedily (exact match per question type) and by likelihood among the
answers of each type.

  python -m vlmjax.evaluate --workdir workdirs/vlm_ntp --suite configs/evals/vqa.py
  :likelihood  the likelihood scoring only (with the yes/no types' AUC)
"""
import ml_collections


def get_config(arg=None):
  if (arg or "") not in ("", "likelihood"):
    raise ValueError(f"configs/evals/vqa.py: unknown variant '{arg}'; known: likelihood")
  data = dict(name="vlmjax_shapes")
  entries = dict(vqa_likelihood=dict(type="vqa", split="test", num_examples=500, scoring="likelihood", data=data,
                                     resize="squash"))
  if not arg:
    entries["vqa"] = dict(type="vqa", split="test", num_examples=500, data=data, resize="squash")
  return ml_collections.ConfigDict(entries)
