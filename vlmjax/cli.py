"""What the command-line programs share: one-line errors, and flag parsing that names the culprit.

A mistake a user can make (a bad flag, a wrong key, a missing file) ends a command with one line on
stderr, `vlmjax.<program>: error: ...`, and exit status 2 (1 where the program documents another
meaning, e.g. a step that does not fit), never a traceback.
"""
import re
import sys

from absl import flags


def one_line(message) -> str:
  return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def fail(program: str, message, status: int = 2):
  """Prints `vlmjax.<program>: error: <message on one line>` to stderr and exits with `status`."""
  print(f"vlmjax.{program}: error: {one_line(message)}", file=sys.stderr)
  sys.exit(status)


def flags_parser(program: str):
  """An absl `flags_parser` for `app.run` whose errors in --config / --config.key=value (and any
  other flag) become one line naming the argument.

  ml_collections reads the config file and applies overrides while the flags are parsed, before
  `main` runs, so its errors (unknown key, wrong type, missing file) are caught here.
  """

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except Exception as e:  # absl and ml_collections raise many types for bad arguments
      message = str(e).splitlines()[-1] if str(e).strip() else type(e).__name__
      overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
      named = [a for a in overrides if a.removeprefix("--config.").rsplit(".", 1)[-1] in str(e)]
      culprit = named[0] if named else None
      if isinstance(e, AttributeError) and culprit:
        suggestion = re.search(r'Did you mean "([^"]+)"', str(e))
        hint = f" (did you mean '{suggestion.group(1)}'?)" if suggestion else ""
        fail(program, f"config: unknown key '{culprit.removeprefix('--config.')}'{hint}")
      about_config = culprit or any(a.startswith("--config") for a in argv[1:]) and "config" in str(e).lower()
      prefix = f"config: {culprit + ': ' if culprit else ''}" if about_config else ""
      fail(program, prefix + message)

  return parse
