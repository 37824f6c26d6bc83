"""A learned position table resampled to another patch grid (big_vision's `resample_posemb`): by hand
and against scipy, and on loading a model trained at 32 px as one at 48 px (a bundle, a run, `init`,
an eval entry's own `image_size`, predict)."""
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from vlmjax import config as config_lib, evaluate, experiment as experiment_lib, export
from vlmjax.evals.common import Embedder
from vlmjax.init_from import init_params_from
from vlmjax.models.vit import resample_posemb
from vlmjax.run import Bundle, RunDir, check_params, one_device_mesh, resample_posembs, resized_params
from vlmjax.train import train

# --- the function -------------------------------------------------------------------------------


def test_same_grid_is_the_identity():
  table = jax.random.normal(jax.random.PRNGKey(0), (1, 1 + 16, 8))
  out = resample_posemb(table, (4, 4), num_prefix_tokens=1)
  assert out is table
  assert np.array_equal(np.asarray(resample_posemb(table[:, 1:], (4, 4))), np.asarray(table[:, 1:]))


def test_2x2_to_4x4_by_hand():
  """Linear along each side with the corners fixed: output i of 4 reads input i/3 of 2. Channel 0 is
  3x + 6y (a plane: exact at every sample), channel 1 is x·y (the bilinear cross term)."""
  grid = np.array([[[0, 0], [3, 0]],
                   [[6, 0], [9, 1]]], np.float32)  # [y, x, channel]
  out = np.asarray(resample_posemb(jnp.asarray(grid.reshape(1, 4, 2)), (4, 4))).reshape(4, 4, 2)
  y, x = np.mgrid[:4, :4] / 3
  np.testing.assert_array_equal(out[..., 0], 2 * np.mgrid[:4, :4][0] + np.mgrid[:4, :4][1])
  np.testing.assert_allclose(out[..., 1], x * y, atol=1e-7)
  # Not jax.image.resize's bilinear: that samples half-pixel centres, so its corners are not the input's.
  theirs = np.asarray(jax.image.resize(jnp.asarray(grid), (4, 4, 2), "bilinear"))
  assert theirs[0, 0, 0] == 0 and theirs[0, 1, 0] == 0.75 and out[0, 1, 0] == 1


@pytest.mark.parametrize("old, new", [((2, 2), (4, 4)), ((4, 4), (6, 6)), ((6, 6), (4, 4)), ((3, 5), (7, 2)),
                                      ((1, 1), (3, 3)), ((4, 4), (1, 1))])
def test_matches_scipy_zoom_order_1(old, new):
  """big_vision resizes with `scipy.ndimage.zoom(grid, zoom, order=1)`; the same within float32."""
  ndimage = pytest.importorskip("scipy.ndimage")
  grid = np.random.default_rng(0).standard_normal((*old, 6)).astype(np.float32)
  table = jnp.asarray(np.concatenate([np.full((1, 6), 7.0, np.float32), grid.reshape(-1, 6)])[None])
  out = np.asarray(resample_posemb(table, new, num_prefix_tokens=1, grid=old if old[0] != old[1] else None))
  reference = ndimage.zoom(grid.astype(np.float64), (new[0] / old[0], new[1] / old[1], 1), order=1)
  assert out.shape == (1, 1 + new[0] * new[1], 6) and reference.shape == (*new, 6)
  np.testing.assert_allclose(out[0, 1:], reference.reshape(-1, 6), atol=1e-6)
  assert np.array_equal(out[0, 0], table[0, 0])  # the class token's row is kept, bit for bit


def test_class_token_kept_and_dtype_too():
  table = jax.random.normal(jax.random.PRNGKey(1), (1, 1 + 9, 4)).astype(jnp.bfloat16)
  out = resample_posemb(table, (5, 5), num_prefix_tokens=1)
  assert out.shape == (1, 26, 4) and out.dtype == jnp.bfloat16
  assert np.array_equal(np.asarray(out[:, 0], np.float32), np.asarray(table[:, 0], np.float32))


def test_tables_that_are_no_grid_are_refused():
  with pytest.raises(ValueError, match="are not a square grid"):
    resample_posemb(jnp.zeros((1, 1 + 15, 4)), (4, 4), num_prefix_tokens=1)
  with pytest.raises(ValueError, match="are not the grid 3x4"):
    resample_posemb(jnp.zeros((1, 16, 4)), (4, 4), grid=(3, 4))
  with pytest.raises(ValueError, match="grid \\(0, 4\\)"):
    resample_posemb(jnp.zeros((1, 16, 4)), (0, 4))
  with pytest.raises(ValueError, match="\\[1, N, D\\]"):
    resample_posemb(jnp.zeros((16, 4)), (4, 4))


