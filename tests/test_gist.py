"""GIST's description matching, TL;DR's selection and STRUCTURE's layer selection on a trained (tiny)
run, and caption files."""
import os

import numpy as np
import pytest

from conftest import tiny_config
from vlmjax import gist, select_data, select_layer
from vlmjax.evals import classes
from vlmjax.data import mixture, recaption, shapes, subset
from vlmjax.train import train


@pytest.fixture(scope="module")
def tiny_run(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tiny_clip"))
  train(tiny_config(tiny_data_dir, total_steps=2, mesh=dict(data=1, fsdp=-1, tensor=1),
                    **{"model.image.depth": 2, "model.text.depth": 2}), workdir)
  return workdir


def test_class_descriptions_add_size_and_place():
  descriptions = classes.class_descriptions("orange cross")
  assert len(descriptions) == len(set(descriptions)) == 30
  assert descriptions[:3] == ["an orange cross", "a small orange cross", "a large orange cross"]
  assert "a large orange cross in the top left" in descriptions


def test_gist_matches_each_labelled_image_to_its_own_classes_descriptions(tiny_run, tiny_source, tmp_path):
  count, size = gist.write(tiny_run, str(tmp_path))
  captions = recaption.read_captions(str(tmp_path / "captions.tsv"), size)
  indices = subset.read_indices(str(tmp_path / "subset.txt"), size)
  labelled = [i for i in range(len(tiny_source)) if tiny_source[i]["label"] >= 0]
  assert size == len(tiny_source) and count == len(labelled) > 0
  assert sorted(captions) == indices.tolist() == labelled
  for index, caption in captions.items():
    assert caption in classes.class_descriptions(shapes.CLASS_NAMES[tiny_source[index]["label"]])


def test_select_data_on_a_run_writes_a_usable_subset(tiny_run, tiny_data_dir, tmp_path):
  for method in ("centroids", "random"):
    kept, size, about = select_data.select(tiny_run, 0.25, method, clusters=8, seed=1)
    assert len(kept) == 128 and size == 512 and len(set(kept.tolist())) == 128, method
    path = tmp_path / f"{method}.txt"
    subset.write_indices(str(path), kept, about)
    source = mixture.train_source(tiny_config(tiny_data_dir, **{"data.subset_file": str(path)}).data, 0)
    assert len(source) == 128


def test_caption_file_replaces_the_listed_captions(tiny_data_dir, tiny_source, tmp_path):
  path = tmp_path / "captions.tsv"
  recaption.write_captions(str(path), {5: "a small red circle on the left", 9: "a blue star"}, "by hand")
  source = mixture.train_source(tiny_config(tiny_data_dir, **{"data.caption_file": str(path)}).data, 0)
  assert source[5]["caption"] == "a small red circle on the left" and source[9]["caption"] == "a blue star"
  assert source[6]["caption"] == tiny_source[6]["caption"]
  np.testing.assert_array_equal(source[5]["image"], tiny_source[5]["image"])


@pytest.mark.parametrize("text,match", [
    ("3 a red circle\n", "line 1: expected 'index<TAB>caption'"),
    ("x\ta red circle\n", "line 1: 'x' is not a record index"),
    ("1\ta\n999\tb\n", "line 2: index 999 is outside the train split's 512 records"),
    ("1\ta\n1\tb\n", "line 2: index 1 is listed twice"),
    ("1\t  \n", "line 1: expected 'index<TAB>caption'"),
])
def test_bad_caption_files_are_one_line_errors(tiny_data_dir, tmp_path, text, match):
  path = tmp_path / "captions.tsv"
  path.write_text(text)
  with pytest.raises(recaption.CaptionFileError, match=match):
    mixture.train_source(tiny_config(tiny_data_dir, **{"data.caption_file": str(path)}).data, 0)


def test_zero_shot_can_prompt_with_the_class_descriptions():
  from vlmjax.evals.zeroshot import ZeroShot
  assert ZeroShot(name="zs", prompts="descriptions").prompts("red circle") == classes.class_descriptions("red circle")


def test_gist_names_writes_the_class_names(tiny_run, tiny_source, tmp_path):
  count, size = gist.write(tiny_run, str(tmp_path), text="names")
  captions = recaption.read_captions(str(tmp_path / "captions.tsv"), size)
  for index, caption in captions.items():
    name = shapes.CLASS_NAMES[tiny_source[index]["label"]]
    assert caption == classes.class_descriptions(name)[0] and caption.endswith(name)
  with pytest.raises(ValueError, match="--text 'labels' must be one of descriptions, names"):
    gist.write(tiny_run, str(tmp_path), text="labels")


def test_mutual_knn_matches_a_brute_force_reference():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(40, 6)), rng.normal(size=(40, 5))
  k = select_layer.rice_k(40)
  assert k == 7

  def neighbours(x):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return [set(sorted((j for j in range(len(x)) if j != i), key=lambda j: (-(x[i] @ x[j]), j))[:k])
            for i in range(len(x))]
  want = np.mean([len(p & q) / k for p, q in zip(neighbours(a), neighbours(b))])
  assert select_layer.mutual_knn(a, b, k) == pytest.approx(want)
  assert select_layer.mutual_knn(a, 3.0 * a, k) == 1.0            # scale-free: the same neighbourhoods
  assert select_layer.mutual_knn(a, b, k) < 0.5
  with pytest.raises(ValueError, match="k=40 must be in"):
    select_layer.mutual_knn(a, b, 40)


