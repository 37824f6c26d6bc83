"""Composed image retrieval on vlmjax_shapes' `test` triplets (vlmjax/evals/cir.py): the reference image
alone, the edit text alone, their sum, and CIReVL's caption-then-edit pipeline with the true caption;
with an argument, also CIReVL with the captions of that VLM run (training-free composed retrieval).

  python -m vlmjax.evaluate --workdir workdirs/clip --suite configs/evals/cir.py
  python -m vlmjax.evaluate --workdir workdirs/clip --suite configs/evals/cir.py:workdirs/vlm_ntp   # -> eval_results/cir_workdirs_vlm_ntp.json
"""
import ml_collections


def get_config(arg=None):
  evals = {f"cir_{q}": dict(type="cir", split="test", num_examples=1000, query=q)
           for q in ("image", "text", "sum", "edited_caption")}
  if arg:
    evals["cir_generated_caption"] = dict(type="cir", split="test", num_examples=1000, query="generated_caption",
                                          captioner=arg)
  return ml_collections.ConfigDict(evals)
