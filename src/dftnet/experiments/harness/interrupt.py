"""Stopping training cleanly: Ctrl-C (SIGINT) or a scheduler's SIGTERM raises a flag that the loop checks
between steps, and training then ends with a resumable checkpoint (:class:`TrainingInterrupted`).

Schedulers (SLURM, Kubernetes, torchrun's elastic agent, spot instances) stop a job with SIGTERM and
SIGKILL it a grace period later; the step in flight finishes, the checkpoint is written atomically, and
the command exits with the conventional status 128 + the signal: 130 for SIGINT, 143 for SIGTERM.

* A second Ctrl-C stops at once (``KeyboardInterrupt``): a person asked twice.
* A second SIGTERM is ignored: schedulers and launchers often deliver it twice (to the process group and
  through a parent that forwards it), and SIGKILL ends the job anyway if the grace period runs out.
* Outside the training loop (loading data, the final evaluation), ``dftnet`` turns SIGTERM into
  :class:`Terminated` (:func:`terminate_on_sigterm`): the run folder's lock is released, a temporary file
  is removed, and the command ends with one line and status 143.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path

__all__ = ["TrainingInterrupted", "Terminated", "StopFlag", "STOP_AFTER_STEPS", "exit_status",
           "signal_name", "stopped_line", "terminate_on_sigterm"]

# Test hook: when > 0, the flag rises after this many steps of this process, a deterministic stand-in
# for Ctrl-C. The tests set it (in subprocesses through a small wrapper, under torchrun too).
STOP_AFTER_STEPS = 0

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    """The shell's status for a job ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: training stopped after a step, with a resumable checkpoint at ``path``."""

    def __init__(self, path: Path, signum: int = signal.SIGINT):
        super().__init__(str(path))
        self.path = path
        self.signum = int(signum)


class Terminated(BaseException):
    """SIGTERM outside the training loop (a ``BaseException``, as ``KeyboardInterrupt`` is for SIGINT)."""


def stopped_line(e: TrainingInterrupted, command: str, out) -> str:
    """The one line a stopped run prints: what stopped it, the checkpoint, and how to continue."""
    what = "interrupted" if e.signum == signal.SIGINT else f"terminated ({signal_name(e.signum)})"
    return (f"{what}: saved a resumable checkpoint at {e.path}; resume with: dftnet {command} --resume "
            f"--out {out} (and the same flags)")


class StopFlag:
    """Turns SIGINT and SIGTERM into a flag the loop checks between steps (so no step is cut in half)."""

    def __init__(self):
        self.set = False
        self.signum = signal.SIGINT  # what raised the flag (the test hook stands for Ctrl-C)
        self.steps = 0
        self.stop_after = STOP_AFTER_STEPS
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in _SIGNALS}
        return self

    def _handler(self, signum, frame):
        if self.set:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            return  # a repeated SIGTERM: the first one is being handled
        self.set, self.signum = True, signum

    def check(self) -> bool:
        """Count a step; True when training should stop after it."""
        self.steps += 1
        return self.set or (self.stop_after > 0 and self.steps >= self.stop_after)

    def interrupted(self, path: Path) -> TrainingInterrupted:
        return TrainingInterrupted(path, self.signum)

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}


def _raise_terminated(signum, frame):
    raise Terminated(signal_name(signum))


@contextmanager
def terminate_on_sigterm():
    """While the block runs (the whole ``dftnet`` command), SIGTERM raises :class:`Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
