"""CLIP ViT-B/16 on one GPU, bfloat16, for the train-step benchmark; the argument picks the attention core.

  python -m vlmjax.bench --config configs/bench_vitb16.py:cudnn --out benchmarks --name gpu_vitb16_cudnn
  python -m vlmjax.bench --config configs/bench_vitb16.py:xla   --out benchmarks --name gpu_vitb16_xla
  python -m vlmjax.bench --config configs/bench_vitb16.py:einsum --out benchmarks --name gpu_vitb16_einsum
  # all three in one go, the report in benchmarks/gpu_vitb16.md:
  sh benchmarks/gpu_vitb16.sh benchmarks

The towers are `configs/clip_b16.py`'s (OpenAI CLIP's ViT-B/16 at 224 px with a class token, a
12-layer 512-wide causal text tower over 77 tokens, quick-GELU, 512-d embeddings; about 150 M
params) at 256 examples per device, a usual per-GPU batch for this model, with no rematerialisation
(the step fits an 80 GB GPU without it). Layers are unrolled: the step is the same and XLA's FLOP
count covers every layer, so the analytic FLOPs (the MFU numerator) are checked against it.

Argument: the attention core of both towers (`model.<tower>.attention`): 'einsum' (the layers'
own matmuls), 'xla' (`jax.nn.dot_product_attention`, XLA's fusion) or 'cudnn' (cuDNN's fused
flash-attention kernel, NVIDIA GPUs only). The image tower attends without a mask; the text tower
with its causal + padding mask.
"""
import math

from vlmjax.config import base_config


def get_config(arg=None):
  attention = arg or "cudnn"
  c = base_config()
  c.batch_size = 256
  c.total_steps = 1000
  c.input = dict(image_size=224, max_text_len=77, crop_min=0.9, brightness=0.0)
  c.tokenizer.vocab_size = 49408

  c.model.image = dict(variant="B/16", pool="cls", pre_norm=True, activation="quick_gelu", scan=False,
                       attention=attention)
  c.model.text = dict(variant="M", max_len=77, activation="quick_gelu", scan=False, attention=attention)
  c.model.embed_dim = 512
  c.model.logit_scale_init = math.log(1 / 0.07)
  c.objectives = dict(clip=dict(weight=1.0))
  c.precision.compute_dtype = "bfloat16"
  c.optimizer.learning_rate = 5e-4
  c.optimizer.b2 = 0.98
  c.optimizer.weight_decay = 0.2
  c.optimizer.warmup_steps = 100
  return c
