r"""Block-circulant kernels in real arithmetic: packed real spectra, every product a real batched GEMM.

The same layer as :mod:`dftnet.kernels.block` (``W[i, j] = weight[i // k, j // k, (i + j) % k]``, weight
(R, C, k)), computed without complex tensors. A length-k block's rfft has ``F = k // 2 + 1`` frequencies,
of which ``Fi = (k - 1) // 2`` have an imaginary part (not DC, nor k / 2); its *packed* spectrum is the k
reals ``[Re X_0 .. Re X_{F-1}, Im X_1 .. Im X_Fi]``, ``x_block @ A`` for a real k x k matrix A. Spectra are
kept frequency-major, ``(k, B, n_blocks)``, so that every frequency's rows are one contiguous matrix:

    X = A^T x^T                      (k, B, C)     one GEMM
    Z = X (.) Wp                     (k, B, R)     four batched GEMMs over frequencies (below)
    z = Z^T E                        (B, R k)      one GEMM, E = the packed irfft

with ``Wp = weight @ P`` the weight's packed spectrum, stored ``(k, R, C)`` (one k x k GEMM per call; from
the layer's stored Hartley spectrum P is another fixed k x k matrix). ``(.)`` is ``conj(X) Wf`` per
frequency: with ``a, b`` the real and imaginary rows of X and ``c, d`` those of Wp,

    Re Z = a c + b d,      Im Z = a d - b c        (DC and k / 2: Re Z = a c)

which as a real 2 x 2 map ``[a, b] [[c, d], [d, -c]]`` is symmetric. So the layer's transpose is the
same product with each block matrix transposed, and backward is, with ``G = A^T g^T`` (the same transform
of the output gradient) and ``D = diag(E A)`` (1 / k at DC and k / 2, 2 / k elsewhere):

    grad_input:  unpack(G (.) Wp^T)                 the forward's kernels, blocks transposed
    grad_weight: (sum_batch G (.)^* X) D P^T         four batched GEMMs summing the batch inside, then k x k

where ``(.)^*`` is the adjoint of ``(.)`` in the weight: ``Re: G_a^T a - G_b^T b``, ``Im: G_a^T b + G_b^T a``.
Everything is a GEMM whose batch is summed inside the GEMM; no permute copies (GEMMs read the transposed
views), no complex arithmetic. The transforms cost k multiply-adds per entry against the FFT's O(log k),
so the plan (:func:`dftnet.plan.block_kernel`) sends large blocks to :mod:`dftnet.kernels.block`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor
from torch.autograd import Function

from .._compat import batched_grad, cached
from ..plan import BlockShape
from .block import BlockWeightGradFunction, _truncated
from .row_chunks import backward_chunks, chunk_outputs, row_chunks
from .taps import WEIGHT, ParamKind

__all__ = ["dft_matrices", "param_matrix", "packed_weight", "gemm_forward", "BlockGemmFunction"]


@lru_cache(maxsize=64)
def dft_matrices(k: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``(A, E, d)``: ``x @ A`` is the packed rfft of length-k rows, ``Z @ E`` the irfft of packed spectra,
    and ``d = diag(E A)`` (the per-row factors of ``E = diag(d) A^T``). Built in float64."""
    F, Fi = k // 2 + 1, (k - 1) // 2
    j = torch.arange(k, dtype=torch.float64)
    f = torch.arange(F, dtype=torch.float64)
    fi = torch.arange(1, Fi + 1, dtype=torch.float64)
    cos = torch.cos(torch.outer(j, f).remainder_(k) * (2 * math.pi / k))
    sin = torch.sin(torch.outer(j, fi).remainder_(k) * (2 * math.pi / k))
    A = torch.cat([cos, -sin], 1)  # (k, k): column f is Re, column F + f - 1 is Im of frequency f
    d = torch.full((k,), 2.0 / k, dtype=torch.float64)
    d[0] = 1.0 / k
    if k % 2 == 0:
        d[F - 1] = 1.0 / k
    E = d[:, None] * A.T
    return A.to(device=device, dtype=dtype), E.to(device=device, dtype=dtype), d.to(device=device, dtype=dtype)


