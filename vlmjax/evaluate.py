"""Run a config's evaluators: during training on the live params, or on a workdir's checkpoint;
or a suite of evaluators with their own data on a workdir or an inference bundle.

  python -m vlmjax.evaluate --workdir DIR [--step N] [--ema]
  python -m vlmjax.evaluate --compare DIR1,DIR2,...
  python -m vlmjax.evaluate (--workdir DIR [--step N] | --bundle B --out OUT) --suite configs/evals/X.py
      [--data_dir TFDS_DIR]

The first reads DIR/config.json and DIR/tokenizer.model, restores only the params of the newest
checkpoint (or step N), runs every evaluator in `config.evals`, prints a table and writes the
results with their step: the newest checkpoint's to DIR/eval_results.json (what training writes at
its end), step N's to DIR/eval_results/step_N.json. It holds the workdir while it runs
(`workdir.lock`), so it never writes while a training run writes there. `--ema` evaluates the run's
moving average of its params (`optimizer.ema_decay`) instead, as training's own evaluations do, and
marks the results 'ema': true. The second prints finished
runs' eval_results.json side by side, with their steps (no recomputation).

A suite file's `get_config()` returns evaluator entries as `config.evals` holds them, each with its
own `data` (see `vlmjax.evals.common`). Every entry's data is opened and checked before the model is
loaded; a TFDS set that is not prepared is reported with the command that prepares it, and the
others run. Results go to OUT/<suite>.json and OUT/<suite>.md (OUT: --out, default DIR/eval_results),
with a progress bar per evaluator on stderr.
"""
import contextlib
import dataclasses
import json
import os
import re
import sys

from absl import app, flags
import jax

from vlmjax import cli, config as config_lib, experiment as experiment_lib, registry
from vlmjax import workdir as workdir_lib
from vlmjax.metrics import quiet_absl_logging
from vlmjax.data import sources
from vlmjax.evals import common
from vlmjax.evals.common import EvalContext, Embedder
from vlmjax.run import Bundle, RunDir, at_image_size, resized_params

STEP_RESULTS = RunDir.EVAL_STEPS  # the folder of a workdir holding step_N.json: results of --step N


@dataclasses.dataclass
class Planned:
  """One eval entry made ready: its evaluator, the data section it reads, how images are resized,
  the resolution it runs at (0: the model's), and why it cannot run (`not_prepared`: the message
  naming the command that prepares its data)."""
  name: str
  evaluator: object
  data: object
  resize: str
  not_prepared: str = ""
  image_size: int = 0


def plan_evals(evals, train_data, data_dir: str = "") -> list[Planned]:
  """Each entry of `evals` (a ConfigDict of entries) -> Planned, without opening any data.
  `data_dir`: the TFDS folder of entries with their own data that name none. ConfigError naming the
  entry for an unknown type or key, or a bad value."""
  planned = []
  for name, entry in evals.items():
    if "type" not in entry:
      raise config_lib.ConfigError(f"config: evals.{name} needs a 'type' (one of "
                                   f"{', '.join(registry.names('evaluator'))})")
    try:
      cls = registry.get("evaluator", entry.type)
      kwargs = common.evaluator_kwargs(entry)
      config_lib._check_kwargs(f"evals.{name}", cls, kwargs, provided=("name",))  # pylint: disable=protected-access
      data = common.eval_data_config(train_data, entry)
      if entry.get("data") and data_dir and not data.data_dir and data.name in ("tfds", "vlmjax_shapes"):
        data.data_dir = data_dir
      planned.append(Planned(name, cls(name=name, **kwargs), data, common.entry_resize(entry),
                             image_size=common.entry_image_size(entry)))
    except (registry.RegistryError, ValueError, TypeError) as e:
      raise config_lib.ConfigError(str(e).replace("config: ", "", 1) if str(e).startswith("config: evals.")
                                   else f"config: evals.{name}: "
                                   f"{str(e).removeprefix('config: ').removeprefix(f'evals.{name}: ')}") from None
  return planned


