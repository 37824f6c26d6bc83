"""A 2B VLM at scale (LLaVA-style): a frozen So400m/14 image tower, an MLP projector and a 2B decoder,
for a v5p-64 slice with FSDP.

  # size it first, on any machine (libtpu: `make libtpu`):
  python -m vlmjax.bench.compile --config configs/vlm_2b.py --topology v5p-64
  # then on the slice, with your tokenizer (32k pieces) and a decoder from an LM run or an import:
  python -m vlmjax.train --config configs/vlm_2b.py --workdir /mnt/shared/vlm_2b \
      --config.tokenizer.path=/mnt/shared/tokenizer.model --config.init.workdir=/mnt/shared/lm_bundle \
      --config.data.name=jsonl --config.data.files.train=/mnt/shared/pairs/train.jsonl

Model: So400m/14 image tower (224 px -> 256 patch tokens, frozen: stop-gradient, no optimizer state)
-> 2-layer MLP projector -> decoder of Gemma-2B's shape (width 2048, 18 layers, SwiGLU MLP 16,384,
8 query heads sharing one key-value head, RoPE, RMSNorm) over a 32k vocabulary with tied
embeddings: 2.0 B decoder params, 0.4 B frozen. Each sequence is 256 image slots + 64 caption tokens.
bf16 compute, fp32 params, no remat; FSDP over all 32 chips, batch 512: the fastest candidate of
`--sweep` that leaves 15% of HBM free (benchmarks/sweep_vlm_2b.md; `--config.mesh.tensor=2` splits
heads and MLP over a tensor axis, `--config.model.decoder.remat=full` trades time for memory).
AdamW lr 1e-4 (the decoder and projector), 1k warmup, cosine.

Memory per chip on v5p-64, the estimated step and MFU: docs/results.md.
The data defaults to the built-in dataset (so the config runs anywhere); point `data` at yours.
"""
from vlmjax.config import base_config

BATCH = 512


def get_config(arg=None):
  del arg
  c = base_config()
  c.batch_size = BATCH
  c.total_steps = 100_000
  c.input = dict(image_size=224, max_text_len=64, crop_min=1.0, brightness=0.0, subcaptions=3, prompt="")
  c.tokenizer.vocab_size = 32000

  c.model = dict(
      name="vlm",
      image=dict(variant="So400m/14", pool="gap", activation="gelu_tanh"),
      projector=dict(kind="mlp"),
      decoder=dict(width=2048, depth=18, mlp_dim=16384, num_heads=8, num_kv_heads=1, head_dim=256,
                   remat="none"),
      stop_image_gradient=True,
  )
  c.objectives = dict(ntp=dict(weight=1.0))
  c.precision.compute_dtype = "bfloat16"

  c.optimizer.learning_rate = 1e-4
  c.optimizer.weight_decay = 0.0
  c.optimizer.warmup_steps = 1000
  c.optimizer.frozen = "^image/"
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.checkpoint = dict(every_steps=1000, keep=3, async_save=True)
  c.log_every_steps = 50
  c.evals = dict(caption=dict(type="captioning", split="test", num_examples=1000, max_new_tokens=32))
  return c