@lru_cache(maxsize=64)
def param_matrix(k: int, kind: ParamKind, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(P^T, D P^T)``: ``param @ P`` is the weight's packed spectrum (P = A for a weight; for a stored
    Hartley spectrum the map through :func:`~dftnet.spectral.spectrum_to_weight` first), and
    ``grad_Wp_raw @ (D P^T)`` the parameter's gradient. Built in float64."""
    A, _, d = dft_matrices(k, torch.device("cpu"), torch.float64)
    P = kind.composed(A)
    return P.T.contiguous().to(device=device, dtype=dtype), (d[:, None] * P.T).to(device=device, dtype=dtype)


def packed_weight(param: Tensor, kind: ParamKind = WEIGHT) -> Tensor:
    """(R, C, k) weight or stored spectrum -> its packed spectrum ``Wp`` (k, R, C), one k x k GEMM."""
    R, C, k = param.shape
    PT = cached(param_matrix, k, kind, param.device, param.dtype)[0]
    return torch.mm(PT, param.reshape(R * C, k).t()).view(k, R, C)


def _packed(t: Tensor, n_blocks: int, k: int) -> Tensor:
    """(B, m) -> zero-padded to n_blocks k, blocks of k -> packed spectra ``A^T t^T`` (k, B, n_blocks)."""
    B = t.shape[0]
    pad = n_blocks * k - t.shape[-1]
    if pad:
        t = torch.nn.functional.pad(t, (0, pad))
    A = cached(dft_matrices, k, t.device, t.dtype)[0]
    return torch.mm(A.t(), t.reshape(B * n_blocks, k).t()).view(k, B, n_blocks)


def _unpacked(Z: Tensor, k: int, length: int, out: Tensor | None = None) -> Tensor:
    """Packed spectra (k, B, n_blocks) -> ``Z^T E``, the inverse transform per block -> (B, n_blocks k)[:, :length],
    written into ``out`` (B, length), contiguous, where given."""
    _, B, n = Z.shape
    E = cached(dft_matrices, k, Z.device, Z.dtype)[1]
    if out is not None and n * k == length:
        return torch.mm(Z.reshape(k, B * n).t(), E, out=out.view(B * n, k)).view(B, length)
    return _truncated(torch.mm(Z.reshape(k, B * n).t(), E).view(B, n * k), length, out)


# A batched GEMM whose output rows are this short or shorter runs up to 9x slower on CPU than the same
# product transposed (measured at (1,024 x 32) @ (32 x 8), k = 64): such products are computed transposed.
NARROW = 16
# Block sizes whose packed input is recomputed in backward for an input that needs a gradient: the
# transform costs k multiply-adds per entry, about 1% of the GPT's training step at d = 512 and k = 16
# (peak memory 1.08x -> 0.90x dense's), but 15-20% of a layer's fwd+bwd at k = 64 (measured, 1 thread).
RECOMPUTE_MAX_K = 16


def _product(X: Tensor, Wp: Tensor, length: int, out: Tensor | None = None) -> Tensor:
    """``conj(X) Wf`` per frequency, summed over input blocks, then the inverse transform: X (k, B, C)
    packed, Wp (k, C, R) packed (any strides a GEMM reads) -> z (B, R k)[:, :length] (written into ``out``,
    contiguous, where given). Four batched GEMMs writing into slices of Z (k, B, R), or, for R <=
    ``NARROW``, of its transpose (k, R, B)."""
    k, B, _ = X.shape
    R = Wp.shape[-1]
    F, Fi = k // 2 + 1, (k - 1) // 2
    if batched_grad(X):  # the engine's vmap over backward: no out= nor in-place products
        return _unpacked(_product_functional(X, Wp, F, Fi), k, length, out)
    re, im = slice(1, 1 + Fi), slice(F, k)
    if R > NARROW or B <= NARROW:
        Z = X.new_empty(k, B, R)
        torch.bmm(X[:F], Wp[:F], out=Z[:F])  # Re X Re W, every frequency
        if Fi:
            Z[re].baddbmm_(X[im], Wp[im])  # + Im X Im W
            torch.bmm(X[re], Wp[im], out=Z[im])  # Im Z = Re X Im W
            Z[im].baddbmm_(X[im], Wp[re], alpha=-1)  # - Im X Re W
        return _unpacked(Z, k, length, out)
    W, XT = Wp.transpose(1, 2), X.transpose(1, 2)  # Z^T = W^T X^T, the same four products
    ZT = X.new_empty(k, R, B)
    torch.bmm(W[:F], XT[:F], out=ZT[:F])
    if Fi:
        ZT[re].baddbmm_(W[im], XT[im])
        torch.bmm(W[im], XT[re], out=ZT[im])
        ZT[im].baddbmm_(W[re], XT[im], alpha=-1)
    E = cached(dft_matrices, k, X.device, X.dtype)[1]
    zt = torch.mm(ZT.view(k, R * B).t(), E).view(R, B, k).transpose(0, 1)
    if out is not None and R * k == length:
        out.view(B, R, k).copy_(zt)
        return out
    return _truncated(zt.reshape(B, R * k), length, out)