def test_only_a_vit_table_is_resampled():
  """The table beside a 'patch_embed' (a text tower's is left for check_params to report)."""
  params = {"image": {"patch_embed": {"kernel": jnp.zeros((8, 8, 3, 4))}, "cls": jnp.zeros((1, 1, 4)),
                      "pos_embedding": jnp.ones((1, 17, 4))},
            "text": {"pos_embedding": jnp.ones((1, 16, 4))}}
  expected = {"image": {"patch_embed": {"kernel": jnp.zeros((8, 8, 3, 4))}, "cls": jnp.zeros((1, 1, 4)),
                        "pos_embedding": jax.ShapeDtypeStruct((1, 37, 4), jnp.float32)},
              "text": {"pos_embedding": jax.ShapeDtypeStruct((1, 8, 4), jnp.float32)}}
  out = resample_posembs(params, expected)
  assert out["image"]["pos_embedding"].shape == (1, 37, 4) and out["text"]["pos_embedding"].shape == (1, 16, 4)
  with pytest.raises(ValueError, match=r"^here: param 'text/pos_embedding' has shape \(1, 16, 4\), the model "
                                       r"expects \(1, 8, 4\)$"):
    check_params(out, expected, "here")


# --- a model trained at 32 px, loaded at 48 --------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
  """4 steps of the tiny model with a class token (its row of the table kept), and its bundle."""
  root = tmp_path_factory.mktemp("posemb_run")
  config = tiny_config(tiny_data_dir, total_steps=4, mesh=dict(data=1, fsdp=-1, tensor=1))
  config.model.image.pool = "cls"
  workdir = str(root / "run")
  train(config, workdir)
  return types.SimpleNamespace(workdir=workdir, config=config, bundle=export.export(workdir, str(root / "bundle")))


def image_table(params):
  return np.asarray(params["image"]["pos_embedding"])


def test_bundle_loads_at_another_image_size(trained):
  plain, big = Bundle(trained.bundle).load(), Bundle(trained.bundle).load(image_size=48)
  assert big.config.input.image_size == 48 and plain.config.input.image_size == 32
  big_keys, plain_keys = big.config.to_dict(), plain.config.to_dict()
  big_keys["input"].pop("image_size"), plain_keys["input"].pop("image_size")
  assert big_keys == plain_keys
  old, new = image_table(plain.params), image_table(big.params)
  assert old.shape == (1, 1 + 16, 32) and new.shape == (1, 1 + 36, 32)
  np.testing.assert_array_equal(new, np.asarray(resample_posemb(old, (6, 6), num_prefix_tokens=1)))
  assert np.array_equal(new[0, 0], old[0, 0]) and np.array_equal(new[0, 1], old[0, 1])  # class token, corner
  assert np.array_equal(new[0, -1], old[0, -1])
  # Every other param is the bundle's own.
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(plain.params)[0], jax.tree.leaves(big.params)):
    if "pos_embedding" not in jax.tree_util.keystr(path) or "text" in jax.tree_util.keystr(path):
      assert np.array_equal(np.asarray(a), np.asarray(b)), path
  embedder = Embedder(big.model, big.params, big.experiment.mesh, 4, big.experiment.rules)
  images = np.random.default_rng(0).uniform(-1, 1, (3, 48, 48, 3)).astype(np.float32)
  embeds = embedder.embed_images(images)
  assert embeds.shape == (3, trained.config.model.embed_dim) and np.isfinite(embeds).all()
  # Its own size: the bundle exactly as it is.
  same = Bundle(trained.bundle).load(image_size=32)
  assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(same.params),
                                                                           jax.tree.leaves(plain.params)))


def test_run_loads_at_another_image_size_as_its_bundle_does(trained):
  run = RunDir(trained.workdir).load(image_size=48)
  bundle = Bundle(trained.bundle).load(image_size=48)
  assert run.config.input.image_size == 48 and run.step == 4
  np.testing.assert_array_equal(image_table(run.params), image_table(bundle.params))


@pytest.mark.parametrize("size, expected", [(4, r"'image_size' 4 is smaller than the image tower's "
                                                 r"patch_size 8"),
                                            (0, r"'image_size' 0 must be a positive integer")])
def test_a_size_the_patches_do_not_divide_is_one_line(trained, size, expected):
  for load in (Bundle(trained.bundle).load, RunDir(trained.workdir).load):
    with pytest.raises(config_lib.ConfigError, match=expected) as error:
      load(image_size=size)
    assert "\n" not in str(error.value)


