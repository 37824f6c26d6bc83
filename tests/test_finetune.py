"""Fine-tuning controls: layer-wise learning-rate decay, per-group multipliers, the params' EMA, WiSE-FT."""
import json
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from conftest import REPO, single_device_mesh, tiny_config
from vlmjax import config as config_lib, evaluate, experiment, export, sharding, trainer, wise_ft
from vlmjax.run import Bundle, RunDir
from vlmjax.train import train
from vlmjax.workdir import config_differences

TOTAL, STOP, EMA = 6, 3, 0.8


def _flat(tree) -> dict:
  return {trainer.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _abstract_params(config):
  return experiment.build(config, 128, mesh=single_device_mesh(), objectives=False,
                          validate=False).abstract_params()


def test_layer_decay_follows_the_formula_per_layer_slice(make_tiny_config):
  """Block i of L gets decay^(L − i), one value per slice of the scanned stack; embeddings
  decay^(L + 1); the final norm, the projections and the temperature 1. Unrolling keeps the stacked
  layout, and an unscanned tower's block_i gets its own."""
  config = make_tiny_config(**{"model.image": dict(variant="mu/8", width=32, depth=3, mlp_dim=64, num_heads=2,
                                                   pool="gap", unroll=3),
                               "model.text": dict(variant="mu", width=32, depth=2, mlp_dim=64, num_heads=2,
                                                  max_len=16, scan=False)})
  decay = 0.5
  multipliers = _flat(trainer.layer_decay_multipliers(_abstract_params(config), decay))
  params = _flat(_abstract_params(config))
  assert multipliers.keys() == params.keys()
  stacked = [k for k in params if k.startswith("image/encoder/blocks/")]
  assert "image/encoder/blocks/attn/value/kernel" in stacked  # paths keep attention's 'value' module
  for key in stacked:
    m = np.asarray(multipliers[key])
    assert m.shape == (3,) + (1,) * (params[key].ndim - 1), key
    np.testing.assert_array_equal(m.ravel(), np.float32([decay ** 3, decay ** 2, decay ** 1]), err_msg=key)
  for key in params:
    if key.startswith("text/encoder/block_"):
      i = int(key.split("/")[2].removeprefix("block_"))
      assert float(multipliers[key]) == np.float32(decay ** (2 - i)), key
  for key in ("image/patch_embed/kernel", "image/pos_embedding"):
    assert float(multipliers[key]) == np.float32(decay ** 4), key
  for key in ("text/token_embed/embedding", "text/pos_embedding"):
    assert float(multipliers[key]) == np.float32(decay ** 3), key
  for key in ("image/encoder/final_norm/scale", "text/encoder/final_norm/bias", "image_proj/kernel",
              "text_proj/kernel", "logit_scale"):
    assert float(multipliers[key]) == 1.0, key
  # With per-group multipliers: the product, the first matching pattern winning.
  config.optimizer.layer_decay = decay
  config.optimizer.lr_multipliers = (("^image/encoder/", 0.1), ("^image/", 0.2), ("logit_scale", 0.0))
  both = _flat(trainer.lr_multipliers(_abstract_params(config), config.optimizer))
  np.testing.assert_allclose(np.ravel(both["image/encoder/blocks/mlp/fc1/kernel"]),
                             0.1 * np.float32([decay ** 3, decay ** 2, decay]), rtol=1e-6)
  assert float(both["image/pos_embedding"]) == pytest.approx(0.2 * decay ** 4)
  assert float(both["logit_scale"]) == 0.0 and float(both["text_proj/kernel"]) == 1.0


def test_layer_decay_over_pyramiddrop_stages(make_tiny_config):
  """A PyramidDrop decoder's layers are counted across its stages: stage 0's stack, then each
  stage's first block and its stack."""
  config = make_tiny_config(**{"model": dict(name="lm", decoder=dict(variant="mu", width=32, depth=6, mlp_dim=64,
                                                                     num_heads=2, pdrop_layers=(2, 4),
                                                                     pdrop_ratios=(0.5, 0.25))),
                               "objectives": dict(ntp=dict(weight=1.0))})
  m = trainer.layer_decay_multipliers(_abstract_params(config), 0.5)["decoder"]
  layer = lambda x: np.log2(np.ravel(x)) * -1  # decay^(6 − i) -> 6 − i
  np.testing.assert_array_equal(layer(m["layers"]["blocks"]["mlp"]["fc1"]["kernel"]), [6, 5])
  np.testing.assert_array_equal(layer(m["layers_1_first"]["norm1"]["scale"]), [4])
  np.testing.assert_array_equal(layer(m["layers_1"]["blocks"]["norm1"]["scale"]), [3])
  np.testing.assert_array_equal(layer(m["layers_2_first"]["norm1"]["scale"]), [2])
  np.testing.assert_array_equal(layer(m["layers_2"]["blocks"]["norm1"]["scale"]), [1])
  assert float(m["embedding"]) == 0.5 ** 7 and float(m["final_norm"]["scale"]) == 1.0


def _grads(params, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)


def test_multiplied_update_is_the_plain_update_scaled(make_tiny_config):
  """AdamW's step per element is lr(t)·(m̂/(√v̂ + ε) + wd·p): its moments depend on the gradients
  alone, not on the learning rate, so a per-element learning rate lr·μ gives exactly μ times the plain
  update, at every step. Checked over two steps (the moments non-trivial), and against a plain
  optimizer whose schedule is scaled by μ."""
  base = make_tiny_config(**{"optimizer.warmup_steps": 0, "total_steps": 10})  # lr > 0 from step 0
  params = _grads(_abstract_params(base), 100)  # any params: random ones
  plain, _ = trainer.make_optimizer(base.optimizer, 10)
  opt = ml_collections.ConfigDict(base.optimizer.to_dict())
  opt.layer_decay = 0.6
  opt.lr_multipliers = (("^text/", 0.25), ("logit_scale", 0.0))
  scaled, _ = trainer.make_optimizer(opt, 10)
  multipliers = _flat(trainer.lr_multipliers(params, opt))
  # One more optimizer: one multiplier for every param is a learning rate (and schedule) that many
  # times smaller.
  everything = ml_collections.ConfigDict({**base.optimizer.to_dict(), "lr_multipliers": (("", 0.5),)})
  half_lr = ml_collections.ConfigDict({**base.optimizer.to_dict(),
                                       "learning_rate": base.optimizer.learning_rate / 2})
  txs = (plain, scaled, trainer.make_optimizer(everything, 10)[0], trainer.make_optimizer(half_lr, 10)[0])

  @jax.jit  # one program for all: compiling is most of this test's time
  def updates(grads):
    out, states = [], [tx.init(params) for tx in txs]
    for g in grads:  # two steps: the moments are then non-trivial
      step = [tx.update(g, state, params) for tx, state in zip(txs, states)]
      out.append([u for u, _ in step])
      states = [state for _, state in step]
    return out

  outputs = updates([_grads(params, 0), _grads(params, 1)])
  for step, (u_plain, u_scaled, u_everything, u_half_lr) in enumerate(outputs):
    u_plain = _flat(u_plain)
    assert np.all(np.asarray(u_plain["image_proj/kernel"]) != 0)
    for key, u in _flat(u_scaled).items():
      np.testing.assert_allclose(u, np.asarray(u_plain[key]) * multipliers[key], rtol=1e-6, atol=1e-12,
                                 err_msg=f"step {step}: {key}")
    for key, u in _flat(u_everything).items():
      np.testing.assert_allclose(u, _flat(u_half_lr)[key], rtol=1e-6, atol=1e-12, err_msg=f"step {step}: {key}")
  assert not np.any(np.asarray(u_scaled["logit_scale"]))


def test_ema_is_the_recurrence_over_the_applied_params(make_tiny_config):
  """ema_t = d·ema_{t−1} + (1 − d)·params_t from ema_0 = params_0, over the params each step applied;
  a skipped (non-finite) step leaves it as it was."""
  config = make_tiny_config(**{"optimizer.ema_decay": EMA, "optimizer.warmup_steps": 0})
  built = experiment.build(config, 128, mesh=single_device_mesh())
  state, shardings = built.init_state()
  assert shardings["ema"] == shardings["params"]
  step = built.train_step(shardings)
  host = lambda tree: jax.tree.map(np.asarray, jax.device_get(tree))
  ema = host(state["params"])
  np.testing.assert_equal(host(state["ema"]), ema)
  for i in range(4):
    batch = built.synthetic_batch(128, seed=i)
    if i == 2:
      batch["image"] = np.full_like(batch["image"], np.nan)  # a NaN loss: the step is skipped
    with built.use_mesh():
      state, _ = step(state, sharding.global_batch(batch, built.mesh))
    params = host(state["params"])
    if i != 2:
      ema = jax.tree.map(lambda e, p: np.float32(EMA) * e + np.float32(1 - EMA) * p, ema, params)
    for key, value in _flat(host(state["ema"])).items():
      np.testing.assert_allclose(value, _flat(ema)[key], rtol=1e-6, atol=1e-7, err_msg=f"step {i + 1}: {key}")
  assert int(state["extras"]["nonfinite_steps"]) == 1
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(host(state["ema"])),
                                                      jax.tree.leaves(host(state["params"]))))


