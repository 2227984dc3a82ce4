"""Measuring memory: the peak of one training step, and what autograd saves for backward."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from ._compat import mem_tracker

__all__ = ["peak_step_memory", "saved_tensor_bytes"]


def _one_step(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def peak_step_memory(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak tensor memory (bytes) of one Adam training step on a copy of ``model``: parameters,
    gradients, optimizer state, activations and temporaries. CUDA: the allocator's peak; CPU:
    PyTorch's ``MemTracker`` (tensor storages, not the process RSS). NaN if it cannot be measured.
    """
    device = x.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        m = copy.deepcopy(model)
        _one_step(m, torch.optim.Adam(m.parameters()), x, y)
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    m = copy.deepcopy(model)
    opt = torch.optim.Adam(m.parameters())
    return _mem_tracker_peak(m, opt, lambda: _one_step(m, opt, x, y))


def _mem_tracker_peak(model, opt, step) -> float:
    """Peak tensor bytes of ``step()`` on the CPU, by PyTorch's ``MemTracker``.

    ``MemTracker`` is private (``torch.distributed._tools.mem_tracker``, reached through
    :func:`._compat.mem_tracker`): torch has no public peak counter for CPU tensor memory. If the
    module moves, this returns NaN (the "peak memory" of ``dftnet train`` then reads nan) and nothing else
    breaks; if its interface changes, the error shows here. Either way, update ``_compat`` and the four
    calls below to the new location/interface, or measure on CUDA, whose allocator counts peaks publicly.
    """
    MemTracker = mem_tracker()
    if MemTracker is None:  # pragma: no cover - the private module moved
        return math.nan
    tracker = MemTracker()
    tracker.track_external(model, opt)
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")
    return float(sum(v.get("Total", 0) for v in peak.values()))


def saved_tensor_bytes(fn, *args, unique: bool = False) -> int:
    """Bytes autograd saves for backward while running ``fn(*args)`` (``saved_tensors_hooks``).

    ``unique=True`` counts each storage once (what is really kept alive); otherwise every saved
    tensor counts in full, as a plain sum over the hooks would.
    """
    total, seen = 0, set()

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.device)
        if not unique or key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes() if unique else t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return total
