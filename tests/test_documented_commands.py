"""Every command the README and the configs' docstrings show parses as written.

Each `python -m vlmjax.*` (or `launch/...` `-- ARGS`) line with a `--config` is parsed the way the
program parses it: the config file loaded with its argument, every `--config.key=value` override
applied by ml_collections, and the result checked against the base config's keys and value ranges.
Training itself is not run (some commands need a pod and data that is not here), but a documented
override that does not exist, or a value out of range, fails here.
"""
import re
import shlex

from absl import flags
from ml_collections import config_flags
import pytest

from conftest import REPO
from vlmjax import config as config_lib


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


@pytest.mark.parametrize("where,args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(where, args, monkeypatch):
  monkeypatch.chdir(REPO)  # the commands name configs/ relative to the repo
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
  config = values.config
  config_lib.check_keys_and_ranges(config)