def _run_config(data_dir):
  return tiny_config(data_dir, **{
      "total_steps": TOTAL, "checkpoint.every_steps": STOP, "optimizer.ema_decay": EMA,
      "optimizer.layer_decay": 0.7, "optimizer.lr_multipliers": (("logit_scale", 0.5),),
      "mesh": dict(data=1, fsdp=-1, tensor=1),  # 8 fake devices: EMA sharded like the params
      "evals": dict(zeroshot=dict(type="zeroshot", split="test"))})


@pytest.fixture(scope="module")
def runs(tiny_data_dir, tmp_path_factory):
  """An uninterrupted run and one stopped after step STOP and resumed; their final evaluations'
  params are recorded (the evaluators themselves are not what is tested here)."""
  config = _run_config(tiny_data_dir)
  evaluated = {}

  def fake_run_evals(experiment_, params, tokenizer, *args, **kwargs):
    evaluated[len(evaluated)] = jax.device_get(params)
    return {"zeroshot/top1": 0.5}

  workdir_a, workdir_b = (str(tmp_path_factory.mktemp(name)) for name in ("ema_a", "ema_b"))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(evaluate, "run_evals", fake_run_evals)
    train(config, workdir_a)
    train(config, workdir_b, stop_after_steps=STOP)
    train(config, workdir_b)
  return dict(config=config, a=workdir_a, b=workdir_b, evaluated=evaluated)


