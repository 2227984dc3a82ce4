"""The one place that touches private PyTorch APIs, and the tests of which autograd mode is running
(:func:`grad_recorded`: does autograd record a call on these tensors).

``torch._C._are_functorch_transforms_active`` tells whether a ``torch.func`` transform (grad, vmap,
jacrev, ...) is running. The fast kernels work in place and use the classic ``autograd.Function`` form,
which functorch cannot see through, so under a transform the layer takes its out-of-place path. There is
no public equivalent in torch 2.4-2.13. If the private function disappears, ``functorch_active`` falls
back to ``False`` only where torch.func itself is absent; otherwise update this module to the new API.

``torch._C._functorch.is_legacy_batchedtensor`` tells whether a gradient is batched by the autograd
engine's own vmap (``torch.autograd.grad(..., is_grads_batched=True)``, ``jacobian``/``hessian`` with
``vectorize=True``, gradcheck's batched checks): the hand-written backward then takes out-of-place ops
that this vmap can batch. Also private, the same policy.

The others, each with no public equivalent in torch 2.4-2.13:

* ``Tensor._version`` (:func:`version_counter`): the counter every in-place write bumps; the layers' inference
  memo and the weight's write tracking (:mod:`dftnet.layers._weight`) key on it.
* ``torch._C.DisableTorchFunctionSubclass`` (:data:`no_torch_function_subclass`) and
  ``torch.utils._pytree`` (:func:`tree_flatten`, :func:`tree_map`): the weight's tensor subclass
  (:class:`dftnet.layers._weight.WeightView`), as PyTorch's own subclasses use them.

The application's own private-API shims (fake tensors, the memory tracker) are in
:mod:`dftnet.experiments.harness._compat`.
"""

from __future__ import annotations

import torch
from torch.autograd import forward_ad
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["functorch_active", "tracing", "intra_op_threads", "has_tangent", "in_dual_level", "cached",
           "batched_grad", "grad_recorded", "version_counter", "no_torch_function_subclass", "tree_flatten",
           "tree_map"]

_are_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)
_is_legacy_batched = getattr(getattr(torch._C, "_functorch", None), "is_legacy_batchedtensor", None)


no_torch_function_subclass = torch._C.DisableTorchFunctionSubclass


def functorch_active() -> bool:
    """True while a ``torch.func`` transform is active."""
    return bool(_are_transforms_active()) if _are_transforms_active is not None else False


def batched_grad(t: torch.Tensor) -> bool:
    """True if ``t`` is batched by the autograd engine's vmap over backward (``is_grads_batched``); one C
    call, about 0.1 us."""
    return _is_legacy_batched is not None and _is_legacy_batched(t)


def tracing() -> bool:
    """True while torch.compile, torch.export or ``torch.jit.trace`` traces, or a torch.func transform runs."""
    return torch.compiler.is_compiling() or functorch_active() or torch.jit.is_tracing()


@torch.compiler.assume_constant_result
def intra_op_threads() -> int:
    """``torch.get_num_threads()``; torch.compile, which cannot trace it, reads it once, as a constant of
    the graph (the route choices it feeds are exact either way)."""
    return torch.get_num_threads()


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


def grad_recorded(*tensors) -> bool:
    """True if autograd records a call on these tensors: grad mode is on and one of them (None: skipped)
    requires grad. The one form of this test in the package."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def version_counter(t: torch.Tensor) -> int | None:
    """``t._version``, or None for an inference tensor (made in inference mode), which has no counter."""
    return None if t.is_inference() else t._version
