"""The demo's recipe learns: a shortened run of it reaches a bar far above chance.

The full demo (`make demo`: 600 steps of batch 128 on 64×64 images) is reported in docs/results.md; here the
same recipe (conv-stem ViT, CLIP loss, AdamW with warmup + cosine) trains 200 steps of batch 32 on the
`tiny` builder config (32×32 images, 512 training scenes) in under a minute.
"""
import pytest

from conftest import tiny_config
from vlmjax.train import train


@pytest.mark.slow
def test_shortened_demo_recipe_beats_chance_on_zero_shot(tiny_data_dir, tmp_path):
  c = tiny_config(tiny_data_dir)
  c.batch_size = 32
  c.total_steps = 200
  c.optimizer.warmup_steps = 20
  c.model.image = dict(variant="mu/4", width=32, depth=1, mlp_dim=64, num_heads=2, pool="gap", stem="conv")
  c.model.text = dict(variant="mu", width=32, depth=1, mlp_dim=64, num_heads=2, max_len=16)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)  # the 8 fake devices every test process has
  c.evals = dict(zs=dict(type="zeroshot", split="test"))
  results = train(c, str(tmp_path / "run"))
  # 36 colour-shape classes: chance is 2.8% top-1 and 13.9% top-5; naming the colour alone gives
  # 16.7% top-1. The bar is well above both; the same run with a linear patch embedding falls short.
  assert results["zs/count"] == 64
  assert results["zs/top1"] >= 0.20 and results["zs/top5"] >= 0.70, results
