"""Preemption: SIGTERM (a TPU/cloud preemption notice, `kill`) or SIGINT (Ctrl-C) asks a run to stop.

The train loop calls `reached(step)` after every step; when it returns True the loop saves a
checkpoint of that step and returns, and the command exits 0; starting it again resumes exactly.
One process: a signal handler only sets a flag, so the step in flight finishes (a second Ctrl-C
interrupts at once, without a checkpoint). Several processes (jax.distributed): JAX's preemption
service receives SIGTERM and makes every process agree on the step to stop at
(`multihost_utils.reached_preemption_sync_point`), so they all save the same step.
"""
import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preemption:
  """A context manager: installs the handlers on entry (one process, main thread only: Python
  signal handlers run there) and puts the previous ones back on exit."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name = None  # 'SIGTERM' / 'SIGINT' once one has arrived
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the checkpoint
    self.signal_name = signal.Signals(signum).name

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def reached(self, step: int) -> bool:
    """Whether to checkpoint and stop after `step`. Every process must call it after every step."""
    if jax.process_count() == 1:
      return self.signal_name is not None
    try:
      reached = multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # the preemption service is off (jax_enable_preemption_service=False)
      return False
    if reached:
      self.signal_name = "SIGTERM"
    return reached
