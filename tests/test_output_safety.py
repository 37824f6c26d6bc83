"""The safety contract of the commands that write outputs (export, evaluate, predict): a refused
invocation exits non-zero with one line on stderr and no traceback, and leaves every file of the
workdir, of the bundle and of any folder given as an output byte-identical; a destructive option
replaces only the command's own previous output."""
import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import types

import pytest

from conftest import REPO, tiny_config
from test_export_predict import CLIP_TOWERS
from vlmjax import evaluate, export
from vlmjax.run import Bundle, RunDir
from vlmjax.workdir import LOCK

# The command lines (of any program, train included) run in one helper process that imports what the
# programs import once, then forks a child per command line that runs the program's __main__ as
# `python -m` does (the other programs' flags removed first): a command line then costs its own work,
# not the ~5 s of imports each fresh interpreter pays. The parent initialises no JAX backend, so each
# child starts one of its own as a fresh process would. After each command the helper records the
# sha256 of every file under the watched folders.
DRIVER = r"""
import hashlib, json, os, runpy, signal, sys, traceback
import jax, vlmjax.export, vlmjax.evaluate, vlmjax.predict
from absl import flags
import vlmjax.experiment, vlmjax.data.pipeline, vlmjax.data.sources, vlmjax.init_from, vlmjax.preemption
PROGRAMS = ("export", "evaluate", "predict", "train")
for program in PROGRAMS:
  sys.modules.pop(f"vlmjax.{program}", None)  # runpy runs it fresh as __main__, as -m does

def snapshot(folders):
  files = {}
  for folder in folders:
    for root, dirs, names in os.walk(folder):
      for name in dirs:
        files[os.path.join(root, name)] = "folder"
      for name in names:
        path = os.path.join(root, name)
        with open(path, "rb") as f:
          files[path] = hashlib.sha256(f.read()).hexdigest()
  return files

def run(program, args, stdout, stderr, timeout):
  sys.stdout.flush(); sys.stderr.flush()
  pid = os.fork()
  if pid:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
  code = 1
  try:
    signal.alarm(timeout)
    os.dup2(os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
    os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    sys.argv = [f"vlmjax.{program}", *args]
    for module, defined in flags.FLAGS.flags_by_module_dict().items():  # the other programs' flags
      if module.startswith("vlmjax."):
        for flag in defined:
          if flag.name in flags.FLAGS:
            delattr(flags.FLAGS, flag.name)
    try:
      runpy.run_module(f"vlmjax.{program}", run_name="__main__", alter_sys=True)
      code = 0
    except SystemExit as e:  # what the interpreter does with it
      if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
      code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    except BaseException:
      traceback.print_exc()
  finally:
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(code)

spec = json.load(open(sys.argv[1]))
results = {"before": snapshot(spec["watch"]), "runs": []}
for i, (program, args) in enumerate(spec["cases"]):
  out, err = os.path.join(spec["logs"], f"{i}.out"), os.path.join(spec["logs"], f"{i}.err")
  rc = run(program, args, out, err, spec["timeout"])
  results["runs"].append({"rc": rc, "stdout": open(out, errors="replace").read(),
                          "stderr": open(err, errors="replace").read(), "files": snapshot(spec["watch"])})
json.dump(results, open(spec["results"], "w"))
"""


def run_clis(cases, watch=(), timeout=300):
  """Runs each (program, [args]) as `python -m vlmjax.<program> args...` would, in order ->
  (the files under `watch` before: {path: sha256}, [{'rc', 'stdout', 'stderr', 'files'} per case])."""
  with tempfile.TemporaryDirectory() as logs:
    spec = {"cases": [(program, list(args)) for program, args in cases], "watch": [str(w) for w in watch],
            "logs": logs, "results": os.path.join(logs, "results.json"), "timeout": timeout}
    with open(os.path.join(logs, "spec.json"), "w") as f:
      json.dump(spec, f)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", DRIVER, os.path.join(logs, "spec.json")], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout * (len(cases) + 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(spec["results"]) as f:
      results = json.load(f)
  return results["before"], [types.SimpleNamespace(**r) for r in results["runs"]]


def tiny_run(data_dir: str, root) -> types.SimpleNamespace:
  """A tiny CLIP run (checkpoints at steps 1 and 2, a zero-shot evaluator) and its bundle; CLIP's
  towers, so that it exports to every dual-encoder format."""
  from vlmjax.train import train
  config = tiny_config(data_dir, total_steps=2, mesh=dict(data=1, fsdp=-1, tensor=1),
                       checkpoint=dict(every_steps=1, keep=3, async_save=False), **CLIP_TOWERS)
  config.evals = dict(zeroshot=dict(type="zeroshot", split="test", num_examples=32))
  workdir = os.path.join(str(root), "run")
  train(config, workdir)
  return types.SimpleNamespace(workdir=workdir, bundle=export.export(workdir, os.path.join(str(root), "bundle")))