def check_evals(planned: list[Planned], allow_not_prepared: bool = False) -> list[Planned]:
  """Opens every split each evaluator reads and checks it (labels against class names, ...), before
  any model is built. A TFDS set that is not prepared raises, or with `allow_not_prepared` marks the
  entry. -> `planned`."""
  for plan in planned:
    try:
      for split in getattr(plan.evaluator, "splits", ()):
        source = sources.make_source(plan.data, split)
        if hasattr(plan.evaluator, "check"):
          plan.evaluator.check(source)
    except sources.DatasetNotPrepared as e:
      if not allow_not_prepared:
        raise ValueError(f"evals.{plan.name}: {e}") from None
      plan.not_prepared = str(e)
    except (KeyError, ValueError, OSError) as e:
      message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
      message = message if message.startswith(f"evals.{plan.name}") else f"evals.{plan.name}: {message}"
      raise (ValueError if isinstance(e, KeyError) else type(e))(message) from None
  return planned


def check_image_sizes(planned: list[Planned], config):
  """ConfigError naming the entry for an `image_size` the model's image tower cannot take (smaller than
  one patch), before any model is built."""
  for plan in planned:
    if plan.image_size and plan.image_size != config.input.image_size:
      at_image_size(config, plan.image_size, f"config: evals.{plan.name}")


def run_evals(experiment, params, tokenizer, planned: list[Planned] | None = None, progress: bool = False) -> dict:
  """Every evaluator of `planned` (default: `experiment.config.evals`) on `params` -> {'name/metric':
  value}, in the entries' order. Entries marked not prepared are left out (the caller reports them).
  The entries are run grouped by resolution: at the model's `input.image_size`, on `params`; at an
  entry's own `image_size`, on the model built at that size (on the same mesh) with `params`' position
  table resampled to its patch grid (`run.resized_params`)."""
  config = experiment.config
  if planned is None:
    planned = plan_evals(config.evals, config.data)
  check_image_sizes(planned, config)
  runnable = [plan for plan in planned if not plan.not_prepared]
  by_entry = {}
  for size in dict.fromkeys(plan.image_size or config.input.image_size for plan in runnable):
    at_size, size_params = experiment, params
    if size != config.input.image_size:
      at_size = experiment_lib.build(at_image_size(config, size, "evaluate"), experiment.model.vocab_size,
                                     mesh=experiment.mesh, objectives=False, validate=False)
      size_params = resized_params(params, at_size.abstract_params(), f"evaluate at image_size {size}")
    embedder = Embedder(at_size.model, size_params, at_size.mesh, config.batch_size, at_size.rules)
    for plan in runnable:
      if (plan.image_size or config.input.image_size) == size:
        ctx = EvalContext(plan.data, at_size.config.input, tokenizer, embedder, config.batch_size,
                          resize=plan.resize, progress=plan.name if progress else "")
        by_entry[plan.name] = plan.evaluator.run(ctx)
  return {key: value for plan in runnable for key, value in by_entry[plan.name].items()}


def format_table(results: dict) -> str:
  """{'zeroshot/top1': 0.9, ...} -> a two-column markdown table."""
  width = max([len(k) for k in results] + [6])
  lines = [f"| {'metric'.ljust(width)} | value  |", f"|{'-' * (width + 2)}|--------|"]
  for key, value in results.items():
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    lines.append(f"| {key.ljust(width)} | {text:>6} |")
  return "\n".join(lines)


