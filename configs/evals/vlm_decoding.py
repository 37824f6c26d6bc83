"""Decoding settings of a captioning VLM, compared on `validation` (to choose) and on `test` (to report).

  python -m vlmjax.evaluate --workdir workdirs/vlm_ntp --suite configs/evals/vlm_decoding.py

Greedy decoding, beam search (4 beams) without and with a length penalty, and a repetition penalty
on greedy and beam decoding, each on the first 250 `validation` and 500 `test` images of the run's
own data. `:nearest`: SITTA's decoding instead, a prompt of the 2, 4 or 8 vocabulary pieces nearest
the image's mean projected token (`nearest_tokens`), greedy.

  python -m vlmjax.evaluate --workdir workdirs/vlm_sitta --suite configs/evals/vlm_decoding.py:nearest
"""
import ml_collections

SETTINGS = {
    "greedy": {},
    "greedy_rep12": dict(repetition_penalty=1.2),
    "beam4": dict(beam_size=4),
    "beam4_lp1": dict(beam_size=4, length_penalty=1.0),
    "beam4_rep12": dict(beam_size=4, repetition_penalty=1.2),
}


NEAREST = {f"nearest{k}": dict(nearest_tokens=k) for k in (2, 4, 8)}


def get_config(arg=None):
  if (arg or "") not in ("", "nearest"):
    raise ValueError(f"configs/evals/vlm_decoding.py: unknown variant '{arg}'; known: nearest")
  settings = NEAREST if arg else SETTINGS
  return ml_collections.ConfigDict({
      f"{name}_{split}": dict(type="object_mentions" if arg else "captioning", split=split, num_examples=count,
                              max_new_tokens=32, **options)
      for name, options in settings.items() for split, count in (("validation", 250), ("test", 500))})
