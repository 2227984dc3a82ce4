"""The FFT kernels of a DFT layer, forward and backward, row chunk by row chunk.

Notation: input ``x`` has shape (..., p), weight ``w`` shape (n,), n = max(p, q), and the layer is the
q x p matrix ``W[i, j] = w[(i + j) % n]``. ``L`` is the FFT length (:mod:`dftnet.plan`), ``F = L // 2 + 1``.

Forward, a correlation:      z[i]   = sum_j w[(i + j) % n] x[j]       = irfft(conj(X) * Wf, L)[:q]
grad_input, a correlation:   gx[j]  = sum_i w[(i + j) % n] g[i]       = irfft(conj(G) * Wf, L)[:p]
grad_weight, a convolution:  gw[k]  = sum_batch sum_{(i+j)%n=k} g[i] x[j]
                                    = fold_n(irfft(sum_batch G * X, L))

with X = rfft(x, L), G = rfft(g, L) and Wf the spectrum of the weight's taps
(:func:`~dftnet.kernels.taps.weight_taps`). Here: the kernels on rows (inference calls :func:`dft_forward`);
their autograd Function is in :mod:`dftnet.kernels.circulant_autograd`, the plain-torch forms (explicit
matrix, dense route, FFT reference) in :mod:`dftnet.kernels.circulant_reference`.
``W^T`` is the p x q layer with the same weight, so grad_input is the forward of the transposed layer.
The batch sum of grad_weight happens in the frequency domain, then ONE inverse FFT.

The kernels take the layer's parameter as it is stored, the weight itself (the functional form) or its
scaled Hartley spectrum (:mod:`dftnet.spectral`), and a :class:`~dftnet.kernels.taps.ParamKind` that says
which. On the circular route the latter needs no FFT at all: ``conj(Wf)`` and the
parameter's gradient are elementwise maps of the coefficients and of ``sum_batch G * X``.
"""

from __future__ import annotations

import torch

from ..plan import Plan
from .circulant_reference import circulant_view, dense_forward, dft_matrix, dft_reference
from .taps import WEIGHT, ParamKind, weight_taps

__all__ = ["transpose_plan", "dft_forward", "ONE_CHUNK_BYTES", "CHUNK_ROWS", "CHUNK_MIN_BYTES", "DEVICE_CHUNK_BYTES",
           "MIN_CHUNK_ROWS", "SMALL_BATCH_ROWS",
           # the reference forms, from their own module
           "circulant_view", "dense_forward", "dft_matrix", "dft_reference"]


def transpose_plan(plan: Plan) -> Plan:
    """The plan of W^T: the p x q layer with the same weight and the same FFT length."""
    return Plan(plan.out_features, plan.in_features, plan.n, plan.fft_size)


# Row chunks: a call whose spectrum fits in ONE_CHUNK_BYTES runs as one chunk; a larger one runs in chunks, so
# a chunk's spectra stay in cache between its FFTs and its elementwise passes, and no (batch, L) temporary is
# allocated beyond the result and the saved spectrum (fresh large allocations cost page faults on CPU). On CPU
# a chunk has CHUNK_ROWS rows a thread, but at least CHUNK_MIN_BYTES of spectrum a thread (every FFT call has
# a fixed cost of O(L)) and at most ONE_CHUNK_BYTES; off the CPU, DEVICE_CHUNK_BYTES of spectrum (not measured
# there). Before, every call took chunks of 4 MiB (8 MiB rather than 16 on a Xeon, 4 rather than 8 on an AMD
# EPYC: 3-5% faster). Against that, on the EPYC (fwd+bwd, interleaved turns in one process, 30 each, medians;
# thread CPU time on 1 thread, wall time on 2): on 1 thread 2-10% faster at 512x2048, 2048x512, 4096x1024 and
# 2048x2048 on 512-1,024 rows, 1024x1024 on 2,048 and 512x2048 on 8,192 (a chunk at L = 2048: 128 rows instead
# of 342), the other cells -1.4% to +3.8% (L = 8192 and 16384 keep their chunks); on 2 threads within +-3%.
# The GPT's training step at d = 512 with DFT MLPs took 0.91x dense's peak memory before and 0.83x after.
ONE_CHUNK_BYTES = 4 << 20
CHUNK_ROWS = 128
CHUNK_MIN_BYTES = 1 << 20
DEVICE_CHUNK_BYTES = 4 << 20
MIN_CHUNK_ROWS = 8
# Up to this many rows, the weight's FFT rides in the same call as the input's, and the weight gradient's
# inverse FFT in the same call as grad_input's: for a few rows, a call's fixed cost exceeds the copies.
SMALL_BATCH_ROWS = 16


