"""The input pipeline against the step: does the data keep up with training?

Three measurements of one config, in one run:

- **pipeline alone**: `pipeline.train_dataset` on the config's training data and preprocessing (its
  tokenizer trained as `vlmjax.train` trains it), for each data setting (worker processes, threads):
  examples/s over `batches` batches after `warmup`, and this process's CPU time per example.
- **step alone**: `train_step.bench_train_step`, the real step on a synthetic batch.
- **training**: the command `python -m vlmjax.train` on the same config in a subprocess, as a user
  runs it, for `train_steps` steps with no evaluation, once per training data setting; its logged
  examples/s over every logging interval but the first (which holds the compilation).

On a CPU the step and the data share the cores, so "pipeline alone" being faster than the step does
not make training as fast as the step: what training loses is what the data's CPU time (and its
pre-empting XLA's threads) takes from the step.
"""
import dataclasses
import os
import subprocess
import sys
import tempfile
import time

CONFIG_FILE = """\
import json
import ml_collections


def get_config():
  return ml_collections.ConfigDict(json.loads({text!r}))
"""


@dataclasses.dataclass(frozen=True)
class DataSetting:
  """How batches are made: `workers` grain processes (0: this process), `threads` each, and the
  workers' added `nice` value. Written 'WORKERS:THREADS[:NICE]'."""
  workers: int
  threads: int
  nice: int = 19

  @classmethod
  def parse(cls, text: str) -> "DataSetting":
    parts = text.split(":")
    try:
      values = [int(p) for p in parts]
    except ValueError:
      values = []
    if len(values) not in (2, 3) or min(values) < 0 or values[1] < (0 if values[0] else 1):
      raise ValueError(f"bench: data setting {text!r} is not WORKERS:THREADS[:NICE] (e.g. 0:2 or 2:1:19; "
                       "threads >= 1 without workers)")
    return cls(*values)

  def name(self) -> str:
    if not self.workers:
      return f"{self.threads} thread{'s' * (self.threads != 1)} in the training process"
    return (f"{self.workers} worker process{'es' * (self.workers != 1)} × {self.threads} thread"
            f"{'s' * (self.threads != 1)}, nice +{self.nice}")

  def overrides(self) -> dict:
    return {"num_threads": self.threads, "workers": self.workers, "worker_nice": self.nice}


def config_setting(config) -> DataSetting:
  data = config.data
  return DataSetting(data.get("workers", 0), data.num_threads, data.get("worker_nice", 0))


def bench_pipeline(config, settings, batches: int = 20, warmup: int = 3) -> list[dict]:
  """examples/s of the config's training batches alone, for each `DataSetting`."""
  from vlmjax import experiment as experiment_lib  # pylint: disable=import-outside-toplevel
  from vlmjax.data import mixture, pipeline  # pylint: disable=import-outside-toplevel
  from vlmjax.run import RunDir  # pylint: disable=import-outside-toplevel
  from vlmjax.run_tokenizer import get_tokenizer  # pylint: disable=import-outside-toplevel
  source = mixture.train_source(config.data, config.seed)
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer = get_tokenizer(config, RunDir(tmp), source)
  preprocess = experiment_lib.build(config, tokenizer.vocab_size, validate=False).preprocess(tokenizer)
  rows = []
  for setting in settings:
    it = pipeline.train_dataset(source, preprocess, config.batch_size, config.seed, num_threads=setting.threads,
                                workers=setting.workers, worker_nice=setting.nice)
    try:
      start = time.perf_counter()
      for _ in range(warmup):
        next(it)
      first_s = time.perf_counter() - start
      start, start_cpu = time.perf_counter(), time.process_time()
      for _ in range(batches):
        next(it)
      wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    finally:
      it.close()
    examples = batches * config.batch_size
    rows.append({"setting": dataclasses.asdict(setting), "name": setting.name(), "warmup_batches_s": first_s,
                 "batches": batches, "examples_per_sec": examples / wall,
                 # The workers' CPU time is theirs, not this process's.
                 "process_cpu_ms_per_example": 1e3 * cpu / examples})
  return rows


def bench_training(config, setting: DataSetting, steps: int, log_every: int, folder: str) -> dict:
  """`python -m vlmjax.train` on `config` with `setting` for `steps` steps: its logged examples/s."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.update(setting.overrides())
    config.total_steps, config.log_every_steps, config.evals = steps, log_every, {}
    config.eval_every_steps, config.checkpoint.every_steps, config.progress_bar = 0, 0, False
  name = f"w{setting.workers}t{setting.threads}n{setting.nice}"
  config_path, workdir = os.path.join(folder, f"{name}.py"), os.path.join(folder, name)
  with open(config_path, "w", encoding="utf-8") as f:
    f.write(CONFIG_FILE.format(text=config.to_json()))
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-m", "vlmjax.train", "--config", config_path, "--workdir", workdir],
                          capture_output=True, text=True, check=False)
  if result.returncode != 0:
    raise RuntimeError(f"bench: vlmjax.train exited {result.returncode}: "
                       f"{(result.stderr.strip().splitlines() or [''])[-1]}")
  from vlmjax.run import read_metrics  # pylint: disable=import-outside-toplevel
  rates = [m["examples_per_sec"] for m in read_metrics(workdir) if "examples_per_sec" in m]
  steady = rates[1:]  # the first interval holds the compilation
  seconds = sum(log_every * config.batch_size / r for r in steady)
  return {"setting": dataclasses.asdict(setting), "name": setting.name(), "steps": steps, "log_every": log_every,
          "command_s": time.perf_counter() - start, "interval_examples_per_sec": rates,
          "examples_per_sec": len(steady) * log_every * config.batch_size / seconds}


def bench_input_pipeline(config, pipeline_settings, training_settings, batches: int = 20, train_steps: int = 150,
                         log_every: int = 25, step_repeats: int = 3) -> dict:
  """-> the report: 'pipeline' rows, 'step' (the train-step benchmark's numbers) and 'training' rows."""
  import jax  # pylint: disable=import-outside-toplevel
  from vlmjax.bench import report, train_step  # pylint: disable=import-outside-toplevel
  if train_steps < 3 * log_every:
    raise ValueError(f"bench: --train_steps ({train_steps}) must be at least 3 × the logging interval ({log_every})")
  load_start = os.getloadavg()
  pipeline_rows = bench_pipeline(config, pipeline_settings, batches)
  step = train_step.bench_train_step(config, repeats=step_repeats, xla_unrolled=False)
  with tempfile.TemporaryDirectory() as folder:
    training = [bench_training(config, s, train_steps, log_every, folder) for s in training_settings]
  step_rate = step["examples_per_sec"]
  for row in training:
    row["of_step_alone"] = row["examples_per_sec"] / step_rate
  return {"config": {"batch_size": config.batch_size, "image_size": config.input.image_size,
                     "data": config.data.get("name"), "mixture": sorted(config.data.get("mixture") or {}),
                     "own_setting": dataclasses.asdict(config_setting(config))},
          "pipeline": pipeline_rows,
          "step": {k: step[k] for k in ("examples_per_sec", "examples_per_sec_median", "steps", "repeats", "mfu")},
          "training": training, "environment": report.environment(jax.devices(), load_start)}
