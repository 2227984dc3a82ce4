"""The DFT layer's autograd Functions: the row kernels of :mod:`dftnet.kernels.circulant` with their exact,
hand-derived backward (notation there), for eager autograd; tracers and transforms use
:func:`~dftnet.kernels.circulant_reference.dft_reference` instead."""

from __future__ import annotations

import torch
from torch.autograd import Function

from .._compat import batched_grad
from ..plan import Plan
from .circulant import _backward_rows, _forward, _rows, transpose_plan
from .circulant_reference import dft_reference
from .taps import WEIGHT, ParamKind, fold_taps

__all__ = ["DFTLinearFunction", "dft_linear_autograd", "DFTWeightGradFunction"]


def _backward(ctx, grad_out):
    x, param, cWf, X, diag = ctx.saved_tensors
    if batched_grad(grad_out):  # the autograd engine's vmap (is_grads_batched): out-of-place ops only
        return _backward_batched(ctx, grad_out, x, param, X, diag)
    plan, kind = ctx.plan, ctx.kind
    need_x, need_w, need_b, need_d = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2], \
        ctx.needs_input_grad[6]
    grad_x = grad_w = grad_b = gxd = None
    grad_out = grad_out.contiguous()  # one layout into the FFTs and the bias's sum, as for the input
    if need_b:
        grad_b = _rows(grad_out).sum(0)
    if torch.is_grad_enabled():
        # create_graph=True: build the gradients from differentiable pieces (double backward).
        weight = kind.weight(param)
        if need_x or need_d:
            gxd = dft_linear_autograd(grad_out, weight, None, transpose_plan(plan), False)
        if need_w:
            if x is None:  # a constant input: rebuild it from its spectrum (exact to rounding)
                xd = torch.fft.irfft(X, plan.fft_size)[:, : plan.in_features].reshape(ctx.input_shape)
            else:
                xd = x if diag is None else x * diag
            grad_w = kind.from_weight_grad(DFTWeightGradFunction.apply(grad_out, xd, plan))
        return (*_diagonal_chain(gxd, x, diag, need_x, need_d), grad_w, grad_b)
    x2 = None if x is None or X is not None or not need_w else _rows(x)
    invert = kind.inverts_gradient(plan)
    grad_x, grad_d, S = _backward_rows(_rows(grad_out), x2, X, cWf, plan, need_x, need_w, invert, diag,
                                       None if x is None else _rows(x), need_d)
    if need_w:
        grad_w = kind.grad(S, plan)
    if grad_x is not None and len(ctx.input_shape) != 2:
        grad_x = grad_x.reshape(ctx.input_shape)
    return grad_x, grad_d, grad_w, grad_b


def _diagonal_chain(gxd, x, diag, need_x: bool, need_d: bool) -> tuple:
    """``(grad_x, grad_diag)`` from the gradient ``gxd`` of the kernel's input ``x * diag``."""
    if diag is None:
        return gxd if need_x else None, None
    grad_x = gxd * diag if need_x else None
    grad_d = (gxd * x).reshape(-1, diag.shape[-1]).sum(0) if need_d else None
    return grad_x, grad_d


def _backward_batched(ctx, grad_out, x, param, X, diag):
    """The gradients from plain out-of-place torch ops: :func:`dft_reference` of W^T, and the weight
    gradient's convolution from the input (or its saved spectrum X). For gradients batched by the autograd
    engine's vmap, whose fallback cannot run the kernels' in-place and ``out=`` ops; differentiable, so
    ``create_graph=True`` works too."""
    plan, kind = ctx.plan, ctx.kind
    need_x, need_w, need_b, need_d = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2], \
        ctx.needs_input_grad[6]
    grad_w = grad_b = gxd = None
    if need_b:
        grad_b = _rows(grad_out).sum(0)
    if need_x or need_d:
        gxd = dft_reference(grad_out, kind.weight(param), None, transpose_plan(plan)).contiguous()
    if need_w:
        xd = None if x is None else (x if diag is None else x * diag)
        grad_w = _weight_grad(grad_out, X if xd is None else torch.fft.rfft(_rows(xd), plan.fft_size), plan)
        grad_w = kind.from_weight_grad(grad_w)
    return (*_diagonal_chain(gxd, x, diag, need_x, need_d), grad_w, grad_b)