def _product_functional(X: Tensor, Wp: Tensor, F: int, Fi: int, sign: float = 1.0) -> Tensor:
    """:func:`_product` (``sign`` 1) or :func:`_weight_product` (``sign`` -1, X the transposed gradient and
    Wp the input's spectra) from out-of-place ops, for the autograd engine's vmap."""
    re, im = slice(1, 1 + Fi), slice(F, F + Fi)
    Zr = torch.matmul(X[:F], Wp[:F])
    if not Fi:
        return Zr
    Zr = torch.cat([Zr[:1], Zr[re] + sign * torch.matmul(X[im], Wp[im]), Zr[1 + Fi:]])
    Zi = torch.matmul(X[re], Wp[im]) - sign * torch.matmul(X[im], Wp[re])
    return torch.cat([Zr, Zi])


def _weight_product(G: Tensor, X: Tensor) -> Tensor:
    """The adjoint of :func:`_product` in the weight, summed over the batch inside the GEMMs: G (k, B, R),
    X (k, B, C) packed -> (k, R, C), before the factors D. Computed transposed, ``X^T G`` (the same
    formula with the arguments swapped), where C is the shorter dimension (see ``NARROW``)."""
    k = X.shape[0]
    if X.shape[-1] < G.shape[-1] and not (batched_grad(G) or batched_grad(X)):
        return _weight_product(X, G).transpose(1, 2)
    F, Fi = k // 2 + 1, (k - 1) // 2
    Gt = G.transpose(1, 2)
    if batched_grad(G) or batched_grad(X):
        return _product_functional(Gt, X, F, Fi, sign=-1.0)
    S = X.new_empty(k, G.shape[-1], X.shape[-1])
    torch.bmm(Gt[:F], X[:F], out=S[:F])
    if Fi:
        re, im = slice(1, 1 + Fi), slice(F, k)
        S[re].baddbmm_(Gt[im], X[im], alpha=-1)
        torch.bmm(Gt[re], X[im], out=S[im])
        S[im].baddbmm_(Gt[im], X[re])
    return S


def _param_grad(S: Tensor, k: int, kind: ParamKind) -> Tensor:
    """(k, R, C) from :func:`_weight_product` -> the (R, C, k) gradient of the weight or stored spectrum."""
    _, R, C = S.shape
    DPT = cached(param_matrix, k, kind, S.device, S.dtype)[1]
    if not S.is_contiguous():  # transposed by _weight_product: (k, C, R) in memory
        return torch.mm(S.transpose(1, 2).reshape(k, C * R).t(), DPT).view(C, R, k).transpose(0, 1).contiguous()
    return torch.mm(S.view(k, R * C).t(), DPT).view(R, C, k)


def _add_bias(z: Tensor, bias: Tensor | None) -> Tensor:
    return z if bias is None or z.shape[0] == 0 else z.add_(bias)