def user_folder(path) -> str:
  """A folder of someone's own files, as a careless --out might name."""
  os.makedirs(os.path.join(path, "notes"))
  with open(os.path.join(path, "thesis.tex"), "w") as f:
    f.write("\\section{Results}\n")
  with open(os.path.join(path, "notes", "data.bin"), "wb") as f:
    f.write(os.urandom(256))
  return str(path)


def check_refused(result, program: str, message: str, status: int = 2):
  """The contract of a refused command: exit `status`, the last line of stderr the one-line error."""
  lines = result.stderr.strip().splitlines()
  assert result.rc == status, (result.rc, result.stderr[-2000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert lines and lines[-1].startswith(f"vlmjax.{program}: error: "), result.stderr[-2000:]
  assert message in lines[-1], lines[-1]


def sha256_tree(folder) -> dict:
  files = {}
  for root, _, names in os.walk(folder):
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        files[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
  return files


@pytest.fixture(scope="module")
def tiny(tiny_data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("safety")
  made = tiny_run(tiny_data_dir, root)
  made.root = root
  made.hf = export.export_to("hf_clip", str(root / "hf"), bundle=made.bundle)
  made.oc = export.export_to("open_clip", str(root / "oc"), bundle=made.bundle)
  made.user = user_folder(root / "user")
  return made


def test_refused_invocations_change_nothing(tiny, tmp_path):
  """Each bad invocation: non-zero exit, one line on stderr naming the culprit, no traceback, and
  the workdir, the bundle, the exports and the user's folder byte-identical (nothing created)."""
  w, b, hf, oc, user = tiny.workdir, tiny.bundle, tiny.hf, tiny.oc, tiny.user
  new = str(tmp_path / "new")  # a fresh --out: must not be created by a refused command
  busy = str(tmp_path / "busy")  # a copy of the run that a live training process holds
  shutil.copytree(w, busy)
  with open(os.path.join(busy, LOCK), "w") as f:
    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "command": "vlmjax.train", "since": "now"}, f)
  blocked = str(tmp_path / "blocked")  # a copy whose eval_results.json cannot be written (a folder there)
  shutil.copytree(w, blocked)
  os.remove(os.path.join(blocked, RunDir.EVAL_RESULTS))
  os.mkdir(os.path.join(blocked, RunDir.EVAL_RESULTS))
  a_file = os.path.join(user, "thesis.tex")
  images = tmp_path / "images"
  images.mkdir()
  image = str(images / "red.png")
  from PIL import Image
  Image.new("RGB", (32, 32), "red").save(image)
  cases = [  # (program, args, what the error line says, exit status)
      # export: a bundle's --out
      ("export", ["--workdir", w, "--out", w], f"--out '{w}' is the source (--workdir)", 2),
      ("export", ["--workdir", w, "--out", w, "--force"], "is the source (--workdir)", 2),
      ("export", ["--workdir", w, "--out", user, "--force"], f"--out '{user}' is not empty and does not hold a "
       "bundle", 2),
      ("export", ["--workdir", w, "--out", b], f"--out '{b}' already holds a bundle; pass --force", 2),
      ("export", ["--workdir", w, "--out", busy, "--force"], f"--out '{busy}' is a training workdir", 2),
      ("export", ["--workdir", w, "--out", os.path.join(w, "checkpoints", "b")], "a training run's own output", 2),
      ("export", ["--workdir", w, "--out", os.path.join(b, "b")], f"is inside the bundle '{b}'", 2),
      ("export", ["--workdir", w, "--out", os.path.join(a_file, "b")], f"'{a_file}' is a file, not a folder", 2),
      ("export", ["--workdir", w, "--out", hf, "--force"], "does not hold a bundle", 2),
      ("export", ["--workdir", w, "--out", new, "--step", "999"], "no checkpoint of step 999", 2),
      ("export", ["--workdir", str(tmp_path / "missing"), "--out", new], "--workdir", 2),
      ("export", ["--workdir", b, "--out", new], f"--workdir '{b}' is an inference bundle", 2),
      ("export", ["--workdir", w, "--out", new, "--tokenizer", a_file], "--tokenizer does not apply", 2),
      ("export", ["--workdir", w], "--out", 2),
      ("export", ["--workdir", w, "--out", new, "--dtype", "float16"], "dtype", 2),
      # export --to: another format's folder
      ("export", ["--workdir", w, "--to", "hf_clip", "--out", w], f"--out '{w}' is the source (--workdir)", 2),
      ("export", ["--bundle", b, "--to", "hf_clip", "--out", w, "--force"], f"--out '{w}' is a training workdir",
       2),
      ("export", ["--workdir", w, "--to", "hf_clip", "--out", b, "--force"], f"--out '{b}' is an inference "
       "bundle", 2),
      ("export", ["--workdir", w, "--to", "open_clip", "--out", user, "--force"], "does not hold an export to "
       "open_clip", 2),
      ("export", ["--workdir", w, "--to", "open_clip", "--out", hf, "--force"], "does not hold an export to "
       "open_clip", 2),
      ("export", ["--workdir", w, "--to", "hf_llama", "--out", hf, "--force"], "does not hold an export to "
       "hf_llama", 2),
      ("export", ["--workdir", w, "--to", "hf_clip", "--out", hf], f"--out '{hf}' already holds an export to "
       "hf_clip; pass --force", 2),
      ("export", ["--bundle", w, "--to", "open_clip", "--out", new], "bundle.json' is missing", 2),
      # export --from: a bundle's --out again
      ("export", ["--from", "open_clip", "--src", oc, "--out", oc, "--force"], "is the source (--src)", 2),
      ("export", ["--from", "open_clip", "--src", oc, "--out", user], "does not hold a bundle", 2),
      ("export", ["--from", "open_clip", "--src", oc, "--out", b], "already holds a bundle", 2),
      ("export", ["--from", "open_clip", "--out", new], "--from needs --src", 2),
      # evaluate
      ("evaluate", ["--workdir", str(tmp_path / "missing")], "does not exist", 2),
      ("evaluate", ["--workdir", w, "--step", "999"], "no checkpoint of step 999", 2),
      ("evaluate", ["--workdir", b], f"--workdir '{b}' is an inference bundle", 2),
      ("evaluate", ["--workdir", user], f"--workdir '{user}' holds no checkpoints/", 2),
      ("evaluate", ["--workdir", busy], f"workdir: '{busy}' is in use by vlmjax.train (pid {os.getpid()}", 1),
      ("evaluate", ["--workdir", w, "--step", "x"], "--step", 2),
      ("evaluate", ["--workdir", w, "extra"], "unexpected arguments: extra", 2),
      ("evaluate", ["--compare", f"{w},{tmp_path / 'missing'}"], "eval_results.json' does not exist", 2),
      ("evaluate", ["--compare", w, "--step", "1"], "without --workdir and --step", 2),
      ("evaluate", ["--workdir", blocked], f"cannot write the results to '{blocked}/eval_results.json'", 2),
      # predict (tests/test_predict_errors.py has the full table)
      ("predict", ["--bundle", w, "classify", image], f"--bundle '{w}' is a training workdir", 2),
      ("predict", ["--bundle", str(tmp_path / "missing"), "classify", image], "--bundle", 2),
      ("predict", ["--bundle", b, "embed", image, "--out", user + "/"], "is a folder", 2),
      ("predict", ["--bundle", b, "classify", image, "--json", user], f"--json '{user}' is a folder", 2),
      ("predict", ["--bundle", b, "classify", image, "--json", os.path.join(b, "config.json")], "inside the bundle",
       2),
      ("predict", ["--bundle", b, "retrieve", image, "--query", "a red circle", "--grid", image],
       "is one of the input images", 2),
  ]
  before, results = run_clis([(program, args) for program, args, _, _ in cases],
                             watch=[w, b, hf, oc, user, busy, blocked, str(images)])
  for (program, args, message, status), result in zip(cases, results):
    check_refused(result, program, message, status)
    assert result.files == before, (args, set(result.files.items()) ^ set(before.items()))
  assert sorted(os.listdir(tmp_path)) == ["blocked", "busy", "images"]  # no --out, no staging folder
  assert sorted(os.listdir(tiny.root)) == ["bundle", "hf", "oc", "run", "user"]
  # The results a failed write would have stored are on stdout, before the error.
  unwritten = results[[args for _, args, _, _ in cases].index(["--workdir", blocked])].stdout
  assert "| zeroshot/top1" in unwritten and "| step" in unwritten


def test_export_force_replaces_only_a_previous_bundle(tiny, tmp_path):
  out = str(tmp_path / "b")
  os.mkdir(out)  # an empty folder is a fine --out
  export.export(tiny.workdir, out, step=1)
  assert json.load(open(os.path.join(out, Bundle.INFO)))["step"] == 1
  with pytest.raises(ValueError, match="already holds a bundle; pass --force"):
    export.export(tiny.workdir, out, step=2)
  export.export(tiny.workdir, out, step=2, fmt="safetensors", force=True)
  assert sorted(os.listdir(out)) == ["bundle.json", "config.json", "params.safetensors", "tokenizer.model"]
  assert json.load(open(os.path.join(out, Bundle.INFO)))["step"] == 2
  assert sorted(os.listdir(tmp_path)) == ["b"]  # the staging and the previous bundle are gone
  # A bundle folder holding someone's file is not replaced, even with --force.
  with open(os.path.join(out, "README"), "w") as f:
    f.write("mine")
  before = sha256_tree(out)
  with pytest.raises(ValueError, match="holds a bundle and other files \\('README'\\)"):
    export.export(tiny.workdir, out, force=True)
  assert sha256_tree(out) == before
  # A new folder inside the run (not one of its outputs) is allowed, as `make demo` exports.
  inside = export.export(tiny.workdir, os.path.join(tiny.workdir, "bundle_for_test"))
  try:
    assert Bundle.holds_one(inside)
  finally:
    shutil.rmtree(inside)


def test_export_to_force_replaces_only_a_previous_export_of_that_format(tiny, tmp_path):
  out = str(tmp_path / "hf")
  export.export_to("hf_clip", out, bundle=tiny.bundle)
  files = sorted(os.listdir(out))
  assert files == sorted(export.format_files("hf_clip"))
  with pytest.raises(ValueError, match="already holds an export to hf_clip; pass --force"):
    export.export_to("hf_clip", out, workdir=tiny.workdir)
  export.export_to("hf_clip", out, workdir=tiny.workdir, step=1, force=True)
  assert sorted(os.listdir(out)) == files and sorted(os.listdir(tmp_path)) == ["hf"]
  with open(os.path.join(out, "notes.txt"), "w") as f:
    f.write("mine")
  with pytest.raises(ValueError, match="holds an export to hf_clip and other files \\('notes.txt'\\)"):
    export.export_to("hf_clip", out, workdir=tiny.workdir, force=True)


def test_export_that_cannot_write_leaves_nothing(tiny, tmp_path, monkeypatch):
  """A read-only or full disk: an OSError naming --out, and neither --out nor a staging folder."""
  def read_only(path, *args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system", path)
  monkeypatch.setattr(export, "open", read_only, raising=False)  # the bundle's config.json
  out = str(tmp_path / "b")
  with pytest.raises(OSError, match=f"export: cannot write --out '{out}': .*Read-only file system"):
    export.export(tiny.workdir, out)
  assert os.listdir(tmp_path) == []


def test_evaluate_step_writes_its_own_file_and_records_steps(tiny, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(tiny.workdir, workdir)
  final = os.path.join(workdir, RunDir.EVAL_RESULTS)
  trained = open(final).read()
  shown = []
  results = evaluate.evaluate_workdir(workdir, step=1, show=shown.append)
  assert results["step"] == 1 and shown == [results] and set(results) > {"step", "zeroshot/top1"}
  assert json.load(open(os.path.join(workdir, "eval_results", "step_1.json"))) == results
  assert open(final).read() == trained  # the final results are not replaced by step 1's
  results = evaluate.evaluate_workdir(workdir)
  assert results["step"] == 2 and json.load(open(final)) == results
  assert not os.path.exists(os.path.join(workdir, LOCK))
  lines = evaluate.compare_table([workdir, tiny.workdir]).splitlines()
  assert lines[0].startswith("| run | step | zeroshot/top1 |") and lines[2].startswith("| copy | 2 | ")
  assert "| step" in evaluate.format_table(results)


def test_evaluate_results_that_cannot_be_written(tmp_path, monkeypatch):
  """A full disk: an OSError naming the file, the previous results kept, no partial file left."""
  workdir = str(tmp_path)
  path = evaluate.write_results(workdir, 3, {"zeroshot/top1": 0.5})
  assert json.load(open(path)) == {"step": 3, "zeroshot/top1": 0.5}

  def full_disk(name, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", name)
  monkeypatch.setattr(evaluate, "open", full_disk, raising=False)
  with pytest.raises(OSError, match=f"cannot write the results to '{path}': .*No space left on device"):
    evaluate.write_results(workdir, 4, {"zeroshot/top1": 0.75})
  monkeypatch.undo()
  assert json.load(open(path)) == {"step": 3, "zeroshot/top1": 0.5}
  assert os.listdir(tmp_path) == [RunDir.EVAL_RESULTS]
  open(os.path.join(workdir, evaluate.STEP_RESULTS), "w").close()  # a file where the folder goes
  with pytest.raises(OSError, match="cannot write the results to '.*eval_results/step_5.json'"):
    evaluate.write_results(workdir, 5, {}, final=False)
