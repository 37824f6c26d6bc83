"""SigLIP So400m/14 at scale: the shape-optimised 400M ViT in both towers, a 32k batch, for v5p-256.

  # size it first, on any machine (libtpu: `make libtpu`):
  python -m vlmjax.bench.compile --config configs/siglip_so400m.py --topology v5p-256
  # then on the slice (launch/tpu_vm.sh run ... -- these arguments), with real data:
  python -m vlmjax.train --config configs/siglip_so400m.py --workdir /mnt/shared/siglip_so400m \
      --config.data.name=jsonl --config.data.files.train=/mnt/shared/pairs/train.jsonl \
      --config.data.files.test=/mnt/shared/pairs/test.jsonl

Model: So400m/14 image tower (width 1152, depth 27, MLP 4304, 16 heads; 224 px -> 256 patches,
tanh-GELU) and a So400m text tower over 16 tokens of a 32k vocabulary, 1152-d embeddings: about
0.9 B params. Pooling is the mean of patch tokens and the EOS token, the sizing's baseline; the
released checkpoints' architecture (attention-pooling MAP head, last-token text pooling) is
`sizes.siglip("So400m/14", 224)`, which configs/siglip_finetune.py builds. SigLIP sigmoid loss in its ring form
(t' = ln 10, b = −10; each chip keeps its 256 images and passes text shards round the ring).
bf16 compute, fp32 params, remat 'dots' in both towers (matmul outputs kept, the attention core
recomputed): the fastest candidate of `--sweep` that leaves 15% of HBM free (benchmarks/
sweep_siglip_so400m.md); FSDP over all 128 chips. AdamW lr 1e-3, β2 0.95, wd 1e-4,
as SigLIP trains; 40 B examples seen.

Memory per chip on v5p-256, the estimated step and MFU: docs/results.md.
The data defaults to the built-in dataset (so the config runs anywhere); point `data` at yours.
Training evaluates retrieval on the data's `test` split; the standard benchmarks (zero-shot
ImageNet, CIFAR, COCO) come from the suite, on any checkpoint:
  python -m vlmjax.evaluate --workdir W --suite configs/evals/standard.py --data_dir /mnt/shared/tfds
"""
import math

from vlmjax.config import base_config

EXAMPLES_SEEN = 40_000_000_000
BATCH = 32768


def get_config(arg=None):
  del arg
  c = base_config()
  c.batch_size = BATCH
  c.total_steps = EXAMPLES_SEEN // BATCH
  c.input = dict(image_size=224, max_text_len=16, crop_min=1.0, brightness=0.0)
  c.tokenizer.vocab_size = 32000

  c.model.image = dict(variant="So400m/14", pool="gap", posemb="learn", activation="gelu_tanh", remat="dots")
  c.model.text = dict(variant="So400m", max_len=16, activation="gelu_tanh", remat="dots")
  c.model.embed_dim = 1152
  c.model.logit_scale_init = math.log(10.0)
  c.model.logit_bias_init = -10.0
  c.objectives = dict(siglip=dict(weight=1.0, distributed="ring"))
  c.precision.compute_dtype = "bfloat16"

  c.optimizer.learning_rate = 1e-3
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_steps = 5000
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.checkpoint = dict(every_steps=2000, keep=3, async_save=True)
  c.log_every_steps = 50
  # Retrieval on the pairs' `test` split, which any captioned data has; zero-shot ImageNet and the
  # other standard sets: `python -m vlmjax.evaluate --workdir W --suite configs/evals/standard.py`.
  c.evals = dict(retrieval=dict(type="retrieval", split="test", num_examples=1000))
  return c
