"""SigLIP's architecture, as the public checkpoints have it, trained on `vlmjax_shapes` at the demo's size:
the model that the "start from a public checkpoint" path is rehearsed on offline.

  python -m vlmjax.train --config configs/siglip_shapes.py --workdir workdirs/siglip_shapes
  python -m vlmjax.export --workdir workdirs/siglip_shapes --to hf_siglip --out workdirs/siglip_shapes_hf
  python -m vlmjax.export --from hf_siglip --src workdirs/siglip_shapes_hf --out workdirs/siglip_shapes_imported
  python -m vlmjax.evaluate --bundle workdirs/siglip_shapes_imported --suite configs/evals/shapes.py \
      --out workdirs/siglip_shapes_imported/suite

The exported folder loads with `transformers.SiglipModel.from_pretrained`; the import reads it back
(tokenizer included) as any downloaded SigLIP would be. `configs/siglip_shapes_finetune.py` fine-tunes
the imported bundle.

Everything `interop.hf_siglip` maps: a patch embedding with bias and no LayerNorm before the
transformer, learned position embeddings, a MAP head whose output is the image embedding (no
projection), a text tower with neither causal nor padding mask read at its last position, then a
dense head with a bias; tanh-GELU and LayerNorm eps 1e-6; the sigmoid loss with t' = ln 10, b = -10.
"""
import math
import os

from vlmjax.config import load_file


def get_config(arg=None):
  del arg
  c = load_file(os.path.join(os.path.dirname(__file__), "demo.py"))
  tower = dict(width=128, depth=2, mlp_dim=512, num_heads=4, activation="gelu_tanh", norm_eps=1e-6, unroll=2)
  c.model.image = dict(variant="mu/8", pool="map", posemb="learn", stem="patch", pre_norm=False, **tower)
  c.model.text = dict(variant="mu", max_len=24, pool="last", causal=False, mask_padding=False, **tower)
  c.model.embed_dim = 128
  c.model.image_head = "none"
  c.model.text_head = "proj_bias"
  c.model.logit_scale_init = math.log(10.0)
  c.model.logit_bias_init = -10.0
  c.objectives = dict(siglip=dict(weight=1.0))
  return c
