"""What every captioning VLM row of the results is scored on, for runs whose config predates it.

  python -m vlmjax.evaluate --workdir workdirs/vlm_limber --suite configs/evals/vlm_captions.py

Greedy captions of the first 500 `test` images (CIDEr-D, BLEU, object recall and hallucination:
`object_mentions`) and the likelihood test of the true caption against its hard negatives
(`vlm_compositional`), on the run's own data. `:likelihood` keeps only the latter, which a
text-only LM run can take too: reading no image, its scores are the floor a VLM's must rise above.

  python -m vlmjax.evaluate --workdir workdirs/lm_text_only --suite configs/evals/vlm_captions.py:likelihood
"""
import ml_collections


def get_config(arg=None):
  if (arg or "") not in ("", "likelihood"):
    raise ValueError(f"configs/evals/vlm_captions.py: unknown variant '{arg}'; known: likelihood")
  entries = dict(compositional=dict(type="vlm_compositional", split="test", num_examples=500))
  if not arg:
    entries["caption"] = dict(type="object_mentions", split="test", num_examples=500, max_new_tokens=32)
  return ml_collections.ConfigDict(entries)