def _chunk_rows(L: int, spectrum_dtype: torch.dtype, M: int, device: torch.device) -> int:
    """Rows per chunk for M rows: all of them up to ONE_CHUNK_BYTES of spectrum; else, on CPU, CHUNK_ROWS a
    thread, but at least CHUNK_MIN_BYTES of spectrum a thread and at most ONE_CHUNK_BYTES (off the CPU,
    DEVICE_CHUNK_BYTES); at least MIN_CHUNK_ROWS, in chunks of equal size (not 127 + 1)."""
    row_bytes = (L // 2 + 1) * spectrum_dtype.itemsize
    if M * row_bytes <= ONE_CHUNK_BYTES:
        return max(M, 1)
    if device.type == "cpu":
        threads = torch.get_num_threads()
        rows = min(max(CHUNK_ROWS * threads, CHUNK_MIN_BYTES * threads // row_bytes), ONE_CHUNK_BYTES // row_bytes)
    else:
        rows = DEVICE_CHUNK_BYTES // row_bytes
    rows = max(MIN_CHUNK_ROWS, rows)
    chunks = -(-M // rows)
    return max(1, -(-M // chunks))


def _spectra(x2: torch.Tensor, param: torch.Tensor, plan: Plan, kind: ParamKind, cWf: torch.Tensor | None
             ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(X, conj(Wf))``: for a few rows, X = rfft(x2, L) and, where the weight needs an FFT, its spectrum
    from one batched FFT of [x2; taps]; otherwise X is None (computed chunk by chunk). ``cWf`` may be
    given (a cached one)."""
    M, p = x2.shape
    small = 0 < M <= min(SMALL_BATCH_ROWS, _chunk_rows(plan.fft_size, x2.dtype.to_complex(), M, x2.device))
    if cWf is not None or not small or not kind.inverts_gradient(plan):
        return (torch.fft.rfft(x2, plan.fft_size) if small else None), (
            kind.conj_spectrum(param, plan) if cWf is None else cWf)
    taps = weight_taps(kind.weight(param), plan)
    buf = x2.new_zeros(M + 1, max(p, taps.shape[0]))
    buf[:M, :p] = x2
    buf[M, : taps.shape[0]] = taps
    spectra = torch.fft.rfft(buf, plan.fft_size)
    return spectra[:M], spectra[M].conj_physical_()


def _correlate_rows(
    x2: torch.Tensor, cWf: torch.Tensor, L: int, length: int, bias: torch.Tensor | None, keep: bool,
    X: torch.Tensor | None = None, diag: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(irfft(conj(X) * Wf, L)[:, :length] (+ bias), X if keep else None)`` with ``X = rfft(x2, L)``,
    for the rows of ``x2`` (M, p); ``X`` may be given already computed (used for a single chunk). With
    ``diag`` (more than one chunk), ``x2 * diag`` is formed chunk by chunk, each just before its FFT.

    ``conj(X) * Wf = conj(X * conj(Wf))``: we multiply by the saved conjugate spectrum and conjugate the
    product in place. X is kept (for backward) only if ``keep``; otherwise it is overwritten.
    """
    M = x2.shape[0]
    rows = _chunk_rows(L, cWf.dtype, M, cWf.device)
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
    Y = cWf.new_empty(rows, L // 2 + 1) if keep else None  # one product buffer, reused: it stays in cache
    for s in range(0, M, rows):
        chunk = slice(s, s + rows)
        if keep:
            assert X is not None and Y is not None
            Xc = torch.fft.rfft(x2[chunk] if diag is None else x2[chunk] * diag, L, out=X[chunk])
            Yc = torch.mul(Xc, cWf, out=Y[: Xc.shape[0]])
        else:
            Yc = torch.fft.rfft(x2[chunk] if diag is None else x2[chunk] * diag, L).mul_(cWf)
        Yc = Yc.conj_physical_()
        if length == L and bias is None:
            torch.fft.irfft(Yc, L, out=out[chunk])
        elif bias is None:
            out[chunk] = torch.fft.irfft(Yc, L)[:, :length]
        else:
            torch.add(torch.fft.irfft(Yc, L)[:, :length], bias, out=out[chunk])
    return out, X


def _backward_rows(
    g2: torch.Tensor, x2: torch.Tensor | None, X: torch.Tensor | None, cWf: torch.Tensor, plan: Plan,
    need_x: bool, need_w: bool, invert: bool, diag: torch.Tensor | None = None,
    x_rows: torch.Tensor | None = None, need_d: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(grad_x, grad_diag, S)``: with ``gxd = irfft(conj(G) * Wf)[:, :p]`` the gradient of the kernel's
    input ``x_rows * diag``, grad_x = ``gxd * diag`` (``gxd`` without a diagonal) and grad_diag =
    ``sum_rows gxd * x_rows`` (if ``need_d``); ``S = sum_rows G * X``, or with ``invert`` the gradient of
    the taps ``irfft(S)`` (for a few rows in the same inverse FFT as grad_input).

    ``G = rfft(g2, L)``; X is the saved input spectrum, or recomputed chunk by chunk from ``x2`` (times
    ``diag``, if given). Chunk by chunk, the diagonal's two products use each chunk's gxd while it is in
    cache, and ``* diag`` is the copy into grad_x.
    """
    L, p = plan.fft_size, plan.in_features

    def spectrum(rows):
        return torch.fft.rfft(x2[rows] if diag is None else x2[rows] * diag, L)

    M = g2.shape[0]
    rows = _chunk_rows(L, cWf.dtype, M, cWf.device)
    if M <= rows:  # one chunk: few ops (each costs microseconds next to the FFTs of a few rows)
        G = torch.fft.rfft(g2, L)
        S = None
        if need_w:
            GX = G * (X if X is not None else spectrum(slice(None)))
            S = GX[0] if M == 1 else GX.sum(0)
            del GX  # (B, F) complex: not alive while grad_input is computed
        if (need_x or need_d) and need_w and invert and M <= SMALL_BATCH_ROWS:  # one inverse FFT for both
            assert S is not None
            both = torch.cat([G.mul_(cWf).conj_physical_(), S.unsqueeze(0)])
            z = torch.fft.irfft(both, L)
            gx, gd = z[:M, :p], None
            if diag is not None:
                gd = _sum_rows_of_product(gx, _given(x_rows)) if need_d else None
                gx = (gx.mul_(diag) if p == L else gx * diag) if need_x else None  # contiguous
            return (gx if diag is not None else gx.contiguous()), gd, z[M]
        gx = gd = None
        if need_x or need_d:  # contiguous, as nn.Linear's: not a view into the (M, L) inverse FFT
            z = torch.fft.irfft(G.mul_(cWf).conj_physical_(), L)
            gx = z if p == L else z[:, :p]
            if diag is None:
                gx = gx.contiguous()
            else:  # gx is this backward's own: the diagonal's gradient first, then in place
                gd = _sum_rows_of_product(gx, _given(x_rows)) if need_d else None
                gx = (gx.mul_(diag) if p == L else gx * diag) if need_x else None  # contiguous
        return gx, gd, (torch.fft.irfft(S, L) if invert and S is not None else S)
    gx = g2.new_empty(M, p) if need_x else None
    gd = g2.new_zeros(p) if need_d else None
    S = cWf.new_zeros(L // 2 + 1) if need_w else None
    for s in range(0, M, rows):
        chunk = slice(s, s + rows)
        Gc = torch.fft.rfft(g2[chunk], L)
        if need_w:
            Xc = X[chunk] if X is not None else spectrum(chunk)
            S = _given(S).add_((Gc * Xc if X is not None else Xc.mul_(Gc)).sum(0))
        if need_x or need_d:
            Gc = Gc.mul_(cWf).conj_physical_()
            if p == L and diag is None:
                torch.fft.irfft(Gc, L, out=_given(gx)[chunk])
                continue
            z = torch.fft.irfft(Gc, L)[:, :p]
            if need_d:
                gd = _given(gd).add_((z * _given(x_rows)[chunk]).sum(0))
            if need_x:
                if diag is None:
                    _given(gx)[chunk] = z
                else:
                    torch.mul(z, diag, out=_given(gx)[chunk])
    return gx, gd, (torch.fft.irfft(S, L) if invert and S is not None else S)


def _given(t: torch.Tensor | None) -> torch.Tensor:
    """``t``, which the caller's flags guarantee was made (for the type checker)."""
    assert t is not None
    return t


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 2 else t.reshape(-1, t.shape[-1])


def dft_forward(x: torch.Tensor, param: torch.Tensor, bias: torch.Tensor | None, plan: Plan,
                kind: ParamKind = WEIGHT, cWf: torch.Tensor | None = None,
                diag: torch.Tensor | None = None) -> torch.Tensor:
    """The forward kernel alone (no autograd bookkeeping): for inference, of ``x * diag`` where ``diag`` is
    given. ``cWf`` may be given (``kind.conj_spectrum(param, plan)``, cached by the caller)."""
    return _forward(x, param, bias, plan, False, kind, cWf, diag)[0]


def _forward(x, param, bias, plan: Plan, save_spectrum: bool, kind: ParamKind, cWf=None, diag=None):
    """(z, X, conj(Wf)): the layer's output for the input ``x * diag`` (``diag`` None: 1), the input
    spectrum (empty unless ``save_spectrum``; shape (rows, L // 2 + 1), the leading dimensions flattened)
    and the conjugate weight spectrum."""
    x2 = _rows(x)
    if diag is not None and x2.shape[0] <= _chunk_rows(plan.fft_size, x2.dtype.to_complex(), x2.shape[0], x2.device):
        x2, diag = x2 * diag, None  # one chunk: the product whole
    X, cWf = _spectra(x2, param, plan, kind, cWf)
    z, X = _correlate_rows(x2, cWf, plan.fft_size, plan.out_features, bias, save_spectrum, X, diag)
    if x.dim() != 2:
        z = z.reshape(*x.shape[:-1], plan.out_features)
    return z, (X if save_spectrum else cWf.new_empty(0)), cWf


def _sum_rows_of_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(0)`` for (M, p) tensors, a chunk of rows at a time (no (M, p) temporary)."""
    M, p = a.shape
    rows = max(1, ONE_CHUNK_BYTES // max(1, p * a.element_size()))
    if M <= rows:
        return (a * b).sum(0)
    out = a.new_zeros(p)
    for s in range(0, M, rows):
        out += (a[s:s + rows] * b[s:s + rows]).sum(0)
    return out