def compare_table(workdirs: list[str]) -> str:
  """Runs side by side: their saved eval_results.json as one markdown table, a column per metric
  (the union, in first-seen order), a row per workdir; a step column first when any records one."""
  rows = {}
  for workdir in workdirs:
    path = RunDir(workdir).file(RunDir.EVAL_RESULTS)
    if not os.path.exists(path):
      raise FileNotFoundError(f"evaluate: '{path}' does not exist (has '{workdir}' finished or been evaluated?)")
    try:
      with open(path, encoding="utf-8") as f:
        rows[os.path.basename(os.path.normpath(workdir))] = json.load(f)
    except ValueError:
      raise ValueError(f"evaluate: '{path}' is not valid JSON") from None
  metrics = list(dict.fromkeys(k for results in rows.values() for k in results if k != "step"))
  if any("step" in results for results in rows.values()):
    metrics.insert(0, "step")
  cell = lambda v: "—" if v is None else f"{100 * v:.1f}" if isinstance(v, float) and abs(v) <= 1 else str(v)
  lines = ["| run | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
  lines += [f"| {name} | " + " | ".join(cell(results.get(m)) for m in metrics) + " |"
            for name, results in rows.items()]
  return "\n".join(lines)


def results_file(workdir: str, step: int, final: bool = True) -> str:
  """Where the results of `step` go: eval_results.json for the run's newest (final) checkpoint,
  else eval_results/step_N.json."""
  run = RunDir(workdir)
  return run.file(RunDir.EVAL_RESULTS) if final else os.path.join(run.file(STEP_RESULTS), f"step_{step}.json")


def write_atomically(path: str, text: str):
  """Writes `text` to `path` through a file of this process's own ("x" never opens another's), so
  a kill or a full disk never leaves half a file nor loses the previous one. OSError naming it."""
  partial = f"{path}.partial-{os.getpid()}"
  created = False
  try:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(partial, "x", encoding="utf-8") as f:
      created = True
      f.write(text)
    os.replace(partial, path)
  except OSError as e:
    if created and os.path.isfile(partial):
      os.remove(partial)
    raise OSError(f"evaluate: cannot write the results to '{path}': {e.strerror or e}") from None


def write_results(workdir: str, step: int, results: dict, final: bool = True) -> str:
  """Writes {'step': step, **results} to `results_file` (atomically). -> the path."""
  path = results_file(workdir, step, final)
  write_atomically(path, json.dumps({"step": int(step), **results}, indent=1))
  return path


def check_workdir(workdir: str):
  """Raises FileNotFoundError / ValueError (one line naming --workdir) unless `workdir` is a
  training workdir, before anything is built from it or written into it."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"evaluate: --workdir '{workdir}' does not exist or is not a folder")
  if Bundle.holds_one(workdir):
    raise ValueError(f"evaluate: --workdir '{workdir}' is an inference bundle; evaluate takes a training "
                     "workdir")
  if not os.path.isdir(RunDir(workdir).file(RunDir.CHECKPOINTS)):
    raise FileNotFoundError(f"evaluate: --workdir '{workdir}' holds no {RunDir.CHECKPOINTS}/ (is it a training "
                            "workdir, and has it saved a checkpoint?)")


def evaluate_workdir(workdir: str, step: int | None = None, show=None, ema: bool = False) -> dict:
  """Runs the evaluators of a run's config on its params at `step` (default: the newest), on the
  run's mesh, holding the workdir -> {'step': N, 'name/metric': value, ...}, written to
  `results_file(workdir, N, final=step is None)`. `show(results)` runs before the write, so a
  failed write loses nothing. `ema`: on the params' moving average (`optimizer.ema_decay`), as
  training's own evaluations are; the results then hold 'ema': True."""
  check_workdir(workdir)
  run = RunDir(workdir)
  config = run.read_config()
  if ema:
    run.check_ema(config)
  with workdir_lib.lock(workdir, "evaluate"):
    loaded = run.load(step, mesh=experiment_lib.make_mesh(config), ema=ema)
    metrics = {"ema": True} if ema else {}
    metrics.update(run_evals(loaded.experiment, loaded.params, loaded.tokenizer))
    results = {"step": int(loaded.step), **metrics}
    if show:
      show(results)
    write_results(workdir, loaded.step, metrics, final=step is None)
  return results


NOT_FRACTIONS = ("l2",)  # float metrics shown as they are (the rest in [0, 1] as percent)
SUITE_KEY = "suite"  # what marks a file as a suite's results (so a rerun replaces only its own)


def load_suite(path: str):
  """A suite file, `FILE` or `FILE:arg` (its `get_config(arg)`) -> (its name, its evaluator entries):
  the file's name, with `_arg` after it. ConfigError naming the file."""
  path, _, arg = path.partition(":") if not os.path.isfile(path) else (path, "", "")
  if not os.path.isfile(path):
    raise config_lib.ConfigError(f"evaluate: --suite file '{path}' does not exist")
  entries = config_lib.load_file(path, arg or None)
  if not entries or not all(hasattr(e, "get") for e in entries.values()):
    raise config_lib.ConfigError(f"evaluate: --suite '{path}' must return a ConfigDict of evaluator entries")
  # The argument may be a path ('cir.py:workdirs/vlm_ntp'): the name keeps it as one file name.
  name = os.path.splitext(os.path.basename(path))[0]
  return name + (f"_{re.sub(r'[^A-Za-z0-9._-]', '_', arg)}" if arg else ""), entries


def suite_table(results: dict, planned: list[Planned]) -> str:
  """A markdown table: a row per evaluator metric (fractions as percent), and a row per entry whose
  data is not prepared, with the command that prepares it."""
  lines = ["| evaluator | metric | value |", "|---|---|---|"]
  for plan in planned:
    if plan.not_prepared:
      lines.append(f"| {plan.name} | not prepared | `{plan.not_prepared.split('prepare it with: ')[-1]}` |")
      continue
    for key, value in results.items():
      if key.startswith(plan.name + "/"):
        metric = key[len(plan.name) + 1:]
        fraction = isinstance(value, float) and abs(value) <= 1 and metric not in NOT_FRACTIONS
        text = f"{100 * value:.2f}" if fraction else f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"| {plan.name} | {metric} | {text} |")
  return "\n".join(lines)


