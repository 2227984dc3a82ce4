"""Before the first step: will the run fit in memory? Refuse with one line when it cannot.

:func:`estimate` runs one training step of the run's model, at its batch size, on *fake* tensors
(``FakeTensorMode``, through :func:`dftnet.experiments.harness._compat.fake_tensor_mode`: shapes, dtypes and devices,
no storage), and counts it with the accounting of the memory report (:mod:`.memory`: PyTorch's
``MemTracker``, the same training step). The model is built inside the fake mode, so nothing of its size is
allocated; the same code path runs as in training (the layers' route choice included), and it takes a
fraction of a second.

The run's peak is more than one step. While the model is evaluated, and while the memory report measures
a step on a copy of the model at the end, the run also holds its own weights, gradients and AdamW state
(``resident``, 4 x the parameters' bytes). So the run needs ``resident + max(step, evaluation forward -
weights)``, plus one more copy of the gradients under DDP (its buckets). That is compared with what the
device has (:func:`available`): free RAM (the least of ``MemAvailable``, the cgroup's limit less its use,
and the address-space limit of ``ulimit -v`` less the process's size; times the processes of this host
under ``torchrun``), or free GPU memory (the driver's free memory plus what PyTorch's cache holds unused).

``FakeTensorMode`` is private (torch 2.4 to 2.13 have it unchanged; :mod:`dftnet.experiments.harness._compat`). If it
moves or a model's step cannot run on fake tensors, the estimate is skipped (None) and training goes on as before.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..tables import format_bytes
from ._compat import fake_tensor_mode
from .memory import _mem_tracker_peak, _one_step

__all__ = ["MemoryRefused", "Estimate", "estimate", "available", "refuse_if_too_big", "moved"]


class MemoryRefused(Exception):
    """The run's estimated peak memory exceeds what the device has: one line, exit status 2."""


@dataclass(frozen=True)
class Estimate:
    step: float  # peak bytes of one training step: weights, gradients, optimizer state, activations
    resident: float  # weights, gradients and AdamW state, held between steps
    evaluation: float  # peak of a no-grad forward at the evaluation batch, weights included
    param_bytes: float

    def run(self, distributed: bool = False) -> float:
        """The run's peak: see the module's docstring."""
        return (self.resident + max(self.step, self.evaluation - self.param_bytes)
                + (self.param_bytes if distributed else 0))


def _clear_caches() -> None:
    """Empty the layers' ``lru_cache``s (pure index and matrix caches), so that no tensor made under the
    fake mode outlives it and no real one enters it; they refill on first use."""
    for name, module in list(sys.modules.items()):
        if (name == "dftnet" or name.startswith("dftnet.")) and module is not None:
            for obj in list(vars(module).values()):
                if callable(getattr(obj, "cache_clear", None)) and hasattr(obj, "cache_info"):
                    obj.cache_clear()


def estimate(build, make_batch, batch: int, eval_batch: int) -> Estimate | None:
    """Peak memory of a step of ``build()`` (a model) on ``make_batch(batch)`` = (x, y), and of a no-grad
    forward at ``eval_batch``, on fake tensors; None when it cannot be estimated."""
    FakeTensorMode = fake_tensor_mode()
    if FakeTensorMode is None:  # pragma: no cover - the private module moved
        return None
    _clear_caches()
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a layer's memo reading a fake tensor's data_ptr
            model = build()
            params = float(sum(p.numel() * p.element_size() for p in model.parameters()))
            x, y = make_batch(batch)
            opt = torch.optim.Adam(model.parameters())
            step = _mem_tracker_peak(model, opt, lambda: _one_step(model, opt, x, y))
            ex, _ = make_batch(eval_batch)
            with torch.no_grad():
                evaluation = _mem_tracker_peak(model, opt, lambda: model(ex))
    except Exception:  # an op without a fake kernel, a data-dependent branch: no estimate
        return None
    finally:
        _clear_caches()
    if not (math.isfinite(step) and math.isfinite(evaluation)):
        return None
    return Estimate(step=step, resident=4 * params, evaluation=evaluation, param_bytes=params)


def moved(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model.to(device)`` for a model of fake tensors (``Module.to`` swaps fake parameters, which fails
    on tied weights): every parameter (once, so tied weights stay tied) and buffer remade on ``device``."""
    if device.type == "cpu":
        return model
    made = {}
    for m in model.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                if id(p) not in made:
                    made[id(p)] = torch.nn.Parameter(torch.empty_like(p, device=device), p.requires_grad)
                m._parameters[name] = made[id(p)]
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = torch.empty_like(b, device=device)
    return model


# ------------------------------------------------------------------------- what the device has


def _read(path) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cgroup_room() -> float | None:
    """The least of (memory.max - memory.current) over this process's cgroup (v2) and its parents, or
    of limit_in_bytes - usage_in_bytes (v1); None without a limit."""
    rooms = []
    own = _read("/proc/self/cgroup") or ""
    for line in own.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0":  # v2
            folder = Path("/sys/fs/cgroup") / parts[2].lstrip("/")
            while True:
                limit, used = _read(folder / "memory.max"), _read(folder / "memory.current")
                if limit and limit != "max" and used and limit.isdigit() and used.isdigit():
                    rooms.append(int(limit) - int(used))
                if folder == Path("/sys/fs/cgroup") or folder.parent == folder:
                    break
                folder = folder.parent
    limit = _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")  # v1
    used = _read("/sys/fs/cgroup/memory/memory.usage_in_bytes")
    if limit and used and limit.isdigit() and used.isdigit() and int(limit) < 2**60:
        rooms.append(int(limit) - int(used))
    return float(min(rooms)) if rooms else None


def _address_space_room() -> float | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmSize:"):
            return float(soft - int(line.split()[1]) * 1024)
    return float(soft)


def available(device: torch.device) -> tuple[float, str] | None:
    """(bytes, what they are) that a run on ``device`` can still allocate, or None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return float(free + cached), f"free memory on {device}"
    found = []
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            found.append((float(line.split()[1]) * 1024, "free RAM"))
    room = _cgroup_room()
    if room is not None:
        found.append((room, "room under the cgroup's memory limit"))
    room = _address_space_room()
    if room is not None:
        found.append((room, "room under the address-space limit (ulimit -v)"))
    return min(found) if found else None


# ------------------------------------------------------------------------- the refusal


def refuse_if_too_big(name: str, est: Estimate | None, device: torch.device, batch: int, distributed: bool,
                      lower: str) -> None:
    """Raise :class:`MemoryRefused` when ``est`` (for this process) times the processes sharing this
    host's RAM exceeds what ``device`` has; nothing when either is unknown."""
    have = available(device)
    if est is None or have is None:
        return
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    need = est.run(distributed) * processes
    if need <= have[0]:
        return
    each = f" ({processes} processes on this host)" if processes > 1 else ""
    raise MemoryRefused(
        f"{name} would need about {format_bytes(need)} at its peak{each} (a training step at batch {batch}: "
        f"{format_bytes(est.step)}, estimated), more than the {format_bytes(have[0])} of {have[1]}: lower {lower}, "
        "or pass --no-memory-check to try anyway")