def gemm_forward(x: Tensor, Wp: Tensor, bias: Tensor | None, shape: BlockShape, out: Tensor | None = None
                 ) -> Tensor:
    """The forward kernel alone (inference): x (B, p), Wp the packed weight (k, R, C) of :func:`packed_weight`;
    the result written into ``out`` (B, q), contiguous, where given."""
    k = shape.block_size
    X = _packed(x, shape.in_blocks, k)
    return _add_bias(_product(X, Wp.transpose(1, 2), shape.out_features, out), bias)


class BlockGemmFunction(Function):
    """z = W x + b for a q x p block-circulant W, x (B, p), by the real GEMM kernels, with the hand-derived
    backward; with ``rows``, on chunks of that many rows, as :class:`~dftnet.kernels.block.BlockDFTFunction`.
    Saved: x and the parameter (for double backward), the packed weight Wp (k, R, C) and the chunks' packed
    inputs X (k, rows, C), except for an input that needs a gradient at k <= ``RECOMPUTE_MAX_K``, whose X
    is recomputed from x in backward. Backward transforms the output gradient once and runs eight batched
    GEMMs and one inverse transform per chunk. Double backward (``create_graph``) builds the gradients from
    differentiable pieces, as :class:`~dftnet.kernels.block.BlockDFTFunction` does."""

    @staticmethod
    def forward(ctx, x, param, bias, shape: BlockShape, kind: ParamKind = WEIGHT, rows: int | None = None):
        k = shape.block_size
        x = x.contiguous()  # one layout into the GEMMs: a strided input gives what its copy gives, to the bit
        Wp = packed_weight(param, kind)
        chunks = row_chunks(x, None if batched_grad(x) else rows)
        out = x.new_empty(x.shape[0], shape.out_features) if len(chunks) > 1 else None
        # an input that needs a gradient is an activation, kept anyway: up to RECOMPUTE_MAX_K its packed
        # form X (as large again) is recomputed in backward instead of kept
        recompute = x.requires_grad and k <= RECOMPUTE_MAX_K
        Xs = []
        for xc, zc in zip(chunks, chunk_outputs(out, rows, len(chunks))):
            X = _packed(xc, shape.in_blocks, k)
            z = _add_bias(_product(X, Wp.transpose(1, 2), shape.out_features, zc), bias)
            if not recompute:
                Xs.append(X)
        ctx.shape, ctx.kind, ctx.rows = shape, kind, rows if len(chunks) > 1 else None
        ctx.save_for_backward(x, param, Wp, *Xs)
        return z if out is None else out

    @staticmethod
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):  # backward under autocast: keep the GEMMs'
            return BlockGemmFunction._backward(ctx, grad_out)      # dtype (float32 or float64)

    @staticmethod
    def _backward(ctx, grad_out):
        x, param, Wp, *Xs = ctx.saved_tensors
        shape, kind = ctx.shape, ctx.kind
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous()  # as the input: one layout into the GEMMs and the bias's sum
        grad_x = grad_w = grad_b = None
        if need_b:
            grad_b = grad_out.sum(0)
        if torch.is_grad_enabled():
            weight = kind.weight(param)
            if need_x:
                grad_x = BlockGemmFunction.apply(grad_out, weight.transpose(0, 1), None, shape.transpose())
            if need_w:
                grad_w = kind.from_weight_grad(BlockWeightGradFunction.apply(grad_out, x, shape))
            return grad_x, grad_w, grad_b, None, None, None
        k = shape.block_size
        chunks, Xs, rows, out, outs = backward_chunks(grad_out, Xs, ctx.rows, shape.in_features, need_x)
        S = None
        for gc, xc, X, gxc in zip(chunks, row_chunks(x, rows), Xs, outs):  # X None: recomputed from xc
            G = _packed(gc, shape.out_blocks, k)  # (k, rows, R)
            if need_x:
                grad_x = _product(G, Wp, shape.in_features, gxc)
            if need_w:
                P = _weight_product(G, _packed(xc, shape.in_blocks, k) if X is None else X)
                S = P if S is None else S.add_(P)
        if need_w:
            grad_w = _param_grad(S, k, kind)
        return grad_x if out is None else out, grad_w, grad_b, None, None, None
