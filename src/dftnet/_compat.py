"""The one place that touches private PyTorch APIs, and the tests of which autograd mode is running.

``torch._C._are_functorch_transforms_active`` tells whether a ``torch.func`` transform (grad, vmap,
jacrev, ...) is running. The fast kernels work in place and use the classic ``autograd.Function`` form,
which functorch cannot see through, so under a transform the layer takes its out-of-place path. There is
no public equivalent in torch 2.4-2.13. If the private function disappears, ``functorch_active`` falls
back to ``False`` only where torch.func itself is absent; otherwise update this module to the new API.
"""

from __future__ import annotations

import torch
from torch.autograd import forward_ad

__all__ = ["functorch_active", "tracing", "has_tangent", "in_dual_level", "cached"]

_are_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def functorch_active() -> bool:
    """True while a ``torch.func`` transform is active."""
    return bool(_are_transforms_active()) if _are_transforms_active is not None else False


def tracing() -> bool:
    """True while torch.compile or torch.export traces, or a torch.func transform runs."""
    return torch.compiler.is_compiling() or functorch_active()


def in_dual_level() -> bool:
    """True inside a ``forward_ad.dual_level()`` (only there can tensors carry tangents)."""
    return getattr(forward_ad, "_current_level", 0) >= 0


def has_tangent(*tensors) -> bool:
    """True if any tensor carries a forward-mode AD tangent (``torch.autograd.forward_ad``; public API).

    Tangents exist only inside a ``forward_ad.dual_level()``; outside one the per-tensor check is skipped."""
    if not in_dual_level():
        return False
    return any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def cached(fn, *args):
    """``fn(*args)`` for a ``functools.lru_cache`` function, computed afresh while torch.compile traces
    (dynamo warns about lru_cache wrappers; the functions cached this way are pure)."""
    return fn.__wrapped__(*args) if torch.compiler.is_compiling() else fn(*args)
