r"""Block-circulant kernels: a q x p matrix tiled by k x k circulant blocks, computed by batched FFTs.

With block size k, ``R = ceil(q / k)`` output blocks and ``C = ceil(p / k)`` input blocks, the layer is
``W[i, j] = weight[i // k, j // k, (i + j) % k]`` (weight: (R, C, k)); block (r, c) is
``W_rc[i][j] = w_rc[(i + j) % k]``. Inputs are zero-padded to C k and outputs truncated to q.

Each output block is a sum over input blocks of circular correlations, so with ``X = rfft(x_blocks)``
(F, B, C), ``F = k // 2 + 1`` and ``Wf = rfft(weight)``:

Forward, a correlation:     Z[f, b, r] = sum_c conj(X[f, b, c]) Wf[r, c, f],   z = irfft(Z)[:q]
grad_input (layer W^T):     GX[f, b, c] = sum_r conj(G[f, b, r]) Wf[r, c, f],  gx = irfft(GX)[:p]
grad_weight, a convolution: S[r, c, f] = sum_batch G[f, b, r] X[f, b, c],      gw = irfft(S)

with ``G = rfft(grad_output_blocks)``: one batched rfft, one batched matmul over frequencies
(F, B, C) @ (F, C, R), one batched irfft. ``W^T`` is the p x q block layer with ``weight.transpose(0, 1)``.
The complex products run as real batched GEMMs on (real, imaginary) pairs: ``conj(X) Wf`` as
(F, B, 2 C) @ (F, 2 C, 2 R) with each entry of Wf a 2 x 2 block (:func:`embedded_weight`), 1.1-3.2x faster
than the complex matmul at d = 512, k = 16 and 64, on CPU (1 thread, AMD EPYC); the spectra are transposed
frequency-major and back as 2-D copies (3-D permutes on more than one CPU thread: torch runs those copies
in parallel), and the inverse FFT reads a contiguous spectrum.

As for DFT layers (:mod:`dftnet.kernels.circulant`), the kernels take the weight or the layer's stored
spectrum, as a :class:`~dftnet.kernels.taps.ParamKind` says; from the latter ``Wf`` and the parameter's
gradient are elementwise maps (:func:`dftnet.spectral.conj_rfft_of_weight`,
:func:`dftnet.spectral.spectrum_grad`), no FFT of the weight.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from .._compat import batched_grad
from ..plan import BlockShape
from .row_chunks import backward_chunks, chunk_outputs, row_chunks
from .taps import WEIGHT, ParamKind

__all__ = ["block_matrix", "block_dense_forward", "block_forward", "weight_spectrum", "embedded_spectrum",
           "BlockDFTFunction", "BlockWeightGradFunction", "block_reference"]


def block_matrix(weight: Tensor, in_features: int, out_features: int) -> Tensor:
    """The explicit q x p matrix ``W[i, j] = weight[i // k, j // k, (i + j) % k]`` (differentiable)."""
    R, C, k = weight.shape[-3:]
    shape = BlockShape(in_features, out_features, k)
    if (R, C) != (shape.out_blocks, shape.in_blocks):
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} does not tile a {out_features} x {in_features} matrix "
            f"with block size {k}: expected ({shape.out_blocks}, {shape.in_blocks}, {k})"
        )
    return _tile(WEIGHT.matrix_taps(weight, k, k), in_features, out_features)


def _tile(taps: Tensor, in_features: int, out_features: int) -> Tensor:
    """The q x p matrix from each block's 2k - 1 taps ``(..., R, C, 2k - 1)``: block (r, c) is a view of
    its taps, row i is ``taps[i : i + k]`` (no index tensor, no gather: autograd's unfold backward is
    2-3x faster in training than a gather's, measured)."""
    R, C, k = *taps.shape[-3:-1], (taps.shape[-1] + 1) // 2
    blocks = taps.unfold(-1, k, 1)  # (..., R, C, k, k): block (r, c), row i, column j
    W = blocks.transpose(-3, -2).reshape(*taps.shape[:-3], R * k, C * k)
    return W[..., :out_features, :in_features]


