"""The one path every structured layer call takes: dtypes, autocast, route choice, extreme values.

``structured_linear(structure, input, weight, bias, method)`` computes ``input @ W.T + bias`` for a
:mod:`dftnet._dispatch.routes` structure (circulant or block-circulant), after the functional form has checked
shapes and types:

1. Under ``torch.autocast`` (float32 and below) the product runs in float32 and returns the autocast
   dtype; half types are computed in float32 unless ``method="dense"`` (FFTs of half types are
   unsupported on CPU and power-of-two only on CUDA).
2. The dense route (multiply by the materialised matrix) where the structure's cost model says it is
   cheaper, for empty inputs, or with ``method="dense"``; otherwise the FFT route.
3. Eager autograd gets the hand-written kernels. Tracers and transforms (torch.compile, torch.export,
   torch.jit.trace, torch.func) and forward-mode AD get the structure's reference form, plain
   differentiable torch ops: one graph, no branch on the batch size (the cost model then assumes a batch
   of ``TRACE_BATCH`` rows unless the batch is a plain int), and autograd derives jvp, vmap and higher
   derivatives.
4. Nothing here reads a tensor's values on the host: no device synchronisation. With
   ``exact_extremes=True`` (one sync per call) inputs or weights with inf, nan or extreme magnitudes
   (outside ``2^+-40`` in float32) go through :func:`_fft_guarded`, which gives what the dense product
   gives; by default an inf or nan input makes its row's outputs nan (as any FFT does), and magnitudes
   up to about ``1e30`` keep float32 accuracy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._compat import grad_recorded, has_tangent, in_dual_level, tracing
from .routes import Structure

__all__ = ["structured_linear", "route"]

TRACE_BATCH = 128

# Inputs and weights whose magnitudes stay within 2^+-_SAFE_EXP give FFT sums that neither overflow nor
# fall into denormals in float32 for any n up to 2^26; outside, see _fft_guarded.
_SAFE_EXP = 40


_HALF = (torch.float16, torch.bfloat16)


def structured_linear(structure: Structure, input: Tensor, weight: Tensor, bias: Tensor | None, method: str,
                      exact_extremes: bool = False, diagonal: Tensor | None = None) -> Tensor:
    """``(diagonal * input) @ W.T + bias``. ``diagonal`` (p,), of the input's dtype, is multiplied in first,
    except on the eager FFT route of a structure that ``fuses_diagonal`` (its Function then saves the input
    alone, not also the product)."""
    if diagonal is not None and not structure.fuses_diagonal:
        input, diagonal = input * diagonal, None
    dtype = input.dtype
    device_type = "cpu" if input.is_cpu else input.device.type
    if torch.is_autocast_enabled(device_type) and dtype != torch.float64:
        with torch.autocast(device_type, enabled=False):
            return _in_float32(structure, input, weight, bias, method, exact_extremes,
                               torch.get_autocast_dtype(device_type), diagonal)
    if weight.dtype != dtype or (bias is not None and bias.dtype != dtype):
        raise TypeError(
            f"{structure.name}: expected input, weight and bias of one dtype, got input {dtype}, "
            f"weight {weight.dtype}" + ("" if bias is None else f", bias {bias.dtype}")
        )
    if dtype in _HALF and method != "dense":
        return _in_float32(structure, input, weight, bias, method, exact_extremes, dtype, diagonal)
    reference = tracing() or (in_dual_level() and has_tangent(input, weight, bias, diagonal))
    training = grad_recorded(input, weight, diagonal)
    batch = input.numel() // max(input.shape[-1], 1)
    if not isinstance(batch, int):  # a symbolic batch (dynamic shapes): decide once, for every batch
        batch = TRACE_BATCH
    fft = route(structure, method, batch, device_type, training) == "fft"
    if diagonal is not None and (reference or exact_extremes or not fft):
        input, diagonal = input * diagonal, None
    if not fft:
        if reference:
            return torch.nn.functional.linear(input, structure.matrix(weight), bias)
        return structure.dense(input, weight, bias, training)
    if reference:
        return structure.reference(input, weight, bias)
    if exact_extremes and not _in_safe_range(input, structure.weight(weight)):
        out = _fft_guarded(structure, input, weight)
        return out if bias is None else out + bias
    return structure.fft(input, weight, bias) if diagonal is None else structure.fft(input, weight, bias, diagonal)


def route(structure: Structure, method: str, batch: int, device_type: str, training: bool) -> str:
    """The route of a call on ``batch`` rows: "dense" for ``method="dense"``, an empty batch, or where
    ``method="auto"`` and the structure's cost model says the dense product is cheaper; otherwise "fft".
    ``training``: whether autograd records the call."""
    if method == "dense" or batch == 0 or (method == "auto" and structure.dense_cheaper(batch, device_type, training)):
        return "dense"
    return "fft"


def _in_float32(structure, input, weight, bias, method, exact_extremes, out_dtype, diagonal=None) -> Tensor:
    b = None if bias is None else bias.float()
    d = None if diagonal is None else diagonal.float()
    return structured_linear(structure, input.float(), weight.float(), b, method, exact_extremes, d).to(out_dtype)


def _in_safe_range(input: Tensor, weight: Tensor) -> bool:
    """Two passes over the input and one sync: are all values finite, and every non-zero row's and the
    weight's largest magnitude moderate? (False sends the call to :func:`_fft_guarded`.)"""
    big = 2.0 ** (_SAFE_EXP if input.dtype != torch.float64 else 16 * _SAFE_EXP)
    x = input.detach()
    # max |x| per row from amax and amin: ~10x faster than vector_norm(ord=inf) on CPU (measured);
    # few ops, since each small op costs microseconds next to the FFTs of a small layer
    row_max = torch.maximum(x.amax(-1), x.amin(-1).neg_())
    w_min, w_max = torch.aminmax(weight.detach())
    lo, hi, w_lo, w_hi = torch.stack([*torch.aminmax(row_max), w_min, w_max]).tolist()
    if lo == 0 and hi > 0:  # rows of zeros (dead ReLUs) are safe: the smallest non-zero row counts
        lo = torch.where(row_max > 0, row_max, math.inf).amin().item()
    w_abs = max(w_hi, -w_lo)
    # False for nan and inf too (comparisons with nan are False; amax propagates nan)
    return hi < big and w_abs < big and (lo > 1 / big or hi == 0) and (w_abs > 1 / big or w_abs == 0)


