"""Text-only decoder LM on the captions: PRIOR's reference LM, and the LM every VLM config starts from.

  python -m vlmjax.train --config configs/lm_text_only.py --workdir workdirs/lm_text_only

A 4-layer decoder (width 128, RMSNorm, RoPE, SwiGLU, 4 query / 2 key-value heads, tied embeddings)
on the `default` vlmjax_shapes captions, `BOS caption EOS`, no image. The VLM configs (vlm_*.py)
load its `decoder/` params and its tokenizer is what theirs must equal (the same settings train the
same BPE model; PRIOR checks).

Text mixes at an equal number of supervised tokens (Learning to See Before Seeing's LM stage; each
keeps this run's tokenizer, so the same VLM stage can follow, configs/vlm_see_before_seeing.py):
  --config configs/lm_text_only.py:long       the long descriptions (one sentence per object, per
                                              pair, and the count): 126 steps of batch 32
  --config configs/lm_text_only.py:reasoning  the caption, then the scene's questions answered
                                              ('... is there a green star? no. ...'): 95 steps of 32
The short captions average 11.6 supervised tokens, the long 55.2 and the reasoning text 73.6, so
each mix sees about 223k tokens (150 × 128 × 11.6).

Current result: caption NLL 0.984 on `validation` (docs/results.md).
"""
from vlmjax.config import base_config

DECODER = dict(variant="mu", width=128, depth=4, mlp_dim=384, num_heads=4, num_kv_heads=2)
TOKENIZER = "workdirs/lm_text_only/tokenizer.model"  # the mixes read text with the short-caption run's tokenizer
MIXES = {  # caption_field: (steps, batch size, max_text_len)
    "long": ("long_caption", 126, 32, 136),
    "reasoning": ("reasoning", 95, 32, 96),
}


def get_config(arg=None):
  if arg and arg not in MIXES:
    raise ValueError(f"configs/lm_text_only.py: unknown variant '{arg}'; known: {', '.join(MIXES)}")
  c = base_config()
  c.batch_size = 128
  c.total_steps = 150
  c.data.builder_config = "default"
  c.input = dict(image_size=64, max_text_len=28, crop_min=1.0, brightness=0.0, subcaptions=3, prompt="")
  c.tokenizer.vocab_size = 256
  c.model = dict(name="lm", decoder=DECODER)
  c.objectives = dict(ntp=dict(weight=1.0))
  c.optimizer.learning_rate = 3e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 50
  c.checkpoint.every_steps = 50
  c.log_every_steps = 25
  c.evals = dict(nll=dict(type="token_nll", split="validation", num_examples=1000))
  if arg:
    field, c.total_steps, c.batch_size, c.input.max_text_len = MIXES[arg]
    c.input.caption_field = field
    c.tokenizer.path = TOKENIZER
    c.optimizer.warmup_steps = c.total_steps // 3
  return c
