"""Every registered contrastive objective trains end to end through `vlmjax.train.train` on 8 devices,
with the data fields it needs (hard negatives, sub-captions) produced by the pipeline."""
import math

import numpy as np
import pytest

from conftest import tiny_config
from vlmjax.run import read_metrics
from vlmjax.train import train

CASES = {
    "clip_local": {"objectives": {"clip": {"weight": 1.0, "distributed": "local"}}},
    "siglip_ring": {"objectives": {"siglip": {"weight": 1.0, "distributed": "ring"}},
                    "model.logit_scale_init": math.log(10.0), "model.logit_bias_init": -10.0},
    "filip": {"objectives": {"filip": {"weight": 1.0, "chunk_size": 4}}},
    "filip_local_top": {"objectives": {"filip": {"weight": 1.0, "distributed": "local", "top_token_fraction": 0.25}}},
    "clip_negatives": {"objectives": {"clip_negatives": {"weight": 1.0}}},
    "dreamlip": {"objectives": {"dreamlip": {"weight": 1.0, "grouping_weight": 0.5}},
                 "model.local_logit_scale": True, "input.subcaptions": 2},
    "tcl": {"objectives": {"clip": {"weight": 1.0}, "tcl": {"weight": 0.5}}, "input.crop_min": 0.7,
            "model.text": dict(variant="mu", width=32, depth=1, mlp_dim=64, num_heads=2, max_len=16,
                               dropout=0.1)},
    "lit_structure": {"objectives": {"clip": {"weight": 1.0}, "structure": {"weight": 1.0, "warmup_steps": 2}},
                      "optimizer.frozen": "^image/"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_objective_trains(tiny_data_dir, tmp_path, case):
  config = tiny_config(tiny_data_dir, **{"total_steps": 4, "mesh": dict(data=2, fsdp=4, tensor=1),
                                         "evals": {"comp": {"type": "compositional", "num_examples": 32}},
                                         **CASES[case]})
  results = train(config, str(tmp_path / case))
  losses = [m["loss"] for m in read_metrics(str(tmp_path / case)) if "loss" in m]
  assert len(losses) == 4 and np.isfinite(losses).all(), losses
  name = next(iter(config.objectives))
  assert all(f"{name}/loss" in m for m in read_metrics(str(tmp_path / case)) if "loss" in m)
  assert set(results) == {"comp/attribute", "comp/relation", "comp/count"}