def suite_outputs(out: str, suite: str) -> tuple[str, str]:
  """OUT/<suite>.json and .md; ValueError when either exists and is not this suite's earlier results."""
  json_path, md_path = os.path.join(out, f"{suite}.json"), os.path.join(out, f"{suite}.md")
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"evaluate: --out '{out}' is not a folder")
  ours = False
  if os.path.exists(json_path):
    try:
      with open(json_path, encoding="utf-8") as f:
        ours = SUITE_KEY in json.load(f)
    except (OSError, ValueError):
      ours = False
    if not ours:
      raise ValueError(f"evaluate: '{json_path}' exists and is not a suite's results; choose another --out")
  if os.path.exists(md_path) and not ours:
    raise ValueError(f"evaluate: '{md_path}' exists and is not a suite's results; choose another --out")
  return json_path, md_path


def write_suite(out: str, suite: str, record: dict, table: str) -> tuple[str, str]:
  """Writes the suite's record (JSON) and table (markdown), each atomically."""
  paths = suite_outputs(out, suite)
  for path, text in zip(paths, (json.dumps(record, indent=1), table + "\n")):
    write_atomically(path, text)
  return paths


def evaluate_suite(suite_path: str, workdir: str = "", bundle: str = "", step: int | None = None,
                   out: str = "", data_dir: str = "", show=print) -> dict:
  """Runs a suite file's evaluators on a workdir's checkpoint (at `step`, default the newest) or on
  a bundle -> the record written to OUT/<suite>.json: {'suite', 'run', 'step', 'results',
  'not_prepared': {entry: command}}. Every entry's data is checked before the model is loaded."""
  suite, entries = load_suite(suite_path)
  if bool(workdir) == bool(bundle):
    raise ValueError("evaluate: --suite takes one of --workdir or --bundle")
  if bundle:
    if not Bundle.holds_one(bundle):
      raise FileNotFoundError(f"evaluate: --bundle '{bundle}' is not an inference bundle (no {Bundle.INFO})")
    if not out:
      raise ValueError("evaluate: --bundle needs --out DIR for the suite's results (a bundle is export's output)")
    run, lock = Bundle(bundle), None
  else:
    check_workdir(workdir)
    run, lock = RunDir(workdir), workdir
  out = out or RunDir(workdir).file(STEP_RESULTS)
  suite_outputs(out, suite)  # refused before anything is computed
  config = run.read_config()
  planned = plan_evals(entries, config.data, data_dir)
  check_image_sizes(planned, config)
  planned = check_evals(planned, allow_not_prepared=True)
  for plan in planned:
    if plan.not_prepared:
      print(f"vlmjax.evaluate: {plan.name}: {plan.not_prepared}", file=sys.stderr, flush=True)
  if all(plan.not_prepared for plan in planned):
    raise FileNotFoundError(f"evaluate: no set of suite '{suite}' is prepared (see above)")
  with workdir_lib.lock(lock, "evaluate") if lock else contextlib.nullcontext():
    loaded = run.load(step, mesh=experiment_lib.make_mesh(config) if lock else None)
    if loaded.tokenizer is None:
      raise FileNotFoundError(f"evaluate: '{run.path}' holds no tokenizer")
    results = run_evals(loaded.experiment, loaded.params, loaded.tokenizer, planned, progress=True)
    table = suite_table(results, planned)
    show(table)
    record = {SUITE_KEY: suite, "run": os.path.abspath(run.path), "step": int(loaded.step), "results": results,
              "not_prepared": {p.name: p.not_prepared for p in planned if p.not_prepared}}
    paths = write_suite(out, suite, record, table)
  print(f"Wrote {paths[0]} and {paths[1]}", flush=True)
  return record


