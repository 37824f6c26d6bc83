"""`python -m vlmjax.predict` refuses every bad flag in one line naming it, exit status 2, no
traceback, and writes nothing: a table of command lines against one bundle."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO, tiny_config
from test_export_predict import CLIP_TOWERS
from test_output_safety import check_refused, run_clis, user_folder
from vlmjax import experiment as experiment_lib, export
from vlmjax.run import one_device_mesh


@pytest.fixture(scope="module")
def setup(tiny_data_dir, tiny_tokenizer, tmp_path_factory):
  """A bundle of an untrained CLIP model (the errors do not depend on its weights), images, a
  folder of the user's files, a training workdir's shape and the folder outputs go to."""
  root = tmp_path_factory.mktemp("predict_errors")
  config = tiny_config(tiny_data_dir, mesh=dict(data=1, fsdp=-1, tensor=1), **CLIP_TOWERS)
  config.evals = dict(zeroshot=dict(type="zeroshot", split="test"))
  tokenizer = str(root / "tokenizer.model")
  tiny_tokenizer.save(tokenizer)
  experiment = experiment_lib.build(config, tiny_tokenizer.vocab_size, mesh=one_device_mesh(), objectives=False,
                                    validate=False)
  params = experiment.init_state()[0]["params"]
  info = {"step": 0, "dtype": "float32", "vocab_size": tiny_tokenizer.vocab_size, "source": "init"}
  bundle = export.write_bundle(str(root / "bundle"), config, params, tokenizer, info)
  images = root / "images"
  images.mkdir()
  for name, colour in (("red.png", "red"), ("blue.png", "blue")):
    Image.new("RGB", (32, 32), colour).save(images / name)
  (root / "empty").mkdir()
  (root / "classes_empty.txt").write_text("\n \n")
  workdir = root / "workdir"  # what a training run leaves: predict must point at its bundle instead
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "config.json").write_text("{}")
  (root / "out").mkdir()
  return dict(root=str(root), bundle=bundle, images=str(images), image=str(images / "red.png"),
              user=user_folder(root / "user"), out=str(root / "out"), workdir=str(workdir))


# (command line after --bundle BUNDLE, what the error line says); {name} are the fixture's paths.
CASES = [
    ("classify {image} --top_k 0", "--top_k must be at least 1 (got 0)"),
    ("retrieve {image} --query circle --top_k -3", "--top_k must be at least 1 (got -3)"),
    ("caption {image} --temperature 0.7 --top_k -1", "--top_k must be at least 0 (got -1)"),
    ("caption {image} --top_k 3", "--top_k applies to caption only when sampling"),
    ("caption {image} --max_new_tokens 0", "--max_new_tokens must be at least 1 (got 0)"),
    ("caption {image} --temperature -1", "--temperature must be at least 0 (got -1.0)"),
    ("classify {image} --top_k abc", "--top_k"),
    ("classify {image} --batch_size 0", "--batch_size must be at least 1 (got 0)"),
    ("embed {image} --out {out}/e.npy --batch_size -4", "--batch_size must be at least 1 (got -4)"),
    ("classify {image} --devices -1", "--devices must be at least 0 (got -1)"),
    ("classify {image} --devices 9", "--devices 9 but this process has 8"),
    ("classify {image} --prompt {{}}{{}}", "--prompt '{{}}{{}}' must hold '{{}}' exactly once"),
    ("classify {image} --prompt photo", "--prompt 'photo' must hold '{{}}' exactly once"),
    ("classify {image} --prompt a_{{name}}", "--prompt 'a_{{name}}' must hold"),
    ("classify {image} --prompt a_{{", "--prompt 'a_{{' must hold"),
    ("classify {image} --classes=", "--classes is empty"),
    ("classify {image} --classes red,blue,red", "class 'red' is named twice"),
    ("classify {image} --classes red,,blue", "--classes holds an empty class name"),
    ("classify {image} --classes_file {root}/classes_empty.txt", "names no classes"),
    ("classify {image} --classes_file {root}/missing.txt", "--classes_file '{root}/missing.txt' does not exist"),
    ("classify {image} --json {user}", "--json '{user}' is a folder"),
    ("classify {image} --json {out}/", "--json '{out}/' is a folder"),
    ("classify {image} --json {bundle}/results.json", "is inside the bundle"),
    ("classify {image} --json=", "--json needs a file name"),
    ("embed {image} --out {out}/", "--out '{out}/' is a folder"),
    ("embed {image} --out {user}", "--out '{user}' is a folder"),
    ("embed {image} --out {out}/emb", "--out '{out}/emb' must end in .npy"),
    ("embed {image} --out {bundle}/emb.npy", "is inside the bundle"),
    ("embed {image}", "embed needs --out FILE.npy"),
    ("embed {image} --text hello --out {out}/e.npy", "embed takes image files/folders or --text, not both"),
    ("retrieve {image} --query circle --grid {out}/grid.jpg", "--grid '{out}/grid.jpg' must end in .png"),
    ("retrieve {image} --query circle --grid {image}", "is one of the input images"),
    ("retrieve {image} --query circle --grid {out}/g.png --json {out}/g.png", "--json and --grid name the same file"),
    ("retrieve {image}", "retrieve needs --query"),
    ("retrieve {image} --query=", "--query holds an empty text"),
    ("classify {image} --out {out}/e.npy", "--out is for embed, not classify"),
    ("embed {image} --out {out}/e.npy --json {out}/r.json", "--json is for classify / retrieve / caption, not embed"),
    ("classify {image} --query circle", "--query is for retrieve, not classify"),
    ("caption {image}", "holds a 'dual_encoder' model; caption needs a vlm"),
    ("frobnicate {image}", "unknown command 'frobnicate'"),
    ("", "give a command"),
    ("classify {root}/missing.png", "no such file or folder '{root}/missing.png'"),
    ("classify {root}/empty", "no image files"),
]
BUNDLE_CASES = [  # (--bundle, the rest, what the error line says)
    ("{workdir}", "classify {image}", "--bundle '{workdir}' is a training workdir, not a bundle"),
    ("{user}", "classify {image}", "--bundle '{user}' is not a bundle (it has no bundle.json)"),
    ("{root}/missing", "classify {image}", "--bundle '{root}/missing' does not exist"),
]


def test_bad_flags_are_refused_in_one_line_and_write_nothing(setup):
  cases = [("{bundle}", line, message) for line, message in CASES] + BUNDLE_CASES
  argvs = [["--bundle", bundle.format(**setup), *line.format(**setup).split()] for bundle, line, _ in cases]
  # A valid command line last: the same harness runs predict to completion.
  good = ["--bundle", setup["bundle"], "classify", setup["images"], "--classes", "red square,blue circle",
          "--top_k", "1", "--json", os.path.join(setup["out"], "r.json")]
  watch = [setup["bundle"], setup["images"], setup["user"], setup["out"], setup["workdir"]]
  before, results = run_clis([("predict", argv) for argv in argvs + [good]], watch=watch)
  for (_, _, message), argv, result in zip(cases, argvs, results):
    check_refused(result, "predict", message.format(**setup))
    assert result.files == before, (argv, set(result.files.items()) ^ set(before.items()))
  assert results[-1].rc == 0, results[-1].stderr[-2000:]
  assert sorted(os.listdir(setup["out"])) == ["r.json"]
  with open(os.path.join(setup["out"], "r.json")) as f:
    written = json.load(f)
  assert [os.path.basename(r["image"]) for r in written] == ["blue.png", "red.png"]
  assert all(len(r["top"]) == 1 for r in written)


def test_the_harness_matches_a_fresh_interpreter(setup):
  """The table runs in forked children of one interpreter; `python -m` gives the same answer."""
  argv = ["--bundle", setup["bundle"], "classify", setup["image"], "--prompt", "{}{}"]
  forked = run_clis([("predict", argv)])[1][0]
  fresh = subprocess.run([sys.executable, "-m", "vlmjax.predict", *argv], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=600)
  last_line = lambda stderr: stderr.strip().splitlines()[-1]
  assert (fresh.returncode, last_line(fresh.stderr)) == (forked.rc, last_line(forked.stderr))
