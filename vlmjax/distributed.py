"""Multi-process start-up: `jax.distributed.initialize` arguments from the environment.

One process per host (per GPU host, per TPU VM worker, or one of N local processes in tests); every
process runs the same `python -m vlmjax.train ...` and they meet at a coordinator. Where the
arguments come from, first match wins:

1. explicit: `VLMJAX_COORDINATOR=host:port`, `VLMJAX_NUM_PROCESSES`, `VLMJAX_PROCESS_ID` (and
   optionally `VLMJAX_LOCAL_DEVICE_IDS=0,1`), as set by `launch/local.py`;
2. `VLMJAX_DISTRIBUTED=auto`: no arguments, JAX's own cluster detection (Cloud TPU VM metadata,
   as `launch/tpu_vm.sh` sets);
3. SLURM, inside `srun` with more than one task: the coordinator is the step's first node at a port
   derived from the job id (`VLMJAX_COORDINATOR_PORT` overrides), processes are `SLURM_STEP_NUM_TASKS`,
   this one is `SLURM_PROCID`;
4. GKE TPU pods: `TPU_WORKER_HOSTNAMES` (more than one) and `TPU_WORKER_ID`, coordinator on port 8476
   of the first worker.

Nothing set (or a single task): a single process, no initialisation.
"""
import os
import re

import jax

DEFAULT_TPU_PORT = 8476


class DistributedEnvError(ValueError):
  pass


def _int(env, name: str) -> int:
  value = env.get(name, "")
  try:
    return int(value)
  except ValueError:
    raise DistributedEnvError(f"distributed: environment variable {name}={value!r} is not an integer") from None


def first_host(nodelist: str) -> str:
  """The first host of a SLURM hostlist: 'gpu[003-005,9],cpu1' -> 'gpu003', 'a1,a2' -> 'a1'."""
  match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
  if not match or not match.group(1):
    raise DistributedEnvError(f"distributed: cannot read a host name from SLURM node list {nodelist!r}")
  prefix, ranges = match.groups()
  if ranges is None:
    return prefix
  first = re.split(r"[,-]", ranges)[0]
  return prefix + first


def settings_from_env(env=None) -> dict | None:
  """-> keyword arguments for `jax.distributed.initialize`, or None for a single process.

  `env` defaults to `os.environ`; a dict lets tests describe a cluster.
  """
  env = os.environ if env is None else env
  if env.get("VLMJAX_COORDINATOR"):
    for name in ("VLMJAX_NUM_PROCESSES", "VLMJAX_PROCESS_ID"):
      if name not in env:
        raise DistributedEnvError(f"distributed: VLMJAX_COORDINATOR is set but {name} is not")
    settings = dict(coordinator_address=env["VLMJAX_COORDINATOR"],
                    num_processes=_int(env, "VLMJAX_NUM_PROCESSES"),
                    process_id=_int(env, "VLMJAX_PROCESS_ID"))
    if env.get("VLMJAX_LOCAL_DEVICE_IDS"):
      try:
        settings["local_device_ids"] = [int(i) for i in env["VLMJAX_LOCAL_DEVICE_IDS"].split(",")]
      except ValueError:
        raise DistributedEnvError("distributed: VLMJAX_LOCAL_DEVICE_IDS must be integers separated by "
                                  f"commas, got {env['VLMJAX_LOCAL_DEVICE_IDS']!r}") from None
    if not 0 <= settings["process_id"] < settings["num_processes"]:
      raise DistributedEnvError(f"distributed: VLMJAX_PROCESS_ID={settings['process_id']} is not in "
                                f"[0, VLMJAX_NUM_PROCESSES={settings['num_processes']})")
    if ":" not in settings["coordinator_address"]:
      raise DistributedEnvError("distributed: VLMJAX_COORDINATOR must be host:port, got "
                                f"{settings['coordinator_address']!r}")
    return settings

  mode = env.get("VLMJAX_DISTRIBUTED", "")
  if mode == "auto":
    return {}
  if mode not in ("", "off"):
    raise DistributedEnvError(f"distributed: VLMJAX_DISTRIBUTED={mode!r}; known: auto, off")
  if mode == "off":
    return None

  # srun sets the SLURM_STEP_* variables; a batch script's own shell (one process) does not.
  if "SLURM_STEP_NUM_TASKS" in env and _int(env, "SLURM_STEP_NUM_TASKS") > 1:
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
    if "VLMJAX_COORDINATOR_PORT" in env:
      port = _int(env, "VLMJAX_COORDINATOR_PORT")
    else:  # the same job id gives every task the same port; the range avoids well-known ports
      port = 61440 + _int(env, "SLURM_JOB_ID") % 4096
    return dict(coordinator_address=f"{first_host(nodelist)}:{port}",
                num_processes=_int(env, "SLURM_STEP_NUM_TASKS"), process_id=_int(env, "SLURM_PROCID"))

  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1:
    if "TPU_WORKER_ID" not in env:
      raise DistributedEnvError("distributed: TPU_WORKER_HOSTNAMES lists several workers but TPU_WORKER_ID is not set")
    return dict(coordinator_address=f"{hosts[0].strip()}:{DEFAULT_TPU_PORT}", num_processes=len(hosts),
                process_id=_int(env, "TPU_WORKER_ID"))
  return None


def initialize_from_env(env=None) -> dict | None:
  """Calls `jax.distributed.initialize` when the environment describes several processes; must run
  before anything touches a JAX device. Returns the settings used (None: single process)."""
  settings = settings_from_env(env)
  if settings is not None:
    jax.distributed.initialize(**settings)
  return settings
