"""Learning to See Before Seeing: the same VLM stage (configs/vlm_ntp.py: captions, everything trains,
300 steps of 32) after LM stages on different text mixes at an equal number of tokens.

  python -m vlmjax.train --config configs/lm_text_only.py:long --workdir workdirs/lm_text_only_long
  python -m vlmjax.train --config configs/vlm_see_before_seeing.py:long --workdir workdirs/vlm_sbs_long
  (:reasoning likewise; the short-caption LM stage is configs/lm_text_only.py and its VLM stage is
  configs/vlm_ntp.py itself, scored by configs/evals/vqa.py)

The paper's claim: what the LM reads before it ever sees an image shapes the visual abilities the
VLM stage can reach; text that reasons (here: a scene's caption followed by its questions answered)
helps visual reasoning more than descriptive text. The yes/no existence questions ('is there a red
circle?') of each `test` scene, scored by likelihood ('yes' against 'no'), read that; the captions
and the compositional test are scored as for every VLM row. The VLM stage trains on captions only,
never on a question.
Current result: not reproduced. Presence AUC 0.47 (long) and 0.53 (reasoning) against 0.48 after
short captions, relation AUC 0.48 for all three; the long descriptions give the best captions
(CIDEr 245.5 against 235.5) (docs/results.md).
"""
import os

from vlmjax.config import load_file

LM_RUNS = {"long": "workdirs/lm_text_only_long", "reasoning": "workdirs/lm_text_only_reasoning"}


def get_config(arg="reasoning"):
  arg = arg or "reasoning"
  if arg not in LM_RUNS:
    raise ValueError(f"configs/vlm_see_before_seeing.py: unknown variant '{arg}'; known: {', '.join(LM_RUNS)}")
  c = load_file(os.path.join(os.path.dirname(__file__), "vlm_ntp.py"))
  c.init.workdir = LM_RUNS[arg]
  c.evals.presence = dict(type="vqa", split="test", num_examples=500, types=("presence",), scoring="likelihood")
  c.evals.vqa_likelihood = dict(type="vqa", split="test", num_examples=500, scoring="likelihood")
  return c
