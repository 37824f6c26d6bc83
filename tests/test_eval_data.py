"""Evaluators on data of their own: a labelled CSV, a TFDS set with a ClassLabel, several captions
per image, and the suite command on a trained model. Numbers are checked against hand or numpy
computations; bad data is one line naming the file, row or key, before any model is built."""
import io
import json
import os
import subprocess
import sys
import types

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from conftest import REPO, tiny_config
from vlmjax import config as config_lib, evaluate, export
from vlmjax.data import pipeline, shapes, sources
from vlmjax.evals import linear_probe
from vlmjax.evals.common import EvalContext
from vlmjax.evals.retrieval import Retrieval, multi_caption_recall
from vlmjax.evals.zeroshot import ZeroShot, accuracies
from vlmjax.run import Bundle, RunDir
from vlmjax.train import train

# --- the numbers, by hand and against numpy -------------------------------------------------------


def test_accuracies_by_hand():
  scores = np.array([[0.9, 0.1, 0.0],   # label 0: right
                     [0.2, 0.7, 0.1],   # label 1: right
                     [0.5, 0.4, 0.1],   # label 1: class 0 first, class 1 second
                     [0.1, 0.2, 0.7]])  # label 2: right
  out = accuracies(scores, np.array([0, 1, 1, 2]), 3)
  assert out["top1"] == 0.75 and out["top5"] == 1.0
  assert out["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 1) / 3)  # class 1: 1 of 2


def reference_recall(scores, text_image, k):
  """Loops over queries, each ranking its candidates with argsort (no ties in the scores)."""
  i2t = np.mean([np.isin(np.argsort(-scores[i])[:k], np.flatnonzero(text_image == i)).any()
                 for i in range(scores.shape[0])])
  t2i = np.mean([text_image[t] in np.argsort(-scores[:, t])[:k] for t in range(scores.shape[1])])
  return i2t, t2i


def test_multi_caption_recall_matches_numpy_reference():
  rng = np.random.default_rng(0)
  text_image = np.repeat(np.arange(30), rng.integers(1, 6, 30))  # 1 to 5 captions per image
  scores = rng.standard_normal((30, len(text_image)))
  scores[text_image, np.arange(len(text_image))] += 1.5  # better than chance, not perfect
  got = multi_caption_recall(scores, text_image, ks=(1, 5, 10))
  for k in (1, 5, 10):
    i2t, t2i = reference_recall(scores, text_image, k)
    assert got["image_to_text"][k] == pytest.approx(i2t) and got["text_to_image"][k] == pytest.approx(t2i)
  assert 0 < got["image_to_text"][1] < 1


def test_multi_caption_recall_by_hand():
  # 2 images; image 0 has texts 0 and 1, image 1 has text 2.
  scores = np.array([[0.1, 0.9, 0.5],
                     [0.2, 0.6, 0.4]])
  got = multi_caption_recall(scores, np.array([0, 0, 1]), ks=(1, 2))
  # Image 0: its text 1 (0.9) is first. Image 1: text 1 (0.6) beats its text 2 (0.4): 2nd.
  assert got["image_to_text"] == {1: 0.5, 2: 1.0}
  # Text 0: image 1 (0.2) beats image 0 (0.1); text 1: image 0 first; text 2: image 0 (0.5) beats 0.4.
  assert got["text_to_image"] == {1: pytest.approx(1 / 3), 2: 1.0}


# --- labelled images in files ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def shape_files(tiny_data_dir, tmp_path_factory):
  """The tiny test split's single-object images as PNG files: a CSV labelled by class name, a JSONL
  labelled by index, a class-names file, and the records they came from."""
  root = tmp_path_factory.mktemp("shape_files")
  source = sources.make_source(tiny_config(tiny_data_dir).data, "test")
  rows = []
  for i in range(len(source)):
    record = source[i]
    if record["label"] < 0:
      continue
    name = f"img_{i:03d}.png"
    pipeline.decode_image(record["image"]).save(root / name)
    rows.append((name, shapes.CLASS_NAMES[record["label"]], int(record["label"]), record["caption"]))
  (root / "classes.txt").write_text("\n".join(shapes.CLASS_NAMES) + "\n")
  with open(root / "labels.csv", "w") as f:
    f.write("image_path,label\n" + "".join(f"{n},{c}\n" for n, c, _, _ in rows))
  with open(root / "labels.jsonl", "w") as f:
    f.write("".join(json.dumps({"image_path": n, "label": k}) + "\n" for n, _, k, _ in rows))
  return types.SimpleNamespace(root=root, rows=rows, csv=str(root / "labels.csv"), jsonl=str(root / "labels.jsonl"),
                               classes=str(root / "classes.txt"))


def data_config(**keys):
  data = config_lib.base_config().data
  for key, value in keys.items():
    data[key] = value
  return data


def test_labels_by_name_or_index_read_the_same(shape_files):
  by_name = sources.make_source(data_config(name="csv", files=dict(test=shape_files.csv), caption_key="",
                                            label_key="label", class_names_file=shape_files.classes), "test")
  by_index = sources.make_source(data_config(name="jsonl", files=dict(test=shape_files.jsonl), caption_key="",
                                             label_key="label", class_names_file=shape_files.classes), "test")
  assert by_name.labels.tolist() == by_index.labels.tolist() == [k for _, _, k, _ in shape_files.rows]
  assert by_name.class_names == tuple(shapes.CLASS_NAMES)
  assert set(by_name[0]) == {"image", "label"}  # no caption column: no caption
  # Class names from the labels themselves: the sorted names.
  alone = sources.make_source(data_config(name="csv", files=dict(test=shape_files.csv), caption_key="",
                                          label_key="label"), "test")
  assert alone.class_names == tuple(sorted({c for _, c, _, _ in shape_files.rows}))


@pytest.mark.parametrize("case", ["count", "unknown_name", "no_column", "not_prepared", "unknown_class_set"])
def test_bad_labelled_data_is_one_line_before_any_model(case, shape_files, tmp_path, monkeypatch):
  data = dict(name="csv", files=dict(test=shape_files.csv), caption_key="", label_key="label",
              class_names_file=shape_files.classes)
  if case == "count":  # integer labels beyond a short class-names file
    (tmp_path / "three.txt").write_text("red circle\nblue circle\ngreen circle\n")
    data.update(name="jsonl", files=dict(test=shape_files.jsonl), class_names_file=str(tmp_path / "three.txt"))
    expected = r"label \d+ on line \d+ of '.*labels.jsonl' is not a class index \(the class names are 3"
  elif case == "unknown_name":
    bad = tmp_path / "bad.csv"
    lines = open(shape_files.csv).read().splitlines()
    lines[3] = lines[3].split(",")[0] + ",purple hexagon"
    bad.write_text("\n".join(lines) + "\n")
    data.update(files=dict(test=str(bad)), image_root=str(shape_files.root))
    expected = r"label 'purple hexagon' on line 4 of '.*bad.csv' is not one of the 36 class names"
  elif case == "no_column":
    data.update(label_key="class")
    expected = r"'.*labels.csv' has no column 'class' \(data.label_key"
  elif case == "not_prepared":
    data = dict(name="tfds", tfds_name="cifar10", data_dir=str(tmp_path / "empty_tfds"),
                fields=dict(image="image", label="label"))
    expected = r"TFDS dataset 'cifar10' is not prepared in .*empty_tfds; prepare it with: tfds build cifar10 " \
               r"--data_dir .*empty_tfds --file_format array_record"
  else:
    data.pop("class_names_file")
    data["class_names"] = "imagenet21k"
    expected = r"'imagenet21k'"
  evals = ml_collections.ConfigDict({"mine": dict(type="zeroshot", split="test", data=data)})
  planned = evaluate.plan_evals(evals, tiny_config("").data)
  with pytest.raises((ValueError, OSError), match=expected) as error:
    evaluate.check_evals(planned)
  assert "\n" not in str(error.value) and str(error.value).startswith("evals.mine: ")


def test_suite_cli_reports_bad_data_in_one_line(shape_files, tmp_path):
  """The command line: exit 2, one line on stderr naming the file, nothing written."""
  suite = tmp_path / "bad_suite.py"
  suite.write_text(
      "import ml_collections\n"
      "def get_config(arg=None):\n"
      f"  return ml_collections.ConfigDict(dict(mine=dict(type='zeroshot', data=dict(name='csv', "
      f"files=dict(test={shape_files.csv!r}), caption_key='', label_key='nope'))))\n")
  bundle = tmp_path / "bundle"
  bundle.mkdir()
  (bundle / Bundle.INFO).write_text("{}")
  (bundle / Bundle.CONFIG).write_text(tiny_config("").to_json())
  out = subprocess.run([sys.executable, "-m", "vlmjax.evaluate", "--bundle", str(bundle), "--suite", str(suite),
                        "--out", str(tmp_path / "results")], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 2, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "has no column 'nope'" in lines[0] and "evals.mine" in lines[0], out.stderr
  assert not (tmp_path / "results").exists()


# --- a TFDS classification set with a ClassLabel -------------------------------------------------

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


class TinyColours(tfds.core.GeneratorBasedBuilder):
  """Solid-colour 16×16 images labelled by colour; image 5 is drawn green but labelled blue."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(16, 16, 3), encoding_format="png"),
        "label": tfds.features.ClassLabel(names=list(COLOURS)),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))  # COCO-style

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      drawn = list(COLOURS)[i % 3] if i != 5 else "green"
      png = io.BytesIO()  # encoded here: TFDS would need TensorFlow to encode an array
      Image.fromarray(np.full((16, 16, 3), COLOURS[drawn], np.uint8)).save(png, format="PNG")
      captions = [f"a {drawn} square", f"{drawn} again"][:1 + i % 2]
      yield i, {"image": png.getvalue(), "label": i % 3, "captions": {"text": captions}}


class ColourOracle:
  """Embeds an image by its colour and a text by the colour it names: a perfect colour model."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer

  def embed_images(self, images):
    pixels = (np.asarray(images)[:, 8, 8] + 1) * 127.5
    return np.stack([np.eye(3)[np.argmin([np.abs(p - c).sum() for c in COLOURS.values()])] for p in pixels])

  def embed_texts(self, tokens):
    return np.stack([np.eye(3)[[c in t for c in COLOURS].index(True)] for t in self.tokenizer.decode(tokens)])


def test_tfds_classlabel_set_gives_class_names_and_known_accuracy(tmp_path, tiny_tokenizer):
  TinyColours(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
  data = data_config(name="tfds", tfds_name="tiny_colours", data_dir=str(tmp_path),
                     fields=dict(image="image", label="label"))
  source = sources.make_source(data, "test")
  assert source.class_names == ("red", "green", "blue")
  ctx = EvalContext(data, tiny_config("").input, tiny_tokenizer, ColourOracle(tiny_tokenizer), 4, resize="crop")
  results = ZeroShot(name="colours", prompts=("a {} thing.",)).run(ctx)
  # 5 of 6 right; per class: red 2/2, green 2/2, blue 1/2.
  assert results["colours/top1"] == pytest.approx(5 / 6)
  assert results["colours/mean_per_class_recall"] == pytest.approx((1 + 1 + 0.5) / 3)
  assert results["colours/top5"] == 1.0 and results["colours/count"] == 6
  # Its nested caption lists: every caption of every image (1 or 2 here), for retrieval.
  with_captions = data_config(name="tfds", tfds_name="tiny_colours", data_dir=str(tmp_path),
                              fields=dict(image="image", caption="captions/text", captions="captions/text"))
  indices, groups = sources.make_source(with_captions, "test").caption_groups()
  by_key = {tuple(g) for g in groups}
  assert len(indices) == 6 and {len(g) for g in groups} == {1, 2} and ("a green square", "green again") in by_key
  retrieval = Retrieval(name="colours").run(EvalContext(with_captions, tiny_config("").input, tiny_tokenizer,
                                                           ColourOracle(tiny_tokenizer), 4))
  assert (retrieval["colours/images"], retrieval["colours/texts"]) == (6, 9)


# --- several captions per image -------------------------------------------------------------------


def test_multi_caption_csv_retrieval_against_reference(tmp_path, tiny_tokenizer):
  """Rows naming one image are one image with several captions; each colour word embeds as that
  colour, 'large' pulls a caption towards blue. Recall equals the numpy reference."""
  images = {"r.png": "red", "g.png": "green", "b.png": "blue"}
  for name, colour in images.items():
    Image.fromarray(np.full((16, 16, 3), COLOURS[colour], np.uint8)).save(tmp_path / name)
  rows = [("r.png", "a red square"), ("g.png", "a green square"), ("r.png", "red again"),
          ("b.png", "a blue square"), ("g.png", "large green"), ("b.png", "large blue")]
  (tmp_path / "caps.csv").write_text("image_path,caption\n" + "".join(f"{i},{c}\n" for i, c in rows))
  data = data_config(name="csv", files=dict(test=str(tmp_path / "caps.csv")))
  source = sources.make_source(data, "test")
  assert source.caption_groups() == ([0, 1, 3], [["a red square", "red again"],
                                                 ["a green square", "large green"], ["a blue square", "large blue"]])

  def text_vector(text):
    v = np.eye(3)[[c in text for c in COLOURS].index(True)]
    return v + (np.array([0.0, 0.0, 1.5]) if "large" in text else 0)  # 'large green' ranks blue first

  oracle = ColourOracle(tiny_tokenizer)
  oracle.embed_texts = lambda tokens: np.stack([text_vector(t) for t in tiny_tokenizer.decode(tokens)])
  ctx = EvalContext(data, tiny_config("").input, tiny_tokenizer, oracle, 4)
  results = Retrieval(name="caps").run(ctx)
  assert (results["caps/images"], results["caps/texts"]) == (3, 6)
  texts = [c for group in source.caption_groups()[1] for c in group]
  text_image = np.array([0, 0, 1, 1, 2, 2])
  scores = np.eye(3) @ np.stack([text_vector(t) for t in texts]).T
  # Ties are broken against nobody in the reference: add a tiny, order-preserving jitter.
  for k in (1, 5, 10):
    i2t, t2i = reference_recall(scores + 1e-9 * np.arange(6)[None, ::-1], text_image, k)
    assert results[f"caps/image_to_text_R@{k}"] == pytest.approx(i2t)
    assert results[f"caps/text_to_image_R@{k}"] == pytest.approx(t2i)
  assert results["caps/text_to_image_R@1"] == pytest.approx(5 / 6)  # only 'large green' misses


# --- the suite command on a trained model ---------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("suite_run")
  config = tiny_config(tiny_data_dir, total_steps=30, mesh=dict(data=1, fsdp=-1, tensor=1))
  config.evals = dict(zeroshot=dict(type="zeroshot", split="test"))
  workdir = str(root / "run")
  results = train(config, workdir)
  return types.SimpleNamespace(workdir=workdir, results=results, bundle=export.export(workdir, str(root / "bundle")))


def write_suite(path, entries: dict):
  path.write_text("import ml_collections\n\ndef get_config(arg=None):\n"
                  f"  return ml_collections.ConfigDict({entries!r})\n")
  return str(path)


def test_suite_on_a_labelled_csv_matches_the_builtin_zeroshot(trained, shape_files, tmp_path, tiny_data_dir):
  labelled = dict(name="csv", files=dict(test=shape_files.csv), caption_key="", label_key="label",
                  class_names_file=shape_files.classes)
  suite = write_suite(tmp_path / "shapes_files.py", {
      "files_crop": dict(type="zeroshot", prompts="vlmjax_shapes", data=labelled),
      "files_squash": dict(type="zeroshot", prompts="vlmjax_shapes", data=labelled, resize="squash"),
      "builtin": dict(type="zeroshot", split="test"),
      "cifar10": dict(type="zeroshot", data=dict(name="tfds", tfds_name="cifar10", fields=dict(image="image",
                                                                                                   label="label"))),
  })
  out = tmp_path / "out"
  record = evaluate.evaluate_suite(suite, bundle=trained.bundle, out=str(out), data_dir=str(tmp_path / "no_tfds"),
                                   show=lambda table: None)
  results = record["results"]
  # The same images through a CSV: squashed exactly as the built-in evaluator reads them, the same
  # numbers; CLIP's resize + centre crop within 2 points.
  assert results["files_squash/top1"] == results["builtin/top1"] == trained.results["zeroshot/top1"]
  assert results["files_squash/count"] == results["builtin/count"] == len(shape_files.rows)
  assert abs(results["files_crop/top1"] - results["builtin/top1"]) <= 0.02
  # An unprepared set is reported with the command that prepares it; the others ran.
  assert "tfds build cifar10 --data_dir" in record["not_prepared"]["cifar10"]
  saved = json.loads((out / "shapes_files.json").read_text())
  assert saved["results"] == results and saved["step"] == 30
  table = (out / "shapes_files.md").read_text()
  assert f"| builtin | top1 | {100 * results['builtin/top1']:.2f} |" in table
  assert "| cifar10 | not prepared | `tfds build cifar10" in table
  # A file there that is not a suite's results is never replaced.
  (out / "shapes_files.json").write_text('{"mine": 1}')
  with pytest.raises(ValueError, match="is not a suite's results"):
    evaluate.evaluate_suite(suite, bundle=trained.bundle, out=str(out), show=lambda table: None)


def test_suite_on_a_workdir_writes_into_its_eval_results(trained, tmp_path):
  suite = write_suite(tmp_path / "small.py", {"zs": dict(type="zeroshot", split="test"),
                                              "probe": dict(type="linear_probe"),
                                              "shots": dict(type="fewshot", shots=(1, 2))})
  before = RunDir(trained.workdir).steps()
  record = evaluate.evaluate_suite(suite, workdir=trained.workdir, show=lambda table: None)
  results = record["results"]
  assert results["zs/top1"] == trained.results["zeroshot/top1"]
  assert 0 <= results["shots/1shot_top1"] <= 1 and results["probe/l2"] in linear_probe.L2_GRID
  # A 30-step model's features already separate the classes better than chance (36 classes).
  assert results["probe/test_top1"] > 1 / 36, results
  assert os.path.isfile(os.path.join(trained.workdir, "eval_results", "small.json"))
  assert RunDir(trained.workdir).steps() == before


def test_classify_reports_sigmoid_probabilities_for_a_siglip_model(trained, shape_files):
  from vlmjax import predict
  predictor = predict.Predictor(trained.bundle, devices=1, batch_size=16)
  images = [str(shape_files.root / name) for name, _, _, _ in shape_files.rows[:3]]
  classes = ("red circle", "blue square", "green triangle")
  softmax = predict.classify(predictor, images, classes, top_k=3)
  assert all(sum(p for _, p in r["top"]) == pytest.approx(1.0, abs=1e-5) for r in softmax)
  predictor.config.objectives = ml_collections.ConfigDict(dict(siglip=dict(weight=1.0)))
  sigmoid = predict.classify(predictor, images, classes, top_k=3)
  scale, bias = predictor.logit_scale(), float(np.asarray(predictor.params["logit_bias"]))
  _, embeds = predictor.embed_images(images)
  class_embeds = predictor.class_embeddings(classes, predictor.default_prompts())
  for result, row in zip(sigmoid, embeds @ class_embeds.T):
    assert [c for c, _ in result["top"]] == [classes[j] for j in np.argsort(-row)]  # the same ranking
    expected = {classes[j]: 1 / (1 + np.exp(-(scale * row[j] + bias))) for j in range(3)}
    assert {c: p for c, p in result["top"]} == pytest.approx(expected, rel=1e-5)


def test_training_runs_an_eval_entry_with_its_own_data(tiny_data_dir, shape_files, tmp_path, monkeypatch):
  """The config as the CLI gives it (locked), an entry reading a labelled CSV by a relative path:
  checked before the workdir is touched, run at the end, recorded with absolute paths."""
  monkeypatch.chdir(shape_files.root)
  config = tiny_config(tiny_data_dir, total_steps=2, mesh=dict(data=1, fsdp=-1, tensor=1))
  labelled = dict(name="csv", files=dict(test="labels.csv"), caption_key="", label_key="nope",
                  class_names_file="classes.txt")
  config.evals = dict(files=dict(type="zeroshot", prompts="vlmjax_shapes", data=labelled))
  config.lock()
  with pytest.raises(ValueError, match=r"evals.files: data: '.*labels.csv' has no column 'nope'"):
    train(config, str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists() or not os.listdir(tmp_path / "bad")  # at most the lock's empty folder
  with config.unlocked():
    config.evals.files.data.label_key = "label"
  results = train(config, str(tmp_path / "run"))
  assert results["files/count"] == len(shape_files.rows)
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["evals"]["files"]["data"]["files"]["test"] == shape_files.csv


def test_standard_suite_names_the_command_for_each_set_not_prepared(trained, tmp_path, monkeypatch, capsys):
  """No set prepared: each is listed with its `tfds build` command (read without any builder code,
  so a builder needing TensorFlow, as coco_captions', is no obstacle), and the suite fails."""
  monkeypatch.setattr(Bundle, "load", lambda *a, **k: pytest.fail("loaded a model"))
  with pytest.raises(FileNotFoundError, match="no set of suite 'standard' is prepared"):
    evaluate.evaluate_suite(str(REPO / "configs" / "evals" / "standard.py"), bundle=trained.bundle,
                            out=str(tmp_path / "out"), data_dir=str(tmp_path / "tfds"), show=lambda t: None)
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 7
  assert any(f"tfds build coco_captions --data_dir {tmp_path / 'tfds'} --file_format array_record" in l for l in lines)
  assert any("tfds build imagenet2012" in l and "--manual_dir" in l for l in lines)
  assert not (tmp_path / "out").exists()