def test_select_layer_scores_every_pair_of_layers(tiny_run):
  """Each tower's layers are its `output_layer` features (the last one the tower's usual output),
  every (image, text) pair is scored, and the best is named as config overrides."""
  from vlmjax.run import RunDir
  image, text = select_layer.layer_features(tiny_run, "validation", 24)
  assert sorted(image) == sorted(text) == [1, 2] and image[1].shape == (24, 32)
  assert not np.allclose(image[1], image[2])
  loaded = RunDir(tiny_run).load()
  from vlmjax.evals.common import Embedder
  import jax
  embedder = Embedder(loaded.model, loaded.params, loaded.experiment.mesh, 256)
  last = embedder.run(jax.jit(lambda p, x: loaded.model.apply({"params": p}, images=x)["image_features"]),
                      select_layer_images(tiny_run, 24))
  np.testing.assert_allclose(image[2], last, atol=1e-5)
  result = select_layer.score_layers(image, text)
  assert len(result["scores"]) == 4 and result["k"] == select_layer.rice_k(24)
  assert all(0.0 <= s["mutual_knn"] <= 1.0 for s in result["scores"])
  assert result["best"]["mutual_knn"] == max(s["mutual_knn"] for s in result["scores"])
  assert result["overrides"][0] == f"--config.model.image.output_layer={result['best']['image_layer']}"


def select_layer_images(workdir, n):
  from vlmjax.data import pipeline, sources
  from vlmjax.run import RunDir
  loaded = RunDir(workdir).load()
  config = loaded.config
  preprocess = pipeline.Preprocess(loaded.tokenizer, config.input.image_size, config.input.max_text_len,
                                   input_config=config.input)
  batch = next(iter(pipeline.eval_batches(sources.make_source(config.data, "validation"), preprocess, n)))
  return batch["image"]


def test_output_layer_is_that_blocks_output():
  """A stack's `output_layer` k gives what a k-deep stack with the first k blocks' params gives,
  scanned or not; out-of-range k is an error."""
  import flax.linen as nn
  import jax
  from vlmjax.models import layers
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
  block = dict(num_heads=2, mlp_dim=32)
  for scan in (True, False):
    deep = layers.Transformer(3, block, scan=scan, output_layer=2)
    params = nn.meta.unbox(deep.init(jax.random.PRNGKey(1), x))["params"]
    if scan:
      first = {"blocks": jax.tree.map(lambda p: p[:2], params["blocks"]), "final_norm": params["final_norm"]}
    else:
      first = {k: v for k, v in params.items() if k != "block_2"}
    shallow = layers.Transformer(2, block, scan=scan)
    np.testing.assert_allclose(deep.apply({"params": params}, x), shallow.apply({"params": first}, x), atol=1e-5)
  with pytest.raises(ValueError, match="output_layer: 4 is not in 0..3"):
    layers.Transformer(3, block, output_layer=4).init(jax.random.PRNGKey(1), x)


# S3A: pseudo-labels by cluster and vote, and self-training against them with an EMA teacher.

def test_cluster_vote_gives_each_cluster_its_majority():
  from vlmjax import pseudo_label
  assignment = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  predictions = np.array([5, 5, 3, 1, 2, 7, 7, 4, 4])
  np.testing.assert_array_equal(pseudo_label.cluster_vote(assignment, predictions, 4),
                                [5, 5, 5, 1, 1, 4, 4, 4, 4])  # ties: the smaller index