def model_params(config, image_size: int):
  """The model of `config` at `image_size`, and params of its shapes (placed as its own; filled with
  a constant: initialising would compile, and only the shapes matter here)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.input.image_size = image_size
  experiment = experiment_lib.build(config, 128, mesh=one_device_mesh(), objectives=False, validate=False)
  return experiment, jax.tree.map(lambda a: jax.device_put(jnp.full(a.shape, 0.5, a.dtype), a.sharding),
                                  experiment.abstract_params())


@pytest.mark.parametrize("source", ["workdir", "bundle"])
def test_init_from_a_32px_source_into_a_48px_model(trained, source):
  _, params = model_params(trained.config, 48)
  path = trained.workdir if source == "workdir" else trained.bundle
  out = init_params_from(path, params, "^image/")
  source_params = Bundle(trained.bundle).load().params
  np.testing.assert_array_equal(image_table(out), np.asarray(resample_posemb(image_table(source_params), (6, 6), 1)))
  np.testing.assert_array_equal(np.asarray(out["image"]["cls"]), np.asarray(source_params["image"]["cls"]))
  np.testing.assert_array_equal(np.asarray(out["text"]["pos_embedding"]), np.asarray(params["text"]["pos_embedding"]))
  # Any other mismatch is still refused.
  wider = ml_collections.ConfigDict(trained.config.to_dict())
  wider.model.image.width = 48
  _, other = model_params(wider, 48)
  with pytest.raises(ValueError, match="init.workdir: "):
    init_params_from(path, other, "^image/")


def test_a_sincos2d_model_has_nothing_to_resample(trained):
  config = ml_collections.ConfigDict(trained.config.to_dict())
  config.model.image.posemb = "sincos2d"
  big_experiment, _ = model_params(config, 48)
  small = Bundle(trained.bundle).load().params  # the same model but its learned table
  small["image"] = {k: v for k, v in small["image"].items() if k != "pos_embedding"}
  params = resized_params(small, big_experiment.abstract_params(), "here")
  assert jax.tree.structure(params) == jax.tree.structure(small)
  images = np.zeros((2, 48, 48, 3), np.float32)
  embedder = Embedder(big_experiment.model, params, big_experiment.mesh, 2, big_experiment.rules)
  assert np.isfinite(embedder.embed_images(images)).all()


# --- an eval entry at its own resolution -----------------------------------------------------------


def write_suite(path, entries: dict):
  path.write_text("import ml_collections\n\ndef get_config(arg=None):\n"
                  f"  return ml_collections.ConfigDict({entries!r})\n")
  return str(path)


def test_suite_entry_with_its_own_image_size(trained, tmp_path):
  suite = write_suite(tmp_path / "sizes.py", {
      "base": dict(type="zeroshot", split="test"),
      "big": dict(type="zeroshot", split="test", image_size=48),
      "same": dict(type="zeroshot", split="test", image_size=32),
      "big_probe": dict(type="fewshot", shots=(1,), image_size=48)})
  record = evaluate.evaluate_suite(suite, bundle=trained.bundle, out=str(tmp_path / "out"), show=lambda t: None)
  results = record["results"]
  assert results["same/top1"] == results["base/top1"]
  assert results["big/count"] == results["base/count"] and 0 <= results["big/top1"] <= 1
  assert 0 <= results["big_probe/1shot_top1"] <= 1
  # In the entries' order (a ConfigDict's: sorted), not the sizes' (32: base, same; then 48).
  assert list(dict.fromkeys(k.split("/")[0] for k in results)) == ["base", "big", "big_probe", "same"]


@pytest.mark.parametrize("size, expected", [(4, r"^config: evals.bad: 'image_size' 4 is smaller than the "
                                                 r"image tower's patch_size 8$"),
                                            ("big", r"'image_size' 'big' of an eval entry must be a positive")])
def test_a_bad_entry_size_is_refused_before_any_model(trained, tmp_path, size, expected, monkeypatch):
  suite = write_suite(tmp_path / "bad.py", {"bad": dict(type="zeroshot", split="test", image_size=size)})
  monkeypatch.setattr(Bundle, "load", lambda *a, **k: pytest.fail("loaded a model"))
  with pytest.raises(config_lib.ConfigError, match=expected):
    evaluate.evaluate_suite(suite, bundle=trained.bundle, out=str(tmp_path / "out"), show=lambda t: None)


def test_predict_at_another_image_size(trained, tmp_path):
  from PIL import Image
  from vlmjax import predict
  paths = []
  for i, colour in enumerate([(220, 30, 30), (30, 30, 220)]):
    paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(np.full((40, 40, 3), colour, np.uint8)).save(paths[-1])
  predictor = predict.Predictor(trained.bundle, devices=1, batch_size=2, image_size=48, progress=False)
  assert predictor.config.input.image_size == 48 and predictor.read_image(paths[0]).shape == (48, 48, 3)
  kept, embeds = predictor.embed_images(paths)
  assert kept == paths and embeds.shape == (2, trained.config.model.embed_dim) and np.isfinite(embeds).all()
