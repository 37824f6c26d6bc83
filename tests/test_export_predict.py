"""Inference bundles (vlmjax.export) and the predict CLI (vlmjax.predict) on a run trained on 8 devices."""
import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, tiny_config
from vlmjax import evaluate, export, interop, predict, sharding
from vlmjax.init_from import init_params_from
from vlmjax.run import Bundle, RunDir
from vlmjax.data import pipeline, sources
from vlmjax.data.tokenizer import Tokenizer
from vlmjax.evals.common import Embedder
from vlmjax.train import train

CLIP_TOWERS = {  # CLIP-style towers, so the same run also exports to open_clip / HF
    "model.image": dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2, pool="cls", pre_norm=True),
    "model.text": dict(variant="mu", width=32, depth=1, mlp_dim=64, num_heads=2, max_len=16),
}


@pytest.fixture(scope="module")
def run(tiny_data_dir, tmp_path_factory):
  """A tiny CLIP run on 8 devices (FSDP), its bundles, and the test split's images as PNG files."""
  root = tmp_path_factory.mktemp("export")
  config = tiny_config(tiny_data_dir, total_steps=4, mesh=dict(data=1, fsdp=-1, tensor=1), **CLIP_TOWERS)
  config.evals = dict(zeroshot=dict(type="zeroshot", split="test"))
  workdir = str(root / "run")
  train(config, workdir)
  source = sources.make_source(config.data, "test")
  folder, labels, captions = root / "images", {}, {}
  folder.mkdir()
  for i in range(len(source)):
    record = source[i]
    path = str(folder / f"{i:03d}.png")
    pipeline.decode_image(record["image"]).save(path)
    labels[path], captions[path] = int(record["label"]), record["caption"]
  return types.SimpleNamespace(config=config, workdir=workdir, root=root, folder=str(folder), labels=labels,
                               captions=captions, bundle=export.export(workdir, str(root / "bundle")))


@pytest.fixture(scope="module")
def predictors(run):
  """The bundle on 1 device and on all 8, batches of 16 (the evaluator's), compiled once."""
  return {1: predict.Predictor(run.bundle, devices=1, batch_size=16), 8: predict.Predictor(run.bundle, batch_size=16)}


def test_bundle_holds_params_only_and_loads_without_the_run(run):
  assert sorted(os.listdir(run.bundle)) == ["bundle.json", "config.json", "params", "tokenizer.model"]
  info = json.load(open(os.path.join(run.bundle, "bundle.json")))
  assert (info["step"], info["dtype"], info["model"], info["format"]) == (4, "float32", "dual_encoder", "orbax")
  loaded = Bundle(run.bundle).load()
  config, params, tokenizer = loaded.config, loaded.params, loaded.tokenizer
  assert set(params) == {"image", "text", "image_proj", "text_proj", "logit_scale", "logit_bias"}
  assert config.tokenizer.path == "" and tokenizer.vocab_size == info["vocab_size"]


def test_bundle_from_8_devices_predicts_identically_on_1(run, predictors):
  """The run's own params on its 8-device FSDP mesh vs the bundle on 1 device and on 8."""
  config = run.config
  mesh = sharding.make_mesh(config.mesh)
  assert mesh.size == 8
  loaded = RunDir(run.workdir).load(mesh=mesh)
  model, trained, tokenizer = loaded.model, loaded.params, loaded.tokenizer
  paths = predict.list_images([run.folder])[:40]
  one, eight = predictors[1], predictors[8]
  assert one.mesh.size == 1 and eight.mesh.size == 8
  pixels = np.stack([one.read_image(p) for p in paths])
  want = Embedder(model, trained, mesh, 16).embed_images(pixels)
  for predictor in (one, eight):
    got = predictor.embed_images(paths)[1]
    assert np.max(np.abs(got - want)) <= 1e-6
  texts = [run.captions[p] for p in paths[:10]]
  np.testing.assert_allclose(one.embed_texts(texts), Embedder(model, trained, mesh, 16).embed_texts(
      tokenizer.encode(texts, config.input.max_text_len)), atol=1e-6)


def test_classify_reproduces_the_evaluators_zeroshot_accuracy(run, predictors):
  results = evaluate.evaluate_workdir(run.workdir)
  predictor = predictors[8]
  labelled = [p for p, label in run.labels.items() if label >= 0]
  out = predict.classify(predictor, labelled, top_k=5)
  from vlmjax.data import shapes
  top1 = np.mean([shapes.CLASS_NAMES[run.labels[r["image"]]] == r["top"][0][0] for r in out])
  top5 = np.mean([shapes.CLASS_NAMES[run.labels[r["image"]]] in [c for c, _ in r["top"]] for r in out])
  assert len(out) == results["zeroshot/count"] > 0
  assert top1 == pytest.approx(results["zeroshot/top1"], abs=1e-9)
  assert top5 == pytest.approx(results["zeroshot/top5"], abs=1e-9)
  scores = [s for _, s in out[0]["top"]]
  assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6