def _weight_grad(grad_out: torch.Tensor, X: torch.Tensor, plan: Plan) -> torch.Tensor:
    """``fold_n(irfft(sum_batch G * X, L))`` with ``G = rfft(grad_out, L)`` and X the input's (rows, F)
    spectrum: the weight gradient from plain out-of-place ops."""
    L = plan.fft_size
    return fold_taps(torch.fft.irfft((torch.fft.rfft(_rows(grad_out), L) * X).sum(0), L), plan)


class DFTLinearFunction(Function):
    """z = W (d * x) + b for the q x p DFT matrix W with the hand-derived backward, for eager autograd.

    ``param`` is the weight or the layer's stored spectrum, as ``kind`` says; ``diag`` an optional (p,)
    diagonal applied to the input first (the layer's learned diagonal: its product with x is a temporary,
    rebuilt in backward where needed, not a second saved copy of the input). Saved for backward: the
    input x where it is needed (for the diagonal's gradient, to rebuild X, or as a graph input for double
    backward), the parameter, the conjugate weight spectrum (O(L), reused by grad_input) and, if
    ``save_spectrum``, the input spectrum X, so that backward needs 2 batched FFTs instead of 3. X has
    L + 2 reals per row against p for x: the layers save it only where x is not kept anyway
    (:meth:`dftnet._dispatch.routes.Circulant.fft`).

    The classic ``forward(ctx, ...)`` form: ``apply`` of a ``setup_context`` Function binds its arguments
    with ``inspect.signature`` on every call, which cost ~100 us per forward+backward here (measured).
    torch.compile, torch.export, torch.func and forward-mode AD use :func:`dft_reference` instead."""

    @staticmethod
    def forward(ctx, x, param, bias, plan: Plan, save_spectrum: bool, kind: ParamKind, diag=None):
        # one layout into the FFTs (a copy for a strided input): a strided input gives what its contiguous
        # copy gives, to the bit (MKL's FFTs and the batch sums round differently on other layouts)
        x = x.contiguous()
        z, X, cWf = _forward(x, param, bias, plan, save_spectrum, kind, None, diag)
        ctx.plan, ctx.kind, ctx.input_shape = plan, kind, x.shape
        # x itself is needed to rebuild X, for the diagonal's gradient, or as a graph input for double
        # backward; a constant input (the data batch) with its spectrum saved is not kept.
        keep_x = not save_spectrum or x.requires_grad or diag is not None
        ctx.save_for_backward(x if keep_x else None, param, cWf, X if save_spectrum else None, diag)
        return z

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_d, grad_w, grad_b = _backward(ctx, grad_out)
        return grad_x, grad_w, grad_b, None, None, None, grad_d


def dft_linear_autograd(x, param, bias, plan: Plan, save_spectrum: bool, kind: ParamKind = WEIGHT, diag=None):
    """``z = (d * x) W^T + b`` (``d`` = ``diag``, or 1) with the hand-derived backward (eager autograd)."""
    return DFTLinearFunction.apply(x, param, bias, plan, save_spectrum, kind, diag)


class DFTWeightGradFunction(Function):
    """gw = sum_batch conv_n(g, x): the weight gradient as a differentiable bilinear map of (g, x).

    Its own gradients are DFT layers with the incoming gradient u as weight:
    d<u, gw>/dg = W_u x (q x p layer), d<u, gw>/dx = W_u^T g (p x q layer).
    """

    @staticmethod
    def forward(grad_out, x, plan: Plan):
        return _weight_grad(grad_out, torch.fft.rfft(_rows(x), plan.fft_size), plan)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, x, plan = inputs
        ctx.plan = plan
        ctx.save_for_backward(grad_out, x)

    @staticmethod
    def backward(ctx, u):
        grad_out, x = ctx.saved_tensors
        plan = ctx.plan
        need_g, need_x = ctx.needs_input_grad[:2]
        if batched_grad(u):  # the autograd engine's vmap: the reference form (out-of-place ops)
            dg = dft_reference(x, u, None, plan) if need_g else None
            dx = dft_reference(grad_out, u, None, transpose_plan(plan)) if need_x else None
            return dg, dx, None
        dg = dx = None
        if need_g:
            dg = dft_linear_autograd(x, u, None, plan, False)
        if need_x:
            dx = dft_linear_autograd(grad_out, u, None, transpose_plan(plan), False)
        return dg, dx, None
