"""Fine-tune an imported SigLIP bundle on `vlmjax_shapes`: the recipe for a downloaded checkpoint, with
the fine-tuning controls public recipes use (layer-wise learning-rate decay, an EMA of the params).

  # the bundle: configs/siglip_shapes.py's run, exported to HF SigLIP and imported back (its docstring)
  python -m vlmjax.train --config configs/siglip_shapes_finetune.py --workdir workdirs/siglip_shapes_ft
  # the same schedule from scratch, for comparison
  python -m vlmjax.train --config configs/siglip_shapes_finetune.py --workdir workdirs/siglip_shapes_scratch \\
      --config.init.workdir= --config.optimizer.learning_rate=1e-3 --config.optimizer.layer_decay=1.0

The run takes the bundle's tokenizer along with its token embeddings. The model section is
configs/siglip_shapes.py's, which the bundle's must match.
"""
import os

from vlmjax.config import load_file


def get_config(arg=None):
  del arg
  c = load_file(os.path.join(os.path.dirname(__file__), "siglip_shapes.py"))
  c.init.workdir = "workdirs/siglip_shapes_imported"
  c.total_steps = 200
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 20
  c.optimizer.layer_decay = 0.8
  c.optimizer.ema_decay = 0.99
  c.checkpoint.every_steps = 100
  return c