def _read(config, workdir, item):
  abstract = experiment.build(config, 128, mesh=single_device_mesh(), objectives=False,
                              validate=False).abstract_params()
  checkpointer = RunDir(workdir).checkpointer()
  try:
    return jax.device_get(checkpointer.restore_params(abstract, TOTAL, item))
  finally:
    checkpointer.close()


def test_resume_with_ema_is_exact(runs):
  for item in ("params", "ema"):
    a, b = _flat(_read(runs["config"], runs["a"], item)), _flat(_read(runs["config"], runs["b"], item))
    for key, x in a.items():
      np.testing.assert_array_equal(b[key], x, err_msg=f"{item}: {key}")
  params, ema = _read(runs["config"], runs["a"], "params"), _read(runs["config"], runs["a"], "ema")
  assert not np.array_equal(params["image"]["patch_embed"]["kernel"], ema["image"]["patch_embed"]["kernel"])


def test_final_evaluation_uses_the_ema(runs):
  ema = _read(runs["config"], runs["a"], "ema")
  assert len(runs["evaluated"]) == 2  # run A's end and run B's end; the stopped run does not evaluate
  for params in runs["evaluated"].values():
    for key, x in _flat(ema).items():
      np.testing.assert_array_equal(_flat(params)[key], x, err_msg=key)
  with open(RunDir(runs["a"]).file(RunDir.EVAL_RESULTS), encoding="utf-8") as f:
    assert json.load(f) == {"step": TOTAL, "ema": True, "zeroshot/top1": 0.5}


def test_evaluate_and_export_read_the_ema(runs, tmp_path, monkeypatch):
  seen = []
  monkeypatch.setattr(evaluate, "run_evals", lambda experiment_, params, *a, **k: seen.append(
      jax.device_get(params)) or {"zeroshot/top1": 0.25})
  results = evaluate.evaluate_workdir(runs["a"], TOTAL, ema=True)
  assert results == {"step": TOTAL, "ema": True, "zeroshot/top1": 0.25}
  evaluate.evaluate_workdir(runs["a"], TOTAL)
  ema, params = _read(runs["config"], runs["a"], "ema"), _read(runs["config"], runs["a"], "params")
  for got, want in zip(seen, (ema, params)):
    for key, x in _flat(want).items():
      np.testing.assert_array_equal(_flat(got)[key], x, err_msg=key)
  out = export.export(runs["a"], str(tmp_path / "ema_bundle"), ema=True)
  assert Bundle(out).info()["ema"] is True
  for key, x in _flat(Bundle(out).read_params()).items():
    np.testing.assert_array_equal(x, _flat(ema)[key], err_msg=key)
  no_ema = RunDir(runs["a"]).read_config()
  no_ema.optimizer.ema_decay = 0.0
  with pytest.raises(ValueError, match=r"^--ema: the run in .* keeps no EMA") as e:
    RunDir(runs["a"]).check_ema(no_ema)
  assert "\n" not in str(e.value)


