"""Captioning VLM trained with next-token prediction: the baseline of the VLM comparison.

  python -m vlmjax.train --config configs/lm_text_only.py --workdir workdirs/lm_text_only   # first,
  python -m vlmjax.train --config configs/clip.py --workdir workdirs/clip                   # both
  python -m vlmjax.train --config configs/vlm_ntp.py --workdir workdirs/vlm_ntp

The image tower of configs/clip.py (conv stem to 8×8 tokens on 64×64 images, 2 layers), started
from that CLIP run -> MLP projector (LLaVA) -> the decoder of configs/lm_text_only.py, started from
that run (`init`; override with --config.init.workdir=... and --config.init.also.image.workdir=...).
Everything trains. Image tokens form one bidirectional block before
`BOS caption EOS`; the loss is on the caption and its EOS.

Token-reduction variants by argument (same budget):
  --config configs/vlm_ntp.py:tome    SimVLG: a 2-block ToMe connector, each block merging half its
                                      tokens (r = 32: 64 -> 32 -> 16 image tokens into the decoder)
  --config configs/vlm_ntp.py:pdrop   PyramidDrop: after decoder layers 1, 2, 3 keep 50 / 25 / 12.5 %
                                      of the image tokens
  --config configs/vlm_ntp.py:hreducer  mPLUG-DocOwl 1.5's H-Reducer: a 1×4 convolution of stride 1×4
                                      merges 4 horizontally adjacent tokens (64 -> 16 image tokens)

Every configs/vlm_*.py of the comparison starts from this file.
Current result: CIDEr 235.5 on `test` (260.2 with 4 beams and a repetition penalty of 1.2); :tome
240.5 and :pdrop 240.6, about 1.5× faster; :hreducer 250.1 (docs/results.md).
"""
from vlmjax.config import base_config

STEPS = 300
LM_WORKDIR = "workdirs/lm_text_only"
CLIP_WORKDIR = "workdirs/clip"
IMAGE = dict(variant="mu/8", width=128, depth=2, mlp_dim=512, num_heads=4, pool="gap", stem="conv")  # configs/clip.py's
DECODER = dict(variant="mu", width=128, depth=4, mlp_dim=384, num_heads=4, num_kv_heads=2)
VARIANTS = {
    "": {},
    "tome": dict(projector=dict(kind="tome", width=128, depth=2, num_heads=4, r=32, merge="mean")),
    "pdrop": dict(decoder=dict(DECODER, pdrop_layers=(1, 2, 3), pdrop_ratios=(0.5, 0.25, 0.125))),
    "hreducer": dict(projector=dict(kind="hreducer", reduce=4)),
}


def get_config(arg=None):
  if (arg or "") not in VARIANTS:
    raise ValueError(f"configs/vlm_ntp.py: unknown variant '{arg}'; known: {', '.join(v for v in VARIANTS if v)}")
  c = base_config()
  c.batch_size = 32
  c.total_steps = STEPS
  c.data.builder_config = "default"
  c.input = dict(image_size=64, max_text_len=28, crop_min=0.9, brightness=0.1, subcaptions=3, prompt="")
  c.tokenizer.vocab_size = 256  # as configs/lm_text_only.py: the same captions give the same tokenizer
  c.model = {"name": "vlm", "image": IMAGE, "decoder": DECODER, "projector": dict(kind="mlp"),
             **VARIANTS[arg or ""]}
  c.init = dict(workdir=LM_WORKDIR, params="^decoder/", also=dict(image=dict(workdir=CLIP_WORKDIR, params="^image/")))
  c.objectives = dict(ntp=dict(weight=1.0))
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 30
  c.checkpoint.every_steps = 100
  c.log_every_steps = 20
  c.evals = dict(
      caption=dict(type="object_mentions", split="test", num_examples=500, max_new_tokens=32),
      nll=dict(type="token_nll", split="test", num_examples=500),
      compositional=dict(type="vlm_compositional", split="test", num_examples=500),
  )
  return c
