"""CLIP ViT-B/16 at scale: OpenAI CLIP's B/16 towers, a 32k global batch, for a v5p-64 slice.

  # size it first, on any machine (libtpu: `make libtpu`):
  python -m vlmjax.bench.compile --config configs/clip_b16.py --topology v5p-64
  # then on the slice (launch/tpu_vm.sh run ... -- these arguments), with real data:
  python -m vlmjax.train --config configs/clip_b16.py --workdir /mnt/shared/clip_b16 \
      --config.data.name=jsonl --config.data.files.train=/mnt/shared/pairs/train.jsonl \
      --config.data.files.test=/mnt/shared/pairs/test.jsonl

Model: ViT-B/16 image tower (224 px, class-token pooling, CLIP's pre-LayerNorm, quick-GELU) and a
12-layer 512-wide causal text tower over 77 tokens of a 49,408-piece vocabulary, 512-d embeddings:
150 M params. CLIP softmax loss in its local-rows form (each chip's 1024 rows against the gathered
32,768 columns). bf16 compute, fp32 params; remat 'dots' in both towers (every matmul output is kept,
the attention core is recomputed): the fastest candidate of `--sweep` that leaves 15% of HBM free
(benchmarks/sweep_clip_b16.md: no remat does not fit, 'save_mlp' and 'full' are slower); FSDP over
all 32 chips (1024 examples per chip). AdamW lr 5e-4, β2 0.98, wd 0.2, 2k warmup,
cosine over 32 epochs of a 400M-pair dataset (~390k steps), as in the CLIP paper.

Memory per chip on v5p-64 and the estimated step: docs/results.md.
The data defaults to the built-in dataset (so the config runs anywhere); point `data` at yours.
Training evaluates retrieval on the data's `test` split; the standard benchmarks (zero-shot
ImageNet, CIFAR, COCO) come from the suite, on any checkpoint:
  python -m vlmjax.evaluate --workdir W --suite configs/evals/standard.py --data_dir /mnt/shared/tfds
"""
import math

from vlmjax.config import base_config

EXAMPLES_SEEN = 32 * 400_000_000
BATCH = 32768


def get_config(arg=None):
  del arg
  c = base_config()
  c.batch_size = BATCH
  c.total_steps = EXAMPLES_SEEN // BATCH
  c.input = dict(image_size=224, max_text_len=77, crop_min=0.9, brightness=0.0)
  c.tokenizer.vocab_size = 49408

  c.model.image = dict(variant="B/16", pool="cls", pre_norm=True, activation="quick_gelu", remat="dots")
  c.model.text = dict(variant="M", max_len=77, activation="quick_gelu", remat="dots")  # 512 wide, 12 deep
  c.model.embed_dim = 512
  c.model.logit_scale_init = math.log(1 / 0.07)
  c.objectives = dict(clip=dict(weight=1.0, distributed="local"))
  c.precision.compute_dtype = "bfloat16"

  c.optimizer.learning_rate = 5e-4
  c.optimizer.b2 = 0.98
  c.optimizer.weight_decay = 0.2
  c.optimizer.warmup_steps = 2000
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.checkpoint = dict(every_steps=2000, keep=3, async_save=True)
  c.log_every_steps = 50
  # Retrieval on the pairs' `test` split, which any captioned data has; zero-shot ImageNet and the
  # other standard sets: `python -m vlmjax.evaluate --workdir W --suite configs/evals/standard.py`.
  c.evals = dict(retrieval=dict(type="retrieval", split="test", num_examples=1000))
  return c
