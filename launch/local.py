"""Runs N local processes of one training job, as N hosts would (for multi-host tests on one machine).

  python launch/local.py N [--devices_per_process K] [--port P] [--module vlmjax.train] -- ARGS...

Each process gets `VLMJAX_COORDINATOR=127.0.0.1:P`, `VLMJAX_NUM_PROCESSES=N`, `VLMJAX_PROCESS_ID=i`
(read by `vlmjax.distributed.initialize_from_env`) and, with `--devices_per_process K`, K fake CPU
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=K`, `JAX_PLATFORMS=cpu`). The global mesh
then spans N×K devices. If one process fails, the others are stopped (they would otherwise wait for
it at the next collective); the exit status is the first failure's, else 0.
"""
import argparse
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(base: dict, process_id: int, num_processes: int, port: int, devices_per_process: int) -> dict:
  """The environment of process `process_id`: the coordinator, and fake CPU devices when asked."""
  env = dict(base, VLMJAX_COORDINATOR=f"127.0.0.1:{port}", VLMJAX_NUM_PROCESSES=str(num_processes),
             VLMJAX_PROCESS_ID=str(process_id))
  if devices_per_process:
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
    env["JAX_PLATFORMS"] = "cpu"
  return env


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="launch/local.py", description=__doc__.splitlines()[0])
  parser.add_argument("num_processes", type=int)
  parser.add_argument("--devices_per_process", type=int, default=0,
                      help="fake CPU devices per process (0: leave the platform alone)")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("--module", default="vlmjax.train", help="the module each process runs")
  if "--" not in argv:
    parser.error("put the training arguments after '--', e.g. -- --config configs/demo.py --workdir DIR")
  split = argv.index("--")
  args = parser.parse_args(argv[:split])
  if args.num_processes < 1:
    parser.error(f"num_processes must be at least 1, got {args.num_processes}")
  if args.devices_per_process < 0:
    parser.error(f"--devices_per_process must be at least 0, got {args.devices_per_process}")
  return args, argv[split + 1:]


def main(argv) -> int:
  args, rest = parse_args(argv)
  port = args.port or free_port()
  procs = [subprocess.Popen([sys.executable, "-m", args.module, *rest],
                            env=process_env(os.environ, i, args.num_processes, port, args.devices_per_process))
           for i in range(args.num_processes)]
  status = 0
  try:
    # Poll every process each round (a short-circuiting any() would never see a later one fail).
    while [p.poll() for p in procs].count(None):
      failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if failed:
        status = failed[0]
        break
      time.sleep(0.2)
    else:
      status = next((p.returncode for p in procs if p.returncode), 0)
  finally:
    for p in procs:  # only our own children, by handle
      if p.poll() is None:
        p.terminate()
    for p in procs:
      try:
        p.wait(timeout=30)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
  if status:
    print(f"launch/local.py: a process exited with status {status}; stopped the others", file=sys.stderr)
  return status


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
