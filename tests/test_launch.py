"""Launchers: what `launch/tpu_vm.sh --dry-run` would run, what the SLURM script starts, how
`launch/local.py` starts and stops processes, and how `vlmjax.distributed` reads a cluster's
environment."""
import json
import os
import shlex
import signal
import subprocess
import sys

import pytest

from conftest import REPO
from vlmjax.distributed import DistributedEnvError, first_host, settings_from_env

TPU_VM = str(REPO / "launch" / "tpu_vm.sh")


def _tpu_vm(*args, path=None):
  env = dict(os.environ, PATH=path) if path else None
  return subprocess.run(["bash", TPU_VM, *args], capture_output=True, text=True, env=env, timeout=300)


def _commands(result):
  assert result.returncode == 0, result.stderr
  return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_tpu_vm_create_dry_run():
  [command] = _commands(_tpu_vm("--dry-run", "create", "--name", "clip", "--zone", "us-east5-a",
                                "--type", "v5p-64", "--project", "proj", "--spot"))
  assert command == ["gcloud", "compute", "tpus", "tpu-vm", "create", "clip", "--zone=us-east5-a",
                     "--project=proj", "--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5", "--spot"]


def test_tpu_vm_setup_installs_head_on_every_worker():
  archive, scp, ssh = _commands(_tpu_vm("--dry-run", "setup", "--name", "clip", "--zone", "z"))
  assert archive[:2] == ["git", "archive"] and archive[-1] == "HEAD"
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "clip"] and "--worker=all" in ssh
  remote = next(a for a in ssh if a.startswith("--command=")).removeprefix("--command=")
  assert "pip install" in remote and "'.[tpu]'" in remote


def test_tpu_vm_run_passes_training_arguments_to_every_worker():
  [ssh] = _commands(_tpu_vm("--dry-run", "run", "--name", "clip", "--zone", "z", "--",
                            "--config", "configs/clip_b16.py", "--workdir", "/mnt/shared/run 1",
                            "--config.batch_size=1024"))
  assert "--worker=all" in ssh
  remote = shlex.split(next(a for a in ssh if a.startswith("--command=")).removeprefix("--command="))
  assert remote[:3] == ["cd", "~/vlmjax", "&&"]
  assert remote[3:] == ["VLMJAX_DISTRIBUTED=auto", ".venv/bin/python", "-m", "vlmjax.train", "--config",
                        "configs/clip_b16.py", "--workdir", "/mnt/shared/run 1", "--config.batch_size=1024"]


def test_tpu_vm_teardown_dry_run():
  [command] = _commands(_tpu_vm("--dry-run", "teardown", "--name", "clip", "--zone", "z"))
  assert command == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "clip", "--zone=z", "--quiet"]


def test_tpu_vm_dry_run_runs_nothing(tmp_path):
  fake = tmp_path / "bin"
  fake.mkdir()
  for tool in ("gcloud", "git"):
    (fake / tool).write_text(f"#!/bin/sh\ntouch {tmp_path}/{tool}-ran\n")
    (fake / tool).chmod(0o755)
  path = f"{fake}:{os.environ['PATH']}"
  assert _tpu_vm("--dry-run", "setup", "--name", "a", "--zone", "z", path=path).returncode == 0
  assert not list(tmp_path.glob("*-ran"))
  assert _tpu_vm("teardown", "--name", "a", "--zone", "z", path=path).returncode == 0  # and without: runs
  assert (tmp_path / "gcloud-ran").exists()


