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

from ..plan import Plan


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


# Row chunks: the fast kernels transform CHUNK_BYTES of spectrum at a time, so a chunk's spectra stay in the
# last-level cache between its FFTs and its elementwise passes, and no (batch, L) temporary is allocated
# beyond the result and the saved spectrum (fresh large allocations cost page faults on CPU). A chunk has at
# least MIN_CHUNK_ROWS rows: every FFT call has a fixed cost of O(L). Measured with `dftnet bench`.
CHUNK_BYTES = 16 << 20
MIN_CHUNK_ROWS = 8
# Up to this many rows, the weight's FFT rides in the same call as the input's, and the weight gradient's
# inverse FFT in the same call as grad_input's: for a few rows, a call's fixed cost exceeds the copies.
SMALL_BATCH_ROWS = 16


def _chunk_rows(L: int, spectrum_dtype: torch.dtype, M: int) -> int:
    """Rows per chunk for M rows: at most CHUNK_BYTES of spectrum, and chunks of equal size (not 127 + 1)."""
    row_bytes = (L // 2 + 1) * spectrum_dtype.itemsize
    rows = max(MIN_CHUNK_ROWS, CHUNK_BYTES // row_bytes)
    chunks = -(-M // rows)
    return max(1, -(-M // chunks)) if chunks > 1 else rows


def _spectra(x2: torch.Tensor, weight: torch.Tensor, plan: Plan) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(X, conj(Wf))``: for a few rows, X = rfft(x2, L) and the weight's spectrum from one batched FFT
    of [x2; taps]; otherwise X is None (computed chunk by chunk) and the weight is transformed alone."""
    M, p = x2.shape
    small = 0 < M <= min(SMALL_BATCH_ROWS, _chunk_rows(plan.fft_size, x2.dtype.to_complex(), M))
    if not small:
        return None, weight_spectrum(weight, plan)
    taps = weight_taps(weight, plan)
    buf = x2.new_zeros(M + 1, max(p, taps.shape[0]))
    buf[:M, :p] = x2
    buf[M, : taps.shape[0]] = taps
    spectra = torch.fft.rfft(buf, plan.fft_size)
    return spectra[:M], spectra[M].conj_physical_()


def _correlate_rows(
    x2: torch.Tensor, cWf: torch.Tensor, L: int, length: int, bias: torch.Tensor | None, keep: bool,
    X: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(irfft(conj(X) * Wf, L)[:, :length] (+ bias), X if keep else None)`` with ``X = rfft(x2, L)``,
    for the rows of ``x2`` (M, p); ``X`` may be given already computed (used for a single chunk).

    ``conj(X) * Wf = conj(X * conj(Wf))``: we multiply by the saved conjugate spectrum and conjugate the
    product in place. X is kept (for backward) only if ``keep``; otherwise it is overwritten.
    """
    M = x2.shape[0]
    rows = _chunk_rows(L, cWf.dtype, M)
    if M <= rows:  # one chunk: the FFT's output is the result, no copy
        if X is None:
            X = torch.fft.rfft(x2, L)
        z = torch.fft.irfft((X * cWf if keep else X.mul_(cWf)).conj_physical_(), L)
        if length == L:
            out = z if bias is None else z.add_(bias)
        else:
            out = z[:, :length].contiguous() if bias is None else torch.add(z[:, :length], bias)
        return out, (X if keep else None)
    out = x2.new_empty(M, length)
    X = cWf.new_empty(M, L // 2 + 1) if keep else None
    for s in range(0, M, rows):
        Xc = torch.fft.rfft(x2[s : s + rows], L)
        if keep:
            X[s : s + rows] = Xc
        z = torch.fft.irfft(Xc.mul_(cWf).conj_physical_(), L)[:, :length]
        if bias is None:
            out[s : s + rows] = z
        else:
            torch.add(z, bias, out=out[s : s + rows])
    return out, X


def _backward_rows(
    g2: torch.Tensor, x2: torch.Tensor | None, X: torch.Tensor | None, cWf: torch.Tensor, plan: Plan,
    need_x: bool, need_w: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """grad_input ``irfft(conj(G) * Wf)[:, :p]`` and the gradient of the taps ``irfft(sum_rows G * X)``.

    ``G = rfft(g2, L)``; X is the saved input spectrum, or recomputed from ``x2`` chunk by chunk.
    """
    L, p = plan.fft_size, plan.in_features
    spectrum = lambda rows: X[rows] if X is not None else torch.fft.rfft(x2[rows], L)  # noqa: E731
    M = g2.shape[0]
    rows = _chunk_rows(L, cWf.dtype, M)
    if need_x and need_w and 0 < M <= min(SMALL_BATCH_ROWS, rows):  # one inverse FFT for both gradients
        G = torch.fft.rfft(g2, L)
        both = cWf.new_empty(M + 1, L // 2 + 1)
        torch.sum(G * spectrum(slice(None)), 0, out=both[M])
        torch.mul(G, cWf, out=both[:M]).conj_physical_()
        z = torch.fft.irfft(both, L)
        return z[:M, :p].contiguous(), z[M]
    gx = g2.new_empty(M, p) if need_x and M > rows else None
    S = cWf.new_zeros(L // 2 + 1) if need_w else None
    for s in range(0, M, rows):
        chunk = slice(s, s + rows)
        Gc = torch.fft.rfft(g2[chunk], L)
        if need_w:
            Xc = spectrum(chunk)
            S += (Gc * Xc if X is not None else Xc.mul_(Gc)).sum(0)
        if need_x:
            z = torch.fft.irfft(Gc.mul_(cWf).conj_physical_(), L)[:, :p]
            if gx is None:  # one chunk: no copy where the FFT's output is the result
                gx = z if p == L else z.contiguous()
            else:
                gx[chunk] = z
    return gx, None if S is None else torch.fft.irfft(S, L)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def dft_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan
) -> torch.Tensor:
    """The forward kernel alone (no autograd bookkeeping): for inference."""
    return _forward(x, weight, bias, plan, False)[0]


def _forward(x, weight, bias, plan: Plan, save_spectrum: bool):
    """(z, X, conj(Wf)): the layer's output, the input spectrum (empty unless ``save_spectrum``; shape
    (rows, L // 2 + 1), the leading dimensions flattened) and the conjugate weight spectrum."""
    x2 = _rows(x)
    X, cWf = _spectra(x2, weight, plan)
    z, X = _correlate_rows(x2, cWf, plan.fft_size, plan.out_features, bias, save_spectrum, X)
    return z.reshape(*x.shape[:-1], plan.out_features), (X if save_spectrum else cWf.new_empty(0)), cWf


def _save(ctx, x, weight, X, cWf, plan: Plan, save_spectrum: bool) -> None:
    """Save the input x (needed for double backward and, in memory-saving mode, to rebuild X), the weight
    (for double backward), the conjugate weight spectrum (O(L), reused by grad_input) and, unless
    ``save_spectrum`` is False, the input spectrum X (so that backward needs only 2 batched FFTs).
    That is what a plain torch.fft autograd implementation saves (x and X); without X it is half."""
    ctx.plan = plan
    ctx.input_shape = x.shape
    # x itself is needed only to rebuild X, or as a graph input for double backward; a constant
    # input (the data batch) with its spectrum saved is not kept (plain autograd does not keep it).
    keep_x = not save_spectrum or x.requires_grad
    ctx.save_for_backward(x if keep_x else None, weight, cWf, X if save_spectrum else None)


def _backward(ctx, grad_out):
    x, weight, cWf, X = ctx.saved_tensors
    plan = ctx.plan
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    grad_x = grad_w = grad_b = None
    if need_b:
        grad_b = _rows(grad_out).sum(0)
    if torch.is_grad_enabled():
        # create_graph=True: build the gradients from differentiable pieces (double backward).
        if need_x:
            grad_x = dft_linear_autograd(grad_out, weight, None, transpose_plan(plan), False)
        if need_w:
            if x is None:  # a constant input: rebuild it from its spectrum (exact to rounding)
                x = torch.fft.irfft(X, plan.fft_size)[:, : plan.in_features].reshape(ctx.input_shape)
            grad_w = DFTWeightGradFunction.apply(grad_out, x, plan)
        return grad_x, grad_w, grad_b, None, None
    x2 = None if x is None else _rows(x)
    gx, taps_grad = _backward_rows(_rows(grad_out), x2, X, cWf, plan, need_x, need_w)
    if need_x:
        grad_x = gx.reshape(ctx.input_shape)
    if need_w:
        grad_w = fold_taps(taps_grad, plan)
    return grad_x, grad_w, grad_b, None, None


class DFTLinearFunction(Function):
    """z = W x + b for the q x p DFT matrix W with the hand-derived backward, for eager autograd.

    The classic ``forward(ctx, ...)`` form: ``apply`` of a ``setup_context`` Function binds its arguments
    with ``inspect.signature`` on every call, which cost ~100 us per forward+backward here (measured).
    torch.compile, torch.export, torch.func and forward-mode AD use :func:`dft_reference` instead."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan: Plan, save_spectrum: bool):
        z, X, cWf = _forward(x, weight, bias, plan, save_spectrum)
        _save(ctx, x, weight, X, cWf, plan, save_spectrum)
        return z

    @staticmethod
    def backward(ctx, grad_out):
        return _backward(ctx, grad_out)


def dft_linear_autograd(x, weight, bias, plan: Plan, save_spectrum: bool) -> torch.Tensor:
    """``z = x W^T + b`` with the hand-derived backward (eager autograd)."""
    return DFTLinearFunction.apply(x, weight, bias, plan, save_spectrum)


def dft_reference(x, weight, bias, plan: Plan) -> torch.Tensor:
    """``z = x W^T + b`` from plain differentiable torch ops: ``irfft(conj(rfft(x)) * rfft(taps))``.

    What tracers and transforms see (torch.compile, torch.export, torch.func, forward-mode AD): no custom
    Function, no in-place tricks, no branch on the batch size; autograd derives every gradient."""
    L = plan.fft_size
    Wf = torch.fft.rfft(weight_taps(weight, plan), L)
    z = torch.fft.irfft(torch.fft.rfft(x, L).conj() * Wf, L)[..., : plan.out_features]
    return z if bias is None else z + bias


class DFTWeightGradFunction(Function):
    """gw = sum_batch conv_n(g, x): the weight gradient as a differentiable bilinear map of (g, x).

    Its own gradients are DFT layers with the incoming gradient u as weight:
    d<u, gw>/dg = W_u x (q x p layer), d<u, gw>/dx = W_u^T g (p x q layer).
    """

    @staticmethod
    def forward(grad_out, x, plan: Plan):
        L = plan.fft_size
        S = (torch.fft.rfft(_rows(grad_out), L) * torch.fft.rfft(_rows(x), L)).sum(0)
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
            dg = dft_linear_autograd(x, u, None, plan, False)
        if need_x:
            dx = dft_linear_autograd(grad_out, u, None, transpose_plan(plan), False)
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
    the same code serves double backward. Classic ``forward(ctx, ...)`` form for a cheap ``apply``
    (see :class:`DFTLinearFunction`); tracers and transforms multiply by the gathered matrix instead.
    """

    @staticmethod
    def forward(ctx, x, weight, p: int, q: int):
        ctx.shape = (p, q)
        ctx.save_for_backward(x, weight)
        return x @ circulant_view(weight, p, q).T

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
