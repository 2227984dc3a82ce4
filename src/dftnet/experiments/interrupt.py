"""Stopping training cleanly: Ctrl-C raises a flag that the loop checks between steps, and training
then ends with a resumable checkpoint (:class:`TrainingInterrupted`)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

__all__ = ["TrainingInterrupted", "StopFlag", "STOP_AFTER_STEPS"]

# Test hook: when > 0, the flag rises after this many steps of this process, a deterministic stand-in
# for Ctrl-C. The tests set it (in subprocesses through a small wrapper, under torchrun too).
STOP_AFTER_STEPS = 0


class TrainingInterrupted(Exception):
    """Ctrl-C: training stopped after a step, with a resumable checkpoint at ``path``."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


class StopFlag:
    """Turns the first SIGINT into a flag the loop checks between steps (so no step is cut in half)."""

    def __init__(self):
        self.set = False
        self.steps = 0
        self.stop_after = STOP_AFTER_STEPS
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.set:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.set = True

    def check(self) -> bool:
        """Count a step; True when training should stop after it."""
        self.steps += 1
        return self.set or (self.stop_after > 0 and self.steps >= self.stop_after)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
