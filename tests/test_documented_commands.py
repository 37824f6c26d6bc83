"""Every command the README and the configs' docstrings show parses as written, and every documented
training command runs as a dry run (`--dry_run`: everything up to the first step, the step traced
abstractly, nothing written).

Each `python -m vlmjax.*` (or `launch/...` `-- ARGS`) line with a `--config` is parsed the way the
program parses it: the config file loaded with its argument, every `--config.key=value` override
applied by ml_collections, and the result checked against the base config's keys and value ranges.
The training commands then dry-run on this machine's 8 fake devices, on data made tiny here: the
built-in dataset's `tiny` config for the configs that read it, a few rows of JSONL for a pod's file
list. A command that needs a previous command's run (an init source) must be refused in one line
naming it.
"""
import os
import re
import shlex

from absl import flags
from ml_collections import config_flags
import pytest

from conftest import REPO

from vlmjax import config as config_lib, train

# The full built-in dataset in the repo before any test ran (a fresh clone has none: no test may build it).
DATA_WAS_THERE = (REPO / "data" / "tfds" / "vlmjax_shapes" / "default").exists()


def documented_commands() -> list[tuple[str, list[str]]]:
  """(where, argv after the program) of every documented command line that names a --config."""
  texts = {"README.md": (REPO / "README.md").read_text(encoding="utf-8")}
  for path in sorted((REPO / "configs").glob("*.py")):
    texts[f"configs/{path.name}"] = path.read_text(encoding="utf-8").split('"""')[1]
  out = []
  for where, text in texts.items():
    text = re.sub(r"\\\n\s*", " ", text)  # line continuations
    for line in text.splitlines():
      line = line.strip().strip("`")
      match = re.search(r"(python -m vlmjax\.[\w.]+|launch/\S+)(.*)", line)
      if not match or "--config" not in match.group(2):
        continue
      args = shlex.split(match.group(2).split(" #")[0].split("`")[0])
      if "--" in args:  # a launcher: the training arguments follow `--`
        args = args[args.index("--") + 1:]
      out.append((f"{where}: {match.group(0).strip()[:80]}", args))
  return out


COMMANDS = documented_commands()


def test_the_docs_show_commands():
  assert len(COMMANDS) >= 20


def parse(args):
  """The config `args` (a command's arguments) make, as the program parses them."""
  config_args = []
  for i, arg in enumerate(args):
    if arg == "--config":
      config_args += [arg, args[i + 1]]
    elif arg.startswith("--config"):
      config_args.append(arg)
  argv = ["prog", *config_args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


@pytest.mark.parametrize("where,args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(where, args, monkeypatch):
  monkeypatch.chdir(REPO)  # the commands name configs/ relative to the repo
  config_lib.check_keys_and_ranges(parse(args))


TRAIN_COMMANDS = sorted({tuple(args) for where, args in COMMANDS if "--workdir" in args and (
    "vlmjax.train" in where or "launch/" in where)})


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory):
  """A JSONL file list of a few image-caption pairs, standing in for a pod's."""
  from PIL import Image
  folder = tmp_path_factory.mktemp("pairs")
  for i, color in enumerate(("red", "green", "blue", "white")):
    Image.new("RGB", (32, 32), color).save(folder / f"{i}.png")
  rows = [f'{{"image_path": "{i % 4}.png", "caption": "a {c} square"}}\n' for i, c in enumerate(["red", "green"] * 16)]
  (folder / "train.jsonl").write_text("".join(rows))
  return str(folder / "train.jsonl")


def test_the_docs_show_training_commands():
  assert len(TRAIN_COMMANDS) >= 15


@pytest.mark.parametrize("args", [list(a) for a in TRAIN_COMMANDS], ids=[" ".join(a)[:90] for a in TRAIN_COMMANDS])
def test_documented_training_command_dry_runs(args, tiny_data_dir, tiny_pairs, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  config = parse(args)
  needs = []
  with config.unlocked():
    evals_data = [entry.data for entry in config.evals.values() if entry.get("data")]
    for data in [config.data, *evals_data] + [entry.data for entry in (config.data.get("mixture") or {}).values()]:
      if data.get("name", "").startswith("vlmjax_shapes"):  # the built-in data, shrunk (and kept out of the repo)
        data.data_dir, data.builder_config = tiny_data_dir, "tiny"
        # A subset, caption or label file a previous command wrote indexes the full dataset, not the tiny
        # one: when it is there it is set aside; when it is not, the run must name it.
        for key in ("subset_file", "caption_file", "pseudo_label_file"):
          if data.get(key) and os.path.isfile(data[key]):
            data[key] = ""
          elif data.get(key):
            needs.append(data[key])
    for split, path in config.data.files.items():
      if path.startswith("/mnt/shared/"):
        config.data.files[split] = tiny_pairs
    config.batch_size = min(config.batch_size, 64)  # the tiny data's: an epoch's steps stay positive
  workdir = str(tmp_path / "w")
  needs += [source for source, _, _ in config_lib.init_sources(config.init) if not os.path.isdir(source)]
  needs += [config.tokenizer.path] if config.tokenizer.path and not os.path.isfile(config.tokenizer.path) else []
  if needs:  # a previous command's output: refused in one line naming it
    with pytest.raises(ValueError, match="|".join(re.escape(n) for n in needs)):
      train.dry_run(config, workdir)
  else:
    report = train.dry_run(config, workdir)
    assert report["params"] > 0 and report["devices"] == 8 and report["global_batch"] == config.batch_size
    assert "Nothing was written" in train.format_dry_run(report)
  assert not os.path.exists(workdir)
  assert os.listdir(tmp_path) == []
  assert not (REPO / "data" / "tfds" / "vlmjax_shapes" / "default").exists() or DATA_WAS_THERE  # nothing built in the repo