def main(argv):
  quiet_absl_logging()
  if len(argv) > 1:
    cli.fail("evaluate", f"evaluate: unexpected arguments: {' '.join(argv[1:])}")
  try:
    if FLAGS.ema and (FLAGS.compare or FLAGS.suite):
      raise ValueError("evaluate: --ema goes with --workdir DIR (the config's evaluators), not --compare or --suite")
    if FLAGS.compare:
      if FLAGS.workdir or FLAGS.step is not None:
        raise ValueError("evaluate: --compare reads the runs' saved results; give it without --workdir and --step")
      print(compare_table(FLAGS.compare))
      return
    if FLAGS.suite:
      evaluate_suite(FLAGS.suite, FLAGS.workdir or "", FLAGS.bundle or "", FLAGS.step, FLAGS.out or "",
                     FLAGS.data_dir or "")
      return
    if FLAGS.bundle or FLAGS.out or FLAGS.data_dir:
      raise ValueError("evaluate: --bundle, --out and --data_dir go with --suite FILE")
    if not FLAGS.workdir:
      raise ValueError("evaluate: give --workdir DIR (or --compare DIR1,DIR2,..., or --suite FILE)")
    evaluate_workdir(FLAGS.workdir, FLAGS.step, show=lambda results: print(format_table(results), flush=True),
                     ema=FLAGS.ema)
  except workdir_lib.WorkdirBusy as e:
    cli.fail("evaluate", e, status=1)
  except (OSError, config_lib.ConfigError, ValueError) as e:  # OSError: FileNotFoundError, a full disk...
    cli.fail("evaluate", e)


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "A training workdir.")
  flags.DEFINE_list("compare", [], "Workdirs whose eval_results.json to print side by side (percent).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_bool("ema", False, "Evaluate the run's EMA of its params (optimizer.ema_decay > 0).")
  flags.DEFINE_string("suite", None, "A suite file (configs/evals/*.py) of evaluators with their own data.")
  flags.DEFINE_string("bundle", None, "An inference bundle to run --suite on (instead of --workdir).")
  flags.DEFINE_string("out", None, "The folder for --suite's results (default: WORKDIR/eval_results).")
  flags.DEFINE_string("data_dir", None, "The TFDS folder of --suite's sets that name none.")
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.flags_parser("evaluate"))