@pytest.mark.parametrize("args, message", [
    (("create", "--zone", "z", "--type", "v5p-8"), "--name is required"),
    (("create", "--name", "a", "--zone", "z", "--type", "v9-8"), "unknown --type 'v9-8'"),
    (("run", "--name", "a", "--zone", "z"), "run needs the training arguments"),
    (("resize", "--name", "a", "--zone", "z"), "unknown command 'resize'"),
])
def test_tpu_vm_bad_arguments_fail_in_one_line(args, message):
  result = _tpu_vm("--dry-run", *args)
  assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_gpu_slurm_script_runs_one_task_per_host(tmp_path):
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$OUT"\necho "$XLA_FLAGS" >> "$OUT"\n')
  (fake / "srun").chmod(0o755)
  env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", OUT=str(tmp_path / "srun.txt"),
             SLURM_SUBMIT_DIR=str(tmp_path), XLA_FLAGS="--mine")
  result = subprocess.run(["bash", str(REPO / "launch" / "gpu_slurm.sbatch"), "--config", "c.py", "--workdir", "w"],
                          capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr
  lines = (tmp_path / "srun.txt").read_text().splitlines()
  assert lines[:2] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1"]
  assert lines[3:8] == ["-m", "vlmjax.train", "--config", "c.py", "--workdir"] and lines[8] == "w"
  assert lines[-1].startswith("--mine ")  # the user's XLA flags are kept
  header = (REPO / "launch" / "gpu_slurm.sbatch").read_text()
  assert "#SBATCH --ntasks-per-node=1" in header


# --- vlmjax.distributed: the environment of each kind of cluster ---------------------------------


def test_no_cluster_is_a_single_process():
  assert settings_from_env({}) is None
  assert settings_from_env({"VLMJAX_DISTRIBUTED": "off", "SLURM_STEP_NUM_TASKS": "4"}) is None


def test_explicit_variables():
  env = {"VLMJAX_COORDINATOR": "10.0.0.2:1234", "VLMJAX_NUM_PROCESSES": "4", "VLMJAX_PROCESS_ID": "3",
         "VLMJAX_LOCAL_DEVICE_IDS": "0,1"}
  assert settings_from_env(env) == dict(coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3,
                                        local_device_ids=[0, 1])


@pytest.mark.parametrize("env, message", [
    ({"VLMJAX_COORDINATOR": "h:1", "VLMJAX_NUM_PROCESSES": "2"}, "VLMJAX_PROCESS_ID is not"),
    ({"VLMJAX_COORDINATOR": "h:1", "VLMJAX_NUM_PROCESSES": "two", "VLMJAX_PROCESS_ID": "0"},
     "VLMJAX_NUM_PROCESSES='two' is not an integer"),
    ({"VLMJAX_COORDINATOR": "h:1", "VLMJAX_NUM_PROCESSES": "2", "VLMJAX_PROCESS_ID": "2"},
     r"VLMJAX_PROCESS_ID=2 is not in \[0, VLMJAX_NUM_PROCESSES=2\)"),
    ({"VLMJAX_COORDINATOR": "h", "VLMJAX_NUM_PROCESSES": "2", "VLMJAX_PROCESS_ID": "0"}, "must be host:port"),
    ({"VLMJAX_DISTRIBUTED": "yes"}, "VLMJAX_DISTRIBUTED='yes'; known: auto, off"),
    ({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": ""},
     "cannot read a host name"),
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, "TPU_WORKER_ID is not set"),
])
def test_bad_environment_is_named(env, message):
  with pytest.raises(DistributedEnvError, match=message):
    settings_from_env(env)


def test_auto_leaves_it_to_jax():
  assert settings_from_env({"VLMJAX_DISTRIBUTED": "auto", "SLURM_STEP_NUM_TASKS": "8"}) == {}


def test_slurm_step():
  env = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "2", "SLURM_NTASKS": "4",
         "SLURM_STEP_NODELIST": "gpu[017-018,020],gpu-big1", "SLURM_JOB_NODELIST": "gpu[001-099]"}
  assert settings_from_env(env) == dict(coordinator_address=f"gpu017:{61440 + 4242 % 4096}", num_processes=4,
                                        process_id=2)
  assert settings_from_env({**env, "VLMJAX_COORDINATOR_PORT": "5000"})["coordinator_address"] == "gpu017:5000"
  # The batch script's own shell (no srun step) and single-task steps are one process.
  assert settings_from_env({k: v for k, v in env.items() if not k.startswith("SLURM_STEP")}) is None
  assert settings_from_env({**env, "SLURM_STEP_NUM_TASKS": "1"}) is None


@pytest.mark.parametrize("nodelist, host", [
    ("node001", "node001"), ("node001,node002", "node001"), ("node[001-015],x", "node001"),
    ("node[007,001-005]", "node007"), ("a-b[3-4]", "a-b3")])
def test_first_host_of_a_slurm_nodelist(nodelist, host):
  assert first_host(nodelist) == host


def test_gke_tpu_workers():
  env = {"TPU_WORKER_HOSTNAMES": "w-0.svc,w-1.svc,w-2.svc,w-3.svc", "TPU_WORKER_ID": "1"}
  assert settings_from_env(env) == dict(coordinator_address="w-0.svc:8476", num_processes=4, process_id=1)
  assert settings_from_env({"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}) is None


# --- launch/local.py ------------------------------------------------------------------------------


def run_process_group(args, timeout, **kwargs):
  """subprocess.run in a session of its own: on timeout the whole group (a launcher and the processes
  it started) is killed, not only the launcher."""
  with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                        **kwargs) as proc:
    try:
      stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.communicate()
      raise
  return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def _local(tmp_path, module_source, *args, timeout=120):
  (tmp_path / "probe_module.py").write_text(module_source)
  env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
             XLA_FLAGS="--xla_cpu_use_thunk_runtime=true --xla_force_host_platform_device_count=8")
  return run_process_group([sys.executable, str(REPO / "launch" / "local.py"), *args, "--module", "probe_module",
                            "--", "--flag", "x"], timeout, env=env, cwd=tmp_path)


def test_local_processes_get_the_coordinator_and_their_devices(tmp_path):
  source = ("import json, os, sys\n"
            "keys = ('VLMJAX_COORDINATOR', 'VLMJAX_NUM_PROCESSES', 'VLMJAX_PROCESS_ID', 'XLA_FLAGS', 'JAX_PLATFORMS')\n"
            "record = {k: os.environ.get(k) for k in keys} | {'argv': sys.argv[1:]}\n"
            "open(f\"p{os.environ['VLMJAX_PROCESS_ID']}.json\", 'w').write(json.dumps(record))\n")
  result = _local(tmp_path, source, "3", "--devices_per_process", "2", "--port", "23456")
  assert result.returncode == 0, result.stderr
  records = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(3)]
  for i, record in enumerate(records):
    assert record == {"VLMJAX_COORDINATOR": "127.0.0.1:23456", "VLMJAX_NUM_PROCESSES": "3",
                      "VLMJAX_PROCESS_ID": str(i), "JAX_PLATFORMS": "cpu", "argv": ["--flag", "x"],
                      "XLA_FLAGS": "--xla_cpu_use_thunk_runtime=true --xla_force_host_platform_device_count=2"}


def test_local_failure_stops_the_other_processes(tmp_path):
  # Process 0 would sleep for 10 minutes; the launcher must stop it as soon as process 1 fails
  # (well within `_local`'s timeout, which would otherwise fail the test).
  source = ("import os, sys, time\n"
            "if os.environ['VLMJAX_PROCESS_ID'] == '1':\n  sys.exit(3)\n"
            "time.sleep(600)\n")
  result = _local(tmp_path, source, "2")
  assert result.returncode == 3
  assert "a process exited with status 3; stopped the others" in result.stderr