def test_wise_ft_mixes_two_bundles(runs, tmp_path):
  a = export.export(runs["a"], str(tmp_path / "a"), ema=True)  # two bundles of one architecture
  b = export.export(runs["a"], str(tmp_path / "b"))
  pa, pb = _flat(Bundle(a).read_params()), _flat(Bundle(b).read_params())
  for alpha, want in ((0.0, pa), (1.0, pb), (0.5, {k: (pa[k] + pb[k]) / np.float32(2) for k in pa})):
    out = wise_ft.wise_ft(a, b, alpha, str(tmp_path / "c"), force=True)
    got = _flat(Bundle(out).read_params())
    assert got.keys() == want.keys()
    for key, x in want.items():
      np.testing.assert_array_equal(got[key], x, err_msg=f"alpha {alpha}: {key}")
  info = Bundle(out).info()
  assert info["wise_ft"]["alpha"] == 0.5 and Bundle(out).load().tokenizer is not None

  # A bundle of another architecture (a deeper text tower): the first differing param is named.
  other = tiny_config("", **{"model.text": dict(variant="mu", width=32, depth=2, mlp_dim=64, num_heads=2,
                                                max_len=16)})
  zeros = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), _abstract_params(other))
  deeper = export.write_bundle(str(tmp_path / "deeper"), other, zeros, Bundle(b).file(Bundle.TOKENIZER),
                               {"step": 0, "dtype": "float32", "vocab_size": 128, "source": "test"})
  with pytest.raises(ValueError, match=r"^wise_ft: param 'text/encoder/blocks/attn/key/bias' has shape "
                                       r"\(1, 2, 16\) in --zero_shot and \(2, 2, 16\) in --fine_tuned"):
    wise_ft.wise_ft(a, deeper, 0.5, str(tmp_path / "d"))

  # --out: a folder of other files is refused, a previous bundle only with --force.
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep")
  with pytest.raises(ValueError, match=r"^wise_ft: --out .* is not empty and does not hold a bundle"):
    wise_ft.wise_ft(a, b, 0.5, str(tmp_path / "mine"))
  assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
  with pytest.raises(ValueError, match=r"^wise_ft: --out .* already holds a bundle; pass --force"):
    wise_ft.wise_ft(a, b, 0.5, str(tmp_path / "c"))
  with pytest.raises(FileNotFoundError, match=r"^wise_ft: --zero_shot .* is not an inference bundle"):
    wise_ft.wise_ft(runs["a"], b, 0.5, str(tmp_path / "e"))
  for alpha in (-0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match=r"^wise_ft: --alpha .* must be a number in \[0, 1\]"):
      wise_ft.wise_ft(a, b, alpha, str(tmp_path / "e"))
  assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_wise_ft_command_fails_in_one_line(tmp_path):
  result = subprocess.run([sys.executable, "-m", "vlmjax.wise_ft", "--zero_shot", str(tmp_path / "a"),
                           "--fine_tuned", str(tmp_path / "b"), "--alpha", "2", "--out", str(tmp_path / "c")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [
      "vlmjax.wise_ft: error: wise_ft: --alpha 2.0 must be a number in [0, 1] (0: the zero-shot params, 1: the "
      "fine-tuned ones)"]


@pytest.mark.parametrize("key, value, message", [
    ("layer_decay", 0.0, "'optimizer.layer_decay' 0.0 must be a finite number > 0"),
    ("layer_decay", 1.5, "'optimizer.layer_decay' 1.5 must be at most 1"),
    ("layer_decay", float("nan"), "'optimizer.layer_decay' nan must be a finite number > 0"),
    ("ema_decay", 1.0, "'optimizer.ema_decay' 1.0 must be below 1"),
    ("ema_decay", -0.1, "'optimizer.ema_decay' -0.1 must be a finite number >= 0"),
    ("lr_multipliers", (("^image/(", 0.1),), "'optimizer.lr_multipliers' pattern '^image/(' is not a valid regex"),
    ("lr_multipliers", (("^image/", -1.0),), "'optimizer.lr_multipliers' multiplier -1.0 of '^image/' must be"),
    ("lr_multipliers", (("^image/", float("inf")),), "'optimizer.lr_multipliers' multiplier inf of '^image/'"),
    ("lr_multipliers", (("^image/",),), "'optimizer.lr_multipliers' entry ('^image/',) must be a pair"),
])
def test_bad_values_are_one_line_config_errors(make_tiny_config, key, value, message):
  config = make_tiny_config()
  config.optimizer[key] = value
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_keys_and_ranges(config)
  assert str(e.value).startswith(f"config: {message}"), str(e.value)
  assert "\n" not in str(e.value)


def test_which_keys_may_change_on_resume(make_tiny_config):
  saved = json.loads(make_tiny_config().to_json_best_effort())
  changed = make_tiny_config(**{"optimizer.lr_multipliers": (("^image/", 0.0),)})
  assert config_differences(saved, json.loads(changed.to_json_best_effort())) == []
  changed.optimizer.ema_decay = 0.9
  assert config_differences(saved, json.loads(changed.to_json_best_effort())) == ["optimizer.ema_decay: 0.0 -> 0.9"]
  old = {k: v for k, v in saved.items()}  # a run saved before these keys existed resumes with them off
  old["optimizer"] = {k: v for k, v in saved["optimizer"].items()
                      if k not in ("layer_decay", "lr_multipliers", "ema_decay")}
  assert config_differences(old, saved) == []
