"""The demo: a small CLIP on the built-in `vlmjax_shapes` dataset, trained on a laptop CPU.

  python -m vlmjax.train --config configs/demo.py --workdir workdirs/demo

`make demo` runs exactly this. Current result: 90.8% zero-shot top-1 on `test`, 40.7% on
`test_unseen` (docs/results.md).
"""
from vlmjax.config import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.batch_size = 128
  c.total_steps = 600
  c.data.builder_config = "default"
  c.input = dict(image_size=64, max_text_len=24, crop_min=0.85, brightness=0.1)
  c.tokenizer.vocab_size = 256
  # Batches made by 2 worker processes at a lowered priority: on a CPU the data then takes only the
  # cycles the step leaves idle, and training runs at the step's own speed (benchmarks/README.md).
  c.data.workers = 2
  c.data.num_threads = 1

  # A convolutional stem (ViTc, instance norm + ReLU) and 2 transformer layers: at this budget the
  # image tower's speed of learning shape is the bottleneck, and the stem learns it far faster than a
  # linear patch embedding (docs/results.md, "History").
  # unroll=2: both layers as straight-line code, params still stacked and initialised as scanned; on a
  # CPU the scanned loop's residual copies slow the step at this depth (benchmarks/README.md).
  c.model.image = dict(variant="mu/8", width=128, depth=2, mlp_dim=512, num_heads=4, pool="gap", stem="conv",
                       unroll=2)
  c.model.text = dict(variant="mu", width=128, depth=2, mlp_dim=512, num_heads=4, max_len=24, unroll=2)
  c.model.embed_dim = 128
  c.objectives = dict(clip=dict(weight=1.0))

  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 60
  c.checkpoint.every_steps = 200
  c.log_every_steps = 25
  c.evals = dict(
      zeroshot=dict(type="zeroshot", split="test"),
      zeroshot_unseen=dict(type="zeroshot", split="test_unseen"),
      retrieval=dict(type="retrieval", split="test", num_examples=1000),
  )
  return c