def test_embed_retrieve_and_grid(run, predictors, tmp_path):
  predictor = predictors[8]
  inputs, embeddings = predict.embed(predictor, [run.folder], out=str(tmp_path / "emb.npy"))
  saved = np.load(tmp_path / "emb.npy")
  assert saved.shape == (len(run.labels), 32) and np.allclose(np.linalg.norm(saved, axis=1), 1, atol=1e-5)
  assert open(tmp_path / "emb.txt").read().splitlines() == inputs
  texts, text_embeddings = predict.embed(predictor, texts=["a red circle", "two blue squares"])
  assert texts == ["a red circle", "two blue squares"] and text_embeddings.shape == (2, 32)
  query = run.captions[inputs[5]]
  results = predict.retrieve(predictor, [run.folder], [query, "a green star"], top_k=4)
  scores = [s for _, s in results[0]["top"]]
  assert len(scores) == 4 and scores == sorted(scores, reverse=True)
  query_embedding = predictor.embed_texts([query])[0]
  assert scores[0] == pytest.approx(float(np.max(embeddings @ query_embedding)), abs=1e-5)
  grid = predict.draw_grid(results, str(tmp_path / "grid.png"), thumb=64)
  with Image.open(grid) as image:
    assert image.size == (2 * 64 + 4 * (64 + 6) + 6, 2 * (64 + 16 + 6) + 6)
    thumbnail = np.asarray(image)[6:70, 128:192]  # the first query's best image
  with Image.open(results[0]["top"][0][0]) as best:
    assert np.abs(thumbnail.astype(int) - np.asarray(best.convert("RGB").resize((64, 64), Image.BILINEAR))).max() == 0


def test_unreadable_images_fail_in_one_line_naming_the_file(run, predictors, tmp_path):
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"not a png at all")
  images = [os.path.join(run.folder, "000.png"), str(bad)]
  predictor = predictors[1]
  with pytest.raises(predict.PredictError, match=f"cannot read image '{bad}'"):
    predictor.embed_images(images)
  predictor.skip_unreadable = True
  try:
    assert predictor.embed_images(images)[0] == images[:1]
  finally:
    predictor.skip_unreadable = False
  with pytest.raises(predict.PredictError, match="no such file or folder 'nowhere'"):
    predict.list_images(["nowhere"])
  # The command line: exit 2 and one line on stderr.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "vlmjax.predict", "--bundle", run.bundle, "classify", *images],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(f"vlmjax.predict: error: predict: cannot read image '{bad}'")


def test_bfloat16_safetensors_bundle(run, predictors, tmp_path):
  bundle = export.export(run.workdir, str(tmp_path / "bf16"), dtype="bfloat16", fmt="safetensors")
  assert "params.safetensors" in os.listdir(bundle) and "params" not in os.listdir(bundle)
  params = Bundle(bundle).load().params
  assert params["image"]["patch_embed"]["kernel"].dtype == np.dtype("bfloat16")
  paths = predict.list_images([run.folder])[:16]
  full = predictors[8].embed_images(paths)[1]
  half = predict.Predictor(bundle, batch_size=16).embed_images(paths)[1]
  assert np.max(np.abs(full - half)) < 0.05


def test_bundle_with_another_models_params_is_refused(run, tmp_path):
  config = json.load(open(os.path.join(run.bundle, "config.json")))
  config["model"]["embed_dim"] = 48
  wrong = tmp_path / "wrong"
  os.system(f"cp -r {run.bundle} {wrong}")
  json.dump(config, open(wrong / "config.json", "w"))
  with pytest.raises(ValueError, match="param 'image_proj/kernel' has shape \\(32, 32\\), the model expects \\(32, 48\\)"):
    Bundle(str(wrong)).load()
  with pytest.raises(FileNotFoundError, match="config.json' does not exist \\(is '.*' a bundle\\?\\)"):
    Bundle(str(tmp_path)).load()


