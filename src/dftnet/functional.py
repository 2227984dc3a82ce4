"""Functional forms of the structured layers: ``input @ W.T + bias`` for a circulant or block-circulant W.

DFT layer (input size p, output size q, weight ``w`` of length n = max(p, q)): the q x p matrix
``W[i, j] = w[(i + j) % n]`` (row i is w rotated left by i), a circular correlation computed by real
FFTs in O(n log n) per example.

Block-circulant layer (block size k, weight (R, C, k) with R = ceil(q/k), C = ceil(p/k)):
``W[i, j] = w[i // k, j // k, (i + j) % k]``, computed by batched FFTs of length k.

Both run through one pipeline (:mod:`dftnet._dispatch.pipeline`): validation here
(:mod:`dftnet._dispatch.checks`; the layers check their input with the same
:func:`~dftnet._dispatch.checks.check_input`), then
autocast and half types, the route choice from one cost model (:func:`dftnet.plan.use_dense`), and exact
handling of inf, nan and extreme magnitudes.
"""

from __future__ import annotations

from torch import Tensor

from ._dispatch.checks import check_bias_and_devices, check_input, check_parameters, check_positive_int
from ._dispatch.pipeline import structured_linear
from ._dispatch.routes import BlockCirculant, Circulant
from .kernels.block import block_matrix
from .kernels.circulant_reference import dft_matrix
from .plan import BlockShape, make_plan

__all__ = ["dft_linear", "block_dft_linear", "dft_matrix", "block_matrix"]


def dft_linear(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    out_features: int | None = None,
    *,
    fft_size: int | None = None,
    method: str = "auto",
    recompute_spectrum: bool | None = None,
    exact_extremes: bool = False,
) -> Tensor:
    """Apply the DFT layer: ``input @ W.T + bias`` with ``W[i, j] = weight[(i + j) % n]``.

    Args:
        input: ``(*, p)`` real floating-point tensor.
        weight: ``(n,)`` with ``n = max(p, out_features)``.
        bias: ``(out_features,)`` or None.
        out_features: q; defaults to n.
        fft_size: FFT length: n (circular correlation) or any L >= p + q - 1 (linear correlation with
            the periodically extended weight); None picks the cheaper (:func:`dftnet.plan.make_plan`).
        method: "fft", "dense" (multiply by the materialised matrix; same result and gradients), or
            "auto" (dense where the cost model says the FFT does not pay off, and for empty inputs).
        recompute_spectrum: what backward keeps of the input: True, the input alone (its spectrum is
            recomputed there: one more FFT); False, its spectrum (L + 2 reals a row instead of p; 2 FFTs in
            backward instead of 3); None (default), the spectrum only where the input would not be kept
            anyway (it needs no gradient) and is not the smaller (p = n). The linear route always recomputes.
        exact_extremes: check the input and weight for inf, nan and extreme magnitudes (one host sync
            per call) and give exactly what the dense product gives there; see :mod:`dftnet._dispatch.pipeline`.

    Returns:
        ``(*, q)`` tensor. Under ``torch.autocast`` the product runs in float32 and the result has the
        autocast dtype.
    """
    fn = "dft_linear"
    check_input(fn, input)
    check_parameters(fn, weight, bias)
    if weight.dim() != 1:
        raise ValueError(f"{fn}: expected a 1-D weight of shape (n,), got shape {tuple(weight.shape)}")
    p, n = input.shape[-1], weight.shape[0]
    q = n if out_features is None else check_positive_int(f"{fn}: out_features", out_features)
    if max(p, q) != n:
        raise ValueError(
            f"{fn}: weight of length {n} needs max(in_features, out_features) = {n}, "
            f"got in_features = {p} (input shape {tuple(input.shape)}) and out_features = {q}"
        )
    check_bias_and_devices(fn, input, bias, q, weight, method)
    if fft_size is not None:
        make_plan(p, q, fft_size)  # validates
    return structured_linear(Circulant(p, q, fft_size, recompute_spectrum), input, weight, bias, method,
                             exact_extremes)


def block_dft_linear(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    out_features: int | None = None,
    *,
    method: str = "auto",
    exact_extremes: bool = False,
) -> Tensor:
    """Apply the block-circulant layer: ``input @ W.T + bias``, ``W[i, j] = weight[i//k, j//k, (i+j) % k]``.

    Args:
        input: ``(*, p)`` real floating-point tensor.
        weight: ``(R, C, k)`` with ``C = ceil(p / k)``, ``R = ceil(q / k)`` and ``k <= max(p, q)``.
        bias: ``(out_features,)`` or None.
        out_features: q; defaults to R k.
        method: "fft", "dense" (multiply by the materialised matrix; same result and gradients), or
            "auto" (dense where the cost model says the FFT does not pay off, and for empty inputs).
        exact_extremes: as for :func:`dft_linear`.

    Returns:
        ``(*, q)`` tensor, computed as :func:`dft_linear` is (autocast, half types, extreme values).
    """
    fn = "block_dft_linear"
    check_input(fn, input)
    check_parameters(fn, weight, bias)
    if weight.dim() != 3 or weight.shape[-1] < 1:
        raise ValueError(
            f"{fn}: expected a 3-D weight of shape (out_blocks, in_blocks, block_size), "
            f"got shape {tuple(weight.shape)}"
        )
    R, C, k = weight.shape
    p = input.shape[-1]
    q = R * k if out_features is None else check_positive_int(f"{fn}: out_features", out_features)
    shape = BlockShape(p, q, k)
    if p < 1 or (R, C) != (shape.out_blocks, shape.in_blocks):
        raise ValueError(
            f"{fn}: weight of shape {tuple(weight.shape)} needs in_features in "
            f"[{(C - 1) * k + 1}, {C * k}] and out_features in [{(R - 1) * k + 1}, {R * k}], got "
            f"in_features = {p} (input shape {tuple(input.shape)}) and out_features = {q}"
        )
    if k > max(p, q):
        raise ValueError(f"{fn}: block_size must be at most max(in_features, out_features) = {max(p, q)}, got {k}")
    check_bias_and_devices(fn, input, bias, q, weight, method)
    return structured_linear(BlockCirculant(shape), input, weight, bias, method, exact_extremes)