def _fft_guarded(structure, input: Tensor, weight: Tensor) -> Tensor:
    """The FFT route for extreme inputs, giving what the dense product would.

    Non-finite entries (inf, nan) are taken out of the FFT, which would smear them over every output
    as nan, and added back through the matching dense columns, so inf stays inf where the dense
    product has inf. Each row and the weight are scaled by powers of two (exact) into a moderate
    range before the FFT and the result scaled back, so huge or tiny values lose no precision.
    """
    finite = torch.isfinite(input)
    zero = torch.zeros((), dtype=input.dtype, device=input.device)
    clean = torch.where(finite, input, zero)
    # exact powers of two (torch.ldexp's backward loses negative exponents, so build the factors)
    row_exp = torch.frexp(clean.detach().abs().amax(-1, keepdim=True)).exponent.to(input.dtype)
    w_exp = torch.frexp(weight.detach().abs().amax()).exponent.to(input.dtype)
    out = structure.fft(clean * torch.exp2(-row_exp), weight * torch.exp2(-w_exp), None)
    out = out * torch.exp2(row_exp) * torch.exp2(w_exp)
    if not bool(finite.all()):
        rows = ~finite.all(-1)
        extreme = torch.where(finite, zero, input)
        fix = torch.zeros_like(out)
        fix[rows] = torch.nn.functional.linear(extreme[rows], structure.matrix(weight))
        out = out + fix
    return out
