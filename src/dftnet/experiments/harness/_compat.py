"""The application's uses of private PyTorch APIs, each with no public equivalent in torch 2.4-2.13 (the
core's are in :mod:`dftnet._compat`):

* ``torch._subclasses.fake_tensor.FakeTensorMode`` (:func:`fake_tensor_mode`): the memory estimate of a
  training step before anything is allocated (:mod:`.preflight`). None where it moved.
* ``torch.distributed._tools.mem_tracker`` (:func:`mem_tracker`): the peak tensor memory of a CPU step
  (:mod:`.memory`); torch has no public peak counter for CPU tensor memory. None where the module moved
  (then the experiments report nan).
"""

from __future__ import annotations

__all__ = ["fake_tensor_mode", "mem_tracker"]


def fake_tensor_mode():
    """``torch._subclasses.fake_tensor.FakeTensorMode`` (tensors with shapes, dtypes and devices but no
    storage; present in torch 2.4 to 2.13), or None if the private module moved."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
    except ImportError:  # pragma: no cover - the private module moved
        return None
    return FakeTensorMode


def mem_tracker():
    """``torch.distributed._tools.mem_tracker.MemTracker`` (present in torch 2.4 to 2.13), or None if the
    private module moved."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:  # pragma: no cover - the private module moved
        return None
    return MemTracker
