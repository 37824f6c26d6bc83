"""Fine-tune a public SigLIP checkpoint (imported into a bundle) on your image-text pairs.

The argument names the checkpoint's architecture, `variant,image_size` as `sizes.siglip` knows them
(B/16,224 B/16,256 B/16,384 B/16,512 L/16,256 L/16,384 So400m/14,224 So400m/14,384):

  python -m vlmjax.train --config configs/siglip_finetune.py:B/16,224 --workdir /mnt/shared/siglip_ft \
      --config.init.workdir=siglip_b16_bundle --config.data.name=jsonl \
      --config.data.files.train=/mnt/shared/pairs/train.jsonl --config.data.files.test=/mnt/shared/pairs/test.jsonl

The bundle comes from `python -m vlmjax.export --from hf_siglip` (or `--from big_vision`); the run takes
its tokenizer along with its token embeddings. Another `input.image_size` than the checkpoint's
resamples the position embeddings. The recipe is the usual one for contrastive fine-tuning of a
pre-trained pair of towers: the sigmoid loss the model was trained with, a small learning rate with
layer-wise decay (lower blocks move least), an EMA of the params for evaluation (`evaluate --ema`),
and WiSE-FT (`python -m vlmjax.wise_ft`) between the imported bundle and the result.
"""
from vlmjax.config import base_config
from vlmjax.models import sizes


def get_config(arg="B/16,224"):
  variant, image_size = (arg or "B/16,224").split(",")
  siglip = sizes.siglip(variant, int(image_size))
  c = base_config()
  c.model = siglip["model"]
  c.input = dict(siglip["input"], crop_min=0.9, brightness=0.0)
  c.tokenizer.vocab_size = siglip["vocab_size"]
  c.init.workdir = ""  # the imported bundle: --config.init.workdir=BUNDLE
  c.objectives = dict(siglip=dict(weight=1.0))
  c.batch_size = 512
  c.total_steps = 5000
  c.optimizer.learning_rate = 1e-5
  c.optimizer.warmup_steps = 200
  c.optimizer.weight_decay = 1e-4
  c.optimizer.layer_decay = 0.85
  c.optimizer.ema_decay = 0.999
  c.checkpoint.every_steps = 1000
  c.evals = dict(retrieval=dict(type="retrieval", split="test"))
  return c