def test_formats_round_trip_through_bundles_and_init(run, predictors, tmp_path):
  """bundle -> open_clip folder -> imported bundle: the same embeddings; and `init` reads bundles."""
  folder = export.export_to("open_clip", str(tmp_path / "oc"), bundle=run.bundle)
  assert "tokenizer.model" in os.listdir(folder)
  imported = export.import_from("open_clip", folder, str(tmp_path / "imported"))
  paths = predict.list_images([run.folder])[:8]
  original, again = predictors[8], predict.Predictor(imported, batch_size=16)
  assert np.max(np.abs(original.embed_images(paths)[1] - again.embed_images(paths)[1])) <= 1e-5
  assert np.max(np.abs(original.embed_texts(["a red circle"]) - again.embed_texts(["a red circle"]))) <= 1e-5
  # `c.init.workdir` may name a bundle: the matching params come from it.
  params = Bundle(imported).load().params
  fresh = jax.tree.map(lambda x: x * 0, params)
  merged = init_params_from(imported, fresh, "^image/")
  assert np.array_equal(merged["image"]["cls"], params["image"]["cls"])
  assert not np.any(np.asarray(merged["text"]["pos_embedding"]))
  # A tokenizer whose pieces do not match the token embedding's rows is refused.
  state = interop.read_state_dict(folder)
  state["token_embedding.weight"] = state["token_embedding.weight"][:40]
  from safetensors.numpy import save_file
  save_file(state, os.path.join(folder, "open_clip_model.safetensors"))
  pieces = Tokenizer.load(os.path.join(folder, "tokenizer.model")).vocab_size
  with pytest.raises(ValueError, match=f"tokenizer.model.: the tokenizer has {pieces} ids but the token "
                                       "embedding table has 40 rows"):
    export.import_from("open_clip", folder, str(tmp_path / "bad"))


def test_caption_from_a_vlm_bundle_reproduces_the_evaluators_scores(tiny_data_dir, tmp_path):
  """`predict caption` on the test images, on 1 device and on 8 with a padded last batch, gives the
  same captions, and they score exactly the CIDEr / BLEU the captioning evaluator reported."""
  from vlmjax.evals.captioning import caption_metrics
  count = 12
  config = tiny_config(tiny_data_dir, **{
      "total_steps": 3, "mesh": dict(data=2, fsdp=4, tensor=1),
      "model": dict(name="vlm", image=dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2),
                    decoder=dict(variant="mu", width=32, depth=1, mlp_dim=64, num_heads=4, num_kv_heads=2),
                    projector=dict(kind="mlp")),
      "objectives": {"ntp": {"weight": 1.0}}})
  config.evals = dict(caption=dict(type="captioning", split="test", num_examples=count, max_new_tokens=8),
                      beam=dict(type="captioning", split="test", num_examples=count, max_new_tokens=8,
                                beam_size=3, length_penalty=1.0, repetition_penalty=1.2))
  workdir = str(tmp_path / "run")
  train(config, workdir)
  bundle = export.export(workdir, str(tmp_path / "bundle"))
  source = sources.make_source(config.data, "test")
  paths = []
  for i in range(count):
    paths.append(str(tmp_path / f"{i:03d}.png"))
    pipeline.decode_image(source[i]["image"]).save(paths[-1])
  one = predict.caption(predict.Predictor(bundle, devices=1, batch_size=16), paths, max_new_tokens=8)
  predictor = predict.Predictor(bundle, batch_size=8)
  eight = predict.caption(predictor, paths, max_new_tokens=8)
  assert [r["image"] for r in one] == paths and one == eight
  reported = json.load(open(os.path.join(workdir, "eval_results.json")))
  metrics = caption_metrics([source.reference_captions(i) for i in range(count)], [r["caption"] for r in one])
  for key, value in metrics.items():
    assert value == pytest.approx(reported[f"caption/{key}"], abs=1e-9), key
  # Beam search, the same in the evaluator and in `predict caption`.
  beam = predict.caption(predictor, paths, max_new_tokens=8, beam_size=3,
                         length_penalty=1.0, repetition_penalty=1.2)
  metrics = caption_metrics([source.reference_captions(i) for i in range(count)], [r["caption"] for r in beam])
  for key, value in metrics.items():
    assert value == pytest.approx(reported[f"beam/{key}"], abs=1e-9), key
  for flags, message in (({"beam_size": 0}, "--beam_size 0 must be at least 1"),
                         ({"beam_size": 2, "temperature": 1.0}, "does not sample"),
                         ({"min_length": 8}, "--min_length 8 must be in"),
                         ({"repetition_penalty": 0.0}, "--repetition_penalty 0.0 must be above 0")):
    with pytest.raises(predict.PredictError, match=message):
      predict.caption(predictor, paths[:1], max_new_tokens=8, **flags)
  with pytest.raises(predict.PredictError, match="needs a dual_encoder"):
    predict.run("classify", paths, types.SimpleNamespace(bundle=bundle, devices=1, batch_size=8,
                                                          skip_unreadable=False))
