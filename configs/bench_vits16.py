"""A ViT-S/16-size dual encoder for the train-step benchmark (throughput, MFU).

  python -m vlmjax.bench --config configs/bench_vits16.py --out benchmarks

Image tower ViT-S/16 at 224 px (width 384, depth 12, MLP 1536, 6 heads: 196 patch tokens, mean
pooled), text tower of the same size on 64 tokens, 384-d shared space, CLIP loss. About 36 GFLOP per
example per train step (vlmjax.flops: 3 × 9.2 GFLOP for the ViT, 3 × 2.8 for the text tower), so a
batch of 8 takes a few seconds on a 2-core CPU. Current result: 56.7% MFU on a 2-core CPU
(benchmarks/README.md).

It also trains (`python -m vlmjax.train --config configs/bench_vits16.py --workdir DIR`) on the
built-in dataset upscaled to 224 px, but it is meant for accelerators there. The vocabulary size
changes parameters, not FLOPs (the token embedding is a lookup).
"""
from vlmjax.config import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.batch_size = 8
  c.total_steps = 1000
  c.input = dict(image_size=224, max_text_len=64, crop_min=0.85, brightness=0.1)
  c.tokenizer.vocab_size = 1000

  # Layers unrolled: on CPU the step runs faster than scanned (nn.scan's stacked residuals and
  # per-layer gradient slices cost copies); scan=True (the default) is for compile time at depth.
  c.model.image = dict(variant="S/16", pool="gap", posemb="sincos2d", scan=False)
  c.model.text = dict(variant="S", max_len=64, scan=False)
  c.model.embed_dim = 384
  c.objectives = dict(clip=dict(weight=1.0))
  c.precision.compute_dtype = "float32"  # bfloat16 on accelerators; slower than float32 on this CPU
  return c