def block_dense_forward(x: Tensor, param: Tensor, bias: Tensor | None, shape: BlockShape,
                        kind: ParamKind) -> Tensor:
    """The dense route in training: ``x @ W^T + b`` with W tiled from each block's taps
    (:meth:`~dftnet.kernels.taps.ParamKind.matrix_taps`, as :func:`~dftnet.kernels.circulant_reference.dense_forward`
    does for one block), all differentiable torch ops."""
    k = shape.block_size
    W = _tile(kind.matrix_taps(param, k, k), shape.in_features, shape.out_features)
    return torch.nn.functional.linear(x, W, bias)


def _spectrum(t: Tensor, n_blocks: int, k: int) -> Tensor:
    """(B, m) -> zero-padded to n_blocks k, blocks of k, rfft: the (F, B, n_blocks) spectrum, contiguous."""
    if t.shape[0] == 0:  # MKL rejects empty FFT batches
        return t.new_zeros(k // 2 + 1, 0, n_blocks, dtype=t.dtype.to_complex())
    pad = n_blocks * k - t.shape[-1]
    if pad:
        t = torch.nn.functional.pad(t, (0, pad))
    B = t.shape[0]
    X = torch.fft.rfft(t.reshape(B * n_blocks, k), dim=-1)
    if _parallel_copies(t):
        return X.view(B, n_blocks, k // 2 + 1).permute(2, 0, 1).contiguous()
    return X.t().contiguous().view(k // 2 + 1, B, n_blocks)


def _parallel_copies(t: Tensor) -> bool:
    """Whether to transpose spectra as a 3-D permute rather than a 2-D transpose. On one CPU thread torch
    copies the 2-D transpose faster; but that copy runs on one thread only, and on 2 threads the permute's
    copy is the faster one (AMD EPYC, (32768, 33) complex: 1.2-1.6 against 1.8-2.3 ms;
    ``benchmarks/block_transform_layouts.py``)."""
    return t.device.type == "cpu" and torch.get_num_threads() > 1


def _inverse(Z: Tensor, k: int, length: int, out: Tensor | None = None) -> Tensor:
    """(F, B, n_blocks) spectrum -> irfft per block -> (B, n_blocks k) truncated to ``length``, contiguous;
    written into ``out`` (B, length), contiguous, where given."""
    if Z.shape[1] == 0:
        return Z.real.new_zeros(0, length) if out is None else out
    F, B, n = Z.shape
    # irfft of a contiguous spectrum: from the strided (B, n, F) view it took 1.6x as long as copy + irfft
    Zt = Z.permute(1, 2, 0).contiguous() if _parallel_copies(Z) else Z.reshape(F, B * n).t().contiguous()
    if out is not None and n * k == length:
        torch.fft.irfft(Zt, k, dim=-1, out=out.view(Zt.shape[:-1] + (k,)))
        return out
    return _truncated(torch.fft.irfft(Zt, k, dim=-1).view(B, n * k), length, out)


def _truncated(z: Tensor, length: int, out: Tensor | None = None) -> Tensor:
    """(B, m) -> its first ``length`` columns, contiguous: ``z`` itself where m = length, else a copy, into
    ``out`` where given."""
    if out is not None:
        return out.copy_(z[:, :length])
    return z if z.shape[-1] == length else z[:, :length].contiguous()


def weight_spectrum(param: Tensor, kind: ParamKind) -> Tensor:
    """(R, C, k) weight or stored spectrum -> (F, C, R): the per-frequency C x R matrices of the forward
    product, ``rfft(w)`` (elementwise from a stored spectrum)."""
    return kind.rfft(param).permute(2, 1, 0).contiguous()


def _param_from_spectrum(S: Tensor, k: int, kind: ParamKind) -> Tensor:
    """(F, R, C) spectrum of the weight's gradient -> (R, C, k) gradient of the weight or stored spectrum."""
    return kind.grad_from_rfft(S.permute(1, 2, 0), k)


def _real(t: Tensor) -> Tensor:
    """(..., n) complex -> (..., 2 n) real: each entry as its (real, imaginary) pair, a view."""
    return torch.view_as_real(t).flatten(-2)


def embedded_weight(Wf: Tensor) -> Tensor:
    """(F, C, R) complex -> (F, 2 C, 2 R) real: entry (c, r) as the 2 x 2 block ``[[a, b], [b, -a]]``
    (``Wf[c, r] = a + i b``), so that ``_real(X) @ embedded_weight(Wf) = _real(conj(X) Wf)``. The block is
    symmetric: the transpose embeds ``Wf^T``, the product of grad_input."""
    F, C, R = Wf.shape
    a, b = Wf.real, Wf.imag
    return torch.stack([torch.stack([a, b], -1), torch.stack([b, -a], -1)], 2).view(F, 2 * C, 2 * R)


def _conj_product(X: Tensor, We: Tensor) -> Tensor:
    """``conj(X) Wf`` per frequency, X (F, B, C) complex, as one real batched GEMM with We the embedded
    Wf (:func:`embedded_weight`, or its transpose): (F, B, 2 C) @ (F, 2 C, 2 R) -> (F, B, R) complex."""
    if batched_grad(X):  # the engine's vmap over backward has no rule for these views: complex product
        return torch.matmul(X.conj(), torch.complex(We[:, 0::2, 0::2], We[:, 0::2, 1::2]))
    Z = torch.matmul(_real(X), We)
    return torch.view_as_complex(Z.view(*Z.shape[:-1], Z.shape[-1] // 2, 2))


def _batch_product(G: Tensor, X: Tensor) -> Tensor:
    """``sum_batch G X`` per frequency, G (F, B, R) and X (F, B, C) complex -> (F, R, C) complex, from one
    real batched GEMM summing the batch inside it: the (real, imaginary) pairs' four products, combined."""
    if batched_grad(G) or batched_grad(X):
        return torch.matmul(G.transpose(-2, -1), X)
    F, _, R = G.shape
    C = X.shape[-1]
    M = torch.matmul(_real(G).transpose(1, 2), _real(X)).view(F, R, 2, C, 2)
    return torch.complex(M[:, :, 0, :, 0] - M[:, :, 1, :, 1], M[:, :, 0, :, 1] + M[:, :, 1, :, 0])


def embedded_spectrum(param: Tensor, kind: ParamKind) -> Tensor:
    """(R, C, k) weight or stored spectrum -> (F, 2 C, 2 R): its :func:`weight_spectrum`, embedded."""
    return embedded_weight(weight_spectrum(param, kind))


def block_forward(x: Tensor, We: Tensor, bias: Tensor | None, shape: BlockShape, out: Tensor | None = None
                  ) -> Tensor:
    """The forward kernel alone (no autograd bookkeeping): for inference. ``x`` (B, p); ``We`` the embedded
    weight spectrum (F, 2 C, 2 R) of :func:`embedded_spectrum` (cached by the caller); the result written
    into ``out`` (B, q), contiguous, where given."""
    k = shape.block_size
    X = _spectrum(x, shape.in_blocks, k)
    return _add_bias(_inverse(_conj_product(X, We), k, shape.out_features, out), bias)


def _add_bias(z: Tensor, bias: Tensor | None) -> Tensor:
    """``z + bias`` in place (z is a fresh result of :func:`_inverse`; none for an empty batch)."""
    return z if bias is None or z.shape[0] == 0 else z.add_(bias)


class BlockDFTFunction(Function):
    """z = W x + b for a q x p block-circulant W, x of shape (B, p), ``bias`` b or None, with the
    hand-derived backward (eager autograd; tracers and transforms use :func:`block_reference`).

    With ``rows``, forward and backward run on chunks of that many rows, each writing its rows of the
    result (the spectra of a chunk stay in cache and under malloc's mmap threshold: see
    :func:`dftnet.plan.block_chunk_rows`); the weight's gradient is summed over the chunks in the frequency
    domain. Saved for backward: x and the parameter (for double backward), the embedded weight spectrum
    (F, 2 C, 2 R) and the input spectra X (F, rows, C) of the chunks, so that backward needs one rfft (of
    the output gradient), two batched matmuls and one irfft per chunk. The classic ``forward(ctx, ...)``
    form, as ``DFTLinearFunction``: ``apply`` of a ``setup_context`` Function binds its arguments with
    ``inspect.signature`` on every call.
    """

    @staticmethod
    def forward(ctx, x, param, bias, shape: BlockShape, kind: ParamKind = WEIGHT, rows: int | None = None):
        x = x.contiguous()  # one layout into the FFTs: a strided input gives what its copy gives, to the bit
        k = shape.block_size
        We = embedded_spectrum(param, kind)
        chunks = row_chunks(x, None if batched_grad(x) else rows)
        out = x.new_empty(x.shape[0], shape.out_features) if len(chunks) > 1 else None
        Xs = []
        for xc, zc in zip(chunks, chunk_outputs(out, rows, len(chunks))):
            Xs.append(_spectrum(xc, shape.in_blocks, k))
            z = _add_bias(_inverse(_conj_product(Xs[-1], We), k, shape.out_features, zc), bias)
        ctx.shape, ctx.kind, ctx.rows = shape, kind, rows if len(chunks) > 1 else None
        ctx.save_for_backward(x, param, We, *Xs)
        return z if out is None else out

    @staticmethod
    def backward(ctx, grad_out):
        x, param, We, *Xs = ctx.saved_tensors
        shape, kind = ctx.shape, ctx.kind
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        grad_out = grad_out.contiguous()  # as the input: one layout into the FFTs and the bias's sum
        if need_b:
            grad_b = grad_out.sum(0)
        if torch.is_grad_enabled():
            # create_graph=True: build the gradients from differentiable pieces (double backward).
            weight = kind.weight(param)
            if need_x:
                grad_x = BlockDFTFunction.apply(grad_out, weight.transpose(0, 1), None, shape.transpose())
            if need_w:
                grad_w = kind.from_weight_grad(BlockWeightGradFunction.apply(grad_out, x, shape))
            return grad_x, grad_w, grad_b, None, None, None
        k = shape.block_size
        chunks, Xs, _, out, outs = backward_chunks(grad_out, Xs, ctx.rows, shape.in_features, need_x)
        S = None
        for gc, X, gxc in zip(chunks, Xs, outs):
            G = _spectrum(gc, shape.out_blocks, k)  # (F, rows, R)
            if need_x:
                grad_x = _inverse(_conj_product(G, We.transpose(1, 2)), k, shape.in_features, gxc)
            if need_w:
                P = _batch_product(G, X)
                S = P if S is None else S.add_(P)
        if need_w:
            grad_w = _param_from_spectrum(S, k, kind)
        return grad_x if out is None else out, grad_w, grad_b, None, None, None


class BlockWeightGradFunction(Function):
    """gw[r, c] = sum_batch conv_k(g_r, x_c): the weight gradient as a differentiable bilinear map of (g, x).

    Its own gradients are block layers with the incoming gradient u (R, C, k) as weight:
    d<u, gw>/dg = W_u x (q x p layer), d<u, gw>/dx = W_u^T g (p x q layer).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, x, shape: BlockShape):
        k = shape.block_size
        G = _spectrum(grad_out, shape.out_blocks, k)
        X = _spectrum(x, shape.in_blocks, k)
        return _param_from_spectrum(_batch_product(G, X), k, WEIGHT)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, x, shape = inputs
        ctx.shape = shape
        ctx.save_for_backward(grad_out, x)

    @staticmethod
    def backward(ctx, u):
        grad_out, x = ctx.saved_tensors
        shape = ctx.shape
        need_g, need_x = ctx.needs_input_grad[:2]
        dg = dx = None
        if need_g:
            dg = BlockDFTFunction.apply(x, u, None, shape)
        if need_x:
            dx = BlockDFTFunction.apply(grad_out, u.transpose(0, 1), None, shape.transpose())
        return dg, dx, None


def block_reference(x: Tensor, weight: Tensor, bias: Tensor | None, shape: BlockShape) -> Tensor:
    """``z = x W^T + b`` from plain differentiable torch ops (rfft per block, einsum over blocks, irfft).

    What tracers and transforms see (torch.compile, torch.export, torch.func, forward-mode AD): no custom
    Function and no branch on the batch size; autograd derives every gradient."""
    k, C, R = shape.block_size, shape.in_blocks, shape.out_blocks
    lead = x.shape[:-1]
    xb = torch.nn.functional.pad(x, (0, C * k - shape.in_features)).reshape(*lead, C, k)
    X, Wf = torch.fft.rfft(xb), torch.fft.rfft(weight)
    # conj(X) Wf summed over input blocks, as real einsums (exporters such as ONNX have no complex einsum)
    prod = lambda a, b: torch.einsum("...cf,rcf->...rf", a, b)  # noqa: E731
    Z = torch.complex(prod(X.real, Wf.real) + prod(X.imag, Wf.imag), prod(X.real, Wf.imag) - prod(X.imag, Wf.real))
    z = torch.fft.irfft(Z, k).reshape(*lead, R * k)[..., : shape.out_features]
    return z if bias is None else z + bias
