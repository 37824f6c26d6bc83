"""SPHINX's pieces: image towers concatenated before the projector, a tower loaded under another name
(`init.also.<name>.into`), and a decoder started from a weight mix of two runs (`init.fit.weight_mix`)."""
import jax
import numpy as np
import pytest

from conftest import tiny_config
from vlmjax.data.tokenizer import Tokenizer
from vlmjax.models.vlm import VLM
from vlmjax.run import RunDir
from vlmjax.train import train
from vlmjax.weight_mix import WeightMix

TOWER = dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2, pool="gap")
DECODER = dict(variant="mu", width=32, depth=1, mlp_dim=64, num_heads=4, num_kv_heads=2)
MESH = dict(data=2, fsdp=4, tensor=1)


def _lm(tiny_data_dir, workdir, **overrides):
  train(tiny_config(tiny_data_dir, total_steps=1, model=dict(name="lm", decoder=DECODER), mesh=MESH,
                    objectives={"ntp": {"weight": 1.0}}, **overrides), workdir)
  return RunDir(workdir).load()


def test_two_towers_and_a_weight_mixed_decoder(tiny_data_dir, tmp_path):
  train(tiny_config(tiny_data_dir, total_steps=1, mesh=MESH), str(tmp_path / "clip"))
  clip = RunDir(str(tmp_path / "clip")).load().params
  lm_a = _lm(tiny_data_dir, str(tmp_path / "lm_a"))
  lm_b = _lm(tiny_data_dir, str(tmp_path / "lm_b"), seed=1,
             **{"tokenizer.path": str(tmp_path / "lm_a" / "tokenizer.model")})
  config = tiny_config(tiny_data_dir, **{
      "total_steps": 1, "optimizer.frozen": ".*", "optimizer.warmup_steps": 0, "mesh": MESH,
      "model": dict(name="vlm", image=TOWER, extra_images=(dict(TOWER),), decoder=DECODER, projector=dict(kind="mlp")),
      "objectives": {"ntp": {"weight": 1.0}}})
  config.init = dict(workdir=str(tmp_path / "lm_a"), params="^decoder/", fit={}, also=dict(
      first=dict(workdir=str(tmp_path / "clip"), params="^image/"),
      second=dict(workdir=str(tmp_path / "clip"), params="^image/", into=dict(image="image_1"))))
  config.init.fit = dict(weight_mix=dict(workdir=str(tmp_path / "lm_b"), alpha=0.25))
  train(config, str(tmp_path / "vlm"))
  vlm = RunDir(str(tmp_path / "vlm")).load()  # everything frozen: the params it started from
  for name in ("image", "image_1"):
    jax.tree.map(np.testing.assert_array_equal, vlm.params[name], clip["image"])
  expected = jax.tree.map(lambda a, b: 0.25 * np.asarray(a) + 0.75 * np.asarray(b), lm_a.params["decoder"],
                          lm_b.params["decoder"])
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), vlm.params["decoder"], expected)
  assert not np.allclose(lm_a.params["decoder"]["embedding"], lm_b.params["decoder"]["embedding"])
  kernels = [x for p, x in jax.tree_util.tree_flatten_with_path(vlm.params["projector"])[0] if x.ndim == 2]
  assert kernels[0].shape[0] == 2 * TOWER["width"]  # the two grids, channel by channel

  other = Tokenizer.train((f"{w} circle." for w in ("red", "blue", "green") * 50), 40)
  with pytest.raises(ValueError, match="init.fit.weight_mix: .*lm_b writes its texts with another tokenizer"):
    WeightMix(str(tmp_path / "lm_b"))(vlm.params, vlm.model, other, config)
  config.init.also.second.into = dict(image="image_7")
  with pytest.raises(ValueError, match="init.also: 'into' names 'image_7', which this model has no params under"):
    train(config, str(tmp_path / "vlm_bad"))


def test_towers_of_different_grids_are_refused():
  model = VLM(image=TOWER, extra_images=(dict(TOWER, variant="mu/4"),), decoder=DECODER, vocab_size=16)
  tokens = np.full((1, 17), -1, np.int32)
  with pytest.raises(ValueError, match=r"model.extra_images\[0\] gives 64 tokens, model.image 16"):
    model.init(jax.random.PRNGKey(0), images=np.zeros((1, 32, 32, 3), np.float32), tokens=tokens)