def test_vocabulary_loss_matches_numpy():
  from vlmjax.objectives.self_training import vocabulary_loss
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  images, names = unit(rng.normal(size=(5, 8))), unit(rng.normal(size=(7, 8)))
  labels = np.array([3, -1, 0, 6, 3])
  logits = images @ names.T / 0.05
  log_probs = logits - logits.max(1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
  want = -np.mean([log_probs[i, labels[i]] for i in range(5) if labels[i] >= 0])
  assert float(vocabulary_loss(np.float32(images), np.float32(names), labels, 0.05)) == pytest.approx(want, rel=1e-5)
  # d/du_i = (softmax_i − onehot(y_i)) W / (τ · labelled count); unlabelled rows get none.
  import jax
  probs = np.exp(log_probs)
  onehot = np.eye(7)[np.maximum(labels, 0)]
  want_grad = ((probs - onehot) @ names) / 0.05 / 4 * (labels >= 0)[:, None]
  got_grad = jax.grad(vocabulary_loss)(np.float32(images), np.float32(names), labels, 0.05)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_pseudo_labels(tiny_run):
  from vlmjax import pseudo_label
  return pseudo_label.pseudo_labels(tiny_run, "shapes_broad", clusters=5)


def test_pseudo_labels_vote_over_the_vocabulary(tiny_pseudo_labels, tiny_source, tiny_data_dir, tmp_path):
  """Every train record gets one vocabulary index, its cluster's majority of the images' own nearest
  names; the file reads back as `data.pseudo_label_file` into the records' `pseudo_label`."""
  labels, summary = tiny_pseudo_labels
  assert summary["vocabulary"] == 110 and sorted(labels) == list(range(len(tiny_source)))
  assert summary["names_used"] <= 5 and all(0 <= v < 110 for v in labels.values())
  path = tmp_path / "labels.tsv"
  recaption.write_captions(str(path), labels, "pseudo-labels")
  source = mixture.train_source(tiny_config(tiny_data_dir, **{"data.pseudo_label_file": str(path)}).data, 0)
  assert all(source[i]["pseudo_label"] == labels[i] for i in range(5))
  path.write_text("0\t-3\n")
  with pytest.raises(recaption.CaptionFileError, match="line 1: '-3' is not a class index"):
    recaption.read_labels(str(path), 10)


def test_teacher_is_the_ema_params_forward(tiny_data_dir):
  """An objective with `teacher_keys` reads the model's outputs under the state's `ema` params."""
  import jax
  import jax.numpy as jnp
  from conftest import single_device_mesh
  from vlmjax import experiment, sharding, trainer
  from vlmjax.config import ConfigError, validate

  class Probe:
    teacher_keys = ("image_embeds",)

    def __call__(self, outputs, batch, step=None):
      return jnp.mean(outputs["image_embeds"] ** 2), {"teacher": jnp.sum(batch["teacher_image_embeds"] * weights)}

  config = tiny_config(tiny_data_dir, **{"optimizer.ema_decay": 0.5})
  built = experiment.build(config, 64, mesh=single_device_mesh(), validate=False)
  batch = built.synthetic_batch(64)
  weights = jnp.asarray(np.random.default_rng(0).normal(size=(16, 32)), jnp.float32)
  state, shardings = built.init_state()
  state["ema"] = jax.tree.map(lambda p: p * 0.9, state["params"])
  step = trainer.make_train_step(built.model, {"probe": (1.0, Probe())}, built.tx, built.schedule, built.mesh,
                                 shardings, ema_decay=0.5)
  with built.use_mesh():
    _, metrics = step(jax.tree.map(jnp.copy, state), sharding.global_batch(batch, built.mesh))
    teacher = built.model.apply({"params": state["ema"]}, images=batch["image"])["image_embeds"]
  np.testing.assert_allclose(metrics["probe/teacher"], np.sum(np.asarray(teacher) * np.asarray(weights)), rtol=1e-4)
  with pytest.raises(ConfigError, match="objectives.s3a learns from an EMA teacher: set optimizer.ema_decay"):
    validate(tiny_config(tiny_data_dir, objectives=dict(s3a=dict(weight=1.0))), 1, 1)


S3A_TOTAL, S3A_STOP = 3, 1


def test_s3a_resumed_run_equals_uninterrupted_exactly(tiny_run, tiny_pseudo_labels, tiny_data_dir, tmp_path):
  """The EMA teacher lives in the train state: SIGTERM + resume gives the uninterrupted run's losses."""
  from conftest import sigterm_after_step
  from vlmjax.run import read_metrics
  labels, _ = tiny_pseudo_labels
  path = str(tmp_path / "labels.tsv")
  recaption.write_captions(path, labels)
  config = tiny_config(tiny_data_dir, total_steps=S3A_TOTAL, mesh=dict(data=1, fsdp=-1, tensor=1),
                       objectives=dict(s3a=dict(weight=1.0, workdir=tiny_run, temperature=0.05)),
                       **{"data.pseudo_label_file": path, "optimizer.ema_decay": 0.5,
                          "optimizer.frozen": "^(text|text_proj)", "checkpoint.every_steps": 100,
                          "model.image.depth": 2, "model.text.depth": 2,
                          "init": dict(workdir=tiny_run, params=".*")})
  workdir_a, workdir_b = str(tmp_path / "a"), str(tmp_path / "b")
  train(config, workdir_a)
  with sigterm_after_step(S3A_STOP):
    train(config, workdir_b)
  train(config, workdir_b)
  losses = lambda w: {m["step"]: (m["loss"], m["s3a/individual"]) for m in read_metrics(w) if "loss" in m}
  a, b = losses(workdir_a), losses(workdir_b)
  assert sorted(a) == list(range(1, S3A_TOTAL + 1)) and b == a


def test_tool_errors_name_the_flag(tiny_run):
  from vlmjax import pseudo_label
  with pytest.raises(ValueError, match="--num_examples 2 must be at least 3"):
    select_layer.select(tiny_run, "validation", 2)
  with pytest.raises(ValueError, match="--clusters 1000000 must be in"):
    pseudo_label.pseudo_labels(tiny_run, "shapes_broad", clusters=1_000_000)
  with pytest.raises(ValueError, match="unknown set 'nope'"):
    pseudo_label.pseudo_labels(tiny_run, "nope")
