"""The FFT kernels of a DFT layer and their exact, hand-derived gradients.

Notation: input ``x`` has shape (..., p), weight ``w`` shape (n,), n = max(p, q), and the layer is the
q x p matrix ``W[i, j] = w[(i + j) % n]``. ``L`` is the FFT length (:mod:`dftnet.plan`), ``F = L // 2 + 1``.

Forward, a correlation:      z[i]   = sum_j w[(i + j) % n] x[j]       = irfft(conj(X) * Wf, L)[:q]
grad_input, a correlation:   gx[j]  = sum_i w[(i + j) % n] g[i]       = irfft(conj(G) * Wf, L)[:p]
grad_weight, a convolution:  gw[k]  = sum_batch sum_{(i+j)%n=k} g[i] x[j]
                                    = fold_n(irfft(sum_batch G * X, L))

with X = rfft(x, L), G = rfft(g, L) and Wf the spectrum of the weight's taps (:func:`weight_taps`).
``W^T`` is the p x q layer with the same weight, so grad_input is the forward of the transposed layer.
The batch sum of grad_weight happens in the frequency domain, then ONE inverse FFT.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from .plan import Plan


def transpose_plan(plan: Plan) -> Plan:
    """The plan of W^T: the p x q layer with the same weight and the same FFT length."""
    return Plan(plan.out_features, plan.in_features, plan.n, plan.fft_size)


def weight_taps(weight: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Taps whose length-L correlation with the zero-padded input gives the layer's outputs.

    Circular route (L = n): the weight itself. Linear route (L >= p + q - 1): the weight extended
    periodically to p + q - 1 taps, ``taps[m] = w[m % n]``.
    """
    if plan.circular:
        return weight
    n_taps = plan.in_features + plan.out_features - 1
    reps = -(-n_taps // plan.n)
    return weight.repeat(reps)[:n_taps]


def fold_taps(taps_grad: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Adjoint of :func:`weight_taps`: sum the gradient of tap m into weight index m % n."""
    if plan.circular:
        return taps_grad[: plan.n]
    n = plan.n
    n_taps = plan.in_features + plan.out_features - 1
    reps = -(-n_taps // n)
    g = taps_grad[:n_taps]
    if reps * n > n_taps:
        g = torch.nn.functional.pad(g, (0, reps * n - n_taps))
    return g.reshape(reps, n).sum(0)


def weight_spectrum(weight: torch.Tensor, plan: Plan) -> torch.Tensor:
    """``conj(rfft(taps, L))``: the conjugate spectrum is what the kernels multiply by."""
    return torch.fft.rfft(weight_taps(weight, plan), plan.fft_size).conj().resolve_conj()


def _correlate(spectrum: torch.Tensor, cWf: torch.Tensor, L: int, length: int) -> torch.Tensor:
    """``irfft(conj(spectrum) * Wf, L)[..., :length]``, without conjugating the big spectrum.

    For real signals ``irfft(conj(Y))[m] = irfft(Y)[-m mod L]``, so we transform
    ``Y = spectrum * conj(Wf)`` and read its outputs in reverse order (one copy, which also makes
    the truncated result contiguous).
    """
    z = torch.fft.irfft(spectrum * cWf, L)
    if length == 1:
        return z[..., :1].clone()
    return torch.cat([z[..., :1], z[..., L - length + 1 :].flip(-1)], -1)  # z[-i mod L], i < length


def _sum_leading(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).sum(0)


def dft_forward(x: torch.Tensor, weight: torch.Tensor, plan: Plan) -> torch.Tensor:
    """The forward kernel alone (no autograd bookkeeping): for inference."""
    L = plan.fft_size
    return _correlate(torch.fft.rfft(x, L), weight_spectrum(weight, plan), L, plan.out_features)


class DFTLinearFunction(Function):
    """z = W x for the q x p DFT matrix W. Returns (z, X, conj(Wf)), the last two non-differentiable by-products.

    Saved for backward: the input x (needed for double backward and, in memory-saving mode, to rebuild
    X), the weight (for double backward), the conjugate weight spectrum (O(L), reused by grad_input) and, unless
    ``save_spectrum`` is False, the input spectrum X (so that backward needs only 2 batched FFTs).
    This is what a plain torch.fft autograd implementation saves (x and X); without X it is half.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, plan: Plan, save_spectrum: bool):
        L = plan.fft_size
        cWf = weight_spectrum(weight, plan)
        X = torch.fft.rfft(x, L)
        return _correlate(X, cWf, L, plan.out_features), X, cWf

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, plan, save_spectrum = inputs
        _, X, cWf = output
        ctx.plan = plan
        ctx.mark_non_differentiable(X, cWf)
        # x itself is needed only to rebuild X, or as a graph input for double backward; a constant
        # input (the data batch) with its spectrum saved is not kept (plain autograd does not keep it).
        keep_x = not save_spectrum or x.requires_grad
        ctx.save_for_backward(x if keep_x else None, weight, cWf, X if save_spectrum else None)

    @staticmethod
    def backward(ctx, grad_out, _grad_X, _grad_Wf):
        x, weight, cWf, X = ctx.saved_tensors
        plan = ctx.plan
        need_x, need_w = ctx.needs_input_grad[:2]
        grad_x = grad_w = None
        if torch.is_grad_enabled():
            # create_graph=True: build the gradients from differentiable pieces (double backward).
            if need_x:
                grad_x = DFTLinearFunction.apply(grad_out, weight, transpose_plan(plan), False)[0]
            if need_w:
                if x is None:  # a constant input: rebuild it from its spectrum (exact to rounding)
                    x = torch.fft.irfft(X, plan.fft_size)[..., : plan.in_features]
                grad_w = DFTWeightGradFunction.apply(grad_out, x, plan)
            return grad_x, grad_w, None, None
        L = plan.fft_size
        G = torch.fft.rfft(grad_out, L)
        if need_x:
            grad_x = _correlate(G, cWf, L, plan.in_features)
        if need_w:
            if X is None:
                X = torch.fft.rfft(x, L)
            # G is ours to overwrite, except under torch.func transforms (batched/unbatched mixes)
            GX = G * X if torch._C._are_functorch_transforms_active() else G.mul_(X)
            grad_w = fold_taps(torch.fft.irfft(_sum_leading(GX), L), plan)
        return grad_x, grad_w, None, None


class DFTWeightGradFunction(Function):
    """gw = sum_batch conv_n(g, x): the weight gradient as a differentiable bilinear map of (g, x).

    Its own gradients are DFT layers with the incoming gradient u as weight:
    d<u, gw>/dg = W_u x (q x p layer), d<u, gw>/dx = W_u^T g (p x q layer).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, x, plan: Plan):
        L = plan.fft_size
        S = _sum_leading(torch.fft.rfft(grad_out, L) * torch.fft.rfft(x, L))
        return fold_taps(torch.fft.irfft(S, L), plan)

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
        dg = dx = None
        if need_g:
            dg = DFTLinearFunction.apply(x, u, plan, False)[0]
        if need_x:
            dx = DFTLinearFunction.apply(grad_out, u, transpose_plan(plan), False)[0]
        return dg, dx, None


def circulant_view(weight: torch.Tensor, p: int, q: int) -> torch.Tensor:
    """The q x p matrix ``w[(i + j) % n]`` as a strided view of ``[w, w]`` (row i starts at i):
    no index tensor, no gather. Differentiable (cat and as_strided), so double backward can use it."""
    return torch.cat([weight, weight]).as_strided((q, p), (1, 1)).contiguous()  # BLAS needs unit stride


def _fold_dense_grad(gW: torch.Tensor, n: int) -> torch.Tensor:
    """Adjoint of W[i, j] = w[(i + j) % n]: sum the anti-diagonals of gW, then fold modulo n.

    Skew trick: pad each row with q zeros, flatten, and re-read with row length p + q - 1, so that
    entry (i, j) lands in column i + j; a column sum gives the anti-diagonal sums.
    """
    q, p = gW.shape
    width = p + q - 1
    skewed = torch.nn.functional.pad(gW, (0, q)).reshape(-1)[: q * width].reshape(q, width)
    diag = skewed.sum(0)  # diag[m] = sum_{i + j = m} gW[i, j]
    reps = -(-width // n)
    return torch.nn.functional.pad(diag, (0, reps * n - width)).reshape(reps, n).sum(0)


class DenseDFTFunction(Function):
    """The dense route, ``x @ W^T`` with the materialised matrix, saving only x and w (not W).

    W is rebuilt in backward (a strided copy of q * p values), so the route never keeps more than
    the FFT route for backward, whatever the batch. Backward is built from differentiable ops, so
    the same code serves double backward.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, p: int, q: int):
        return x @ circulant_view(weight, p, q).T

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, p, q = inputs
        ctx.shape = (p, q)
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        p, q = ctx.shape
        need_x, need_w = ctx.needs_input_grad[:2]
        gx = gw = None
        if need_x:
            gx = g @ circulant_view(weight, p, q)
        if need_w:
            gw = _fold_dense_grad(g.reshape(-1, q).T @ x.reshape(-1, p), weight.shape[0])
        return gx, gw, None, None
