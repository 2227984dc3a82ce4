"""How each structure computes its product: the dense route, the FFT route and its explicit matrix.

A *structure* is one layer shape of one kind (circulant or block-circulant). :mod:`dftnet._pipeline` runs
every call through the same steps (dtypes, autocast, route choice, extreme values) and asks the
structure only for its cost model, its explicit matrix, its dense and FFT routes for eager autograd, and
its *reference* form (plain differentiable torch ops, for tracers and transforms), so the two layers
differ in their kernels and nothing else.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .kernels.block import BlockDFTFunction, BlockShape, block_matrix, block_reference
from .kernels.circulant import DenseDFTFunction, circulant_view, dft_forward, dft_linear_autograd, dft_reference
from .plan import Plan, make_plan, use_dense

__all__ = ["Circulant", "BlockCirculant", "dft_matrix"]


@lru_cache(maxsize=64)
def _dense_index(in_features: int, out_features: int, n: int, device: torch.device) -> Tensor:
    i = torch.arange(out_features, device=device).unsqueeze(1)
    j = torch.arange(in_features, device=device).unsqueeze(0)
    return (i + j) % n


def dft_matrix(weight: Tensor, in_features: int, out_features: int) -> Tensor:
    """The explicit q x p matrix ``W[i, j] = weight[(i + j) % n]`` (differentiable in ``weight``)."""
    n = weight.shape[-1]
    if max(in_features, out_features) != n:
        raise ValueError(
            f"weight must have max(in_features, out_features) = {max(in_features, out_features)} "
            f"elements, got {n}"
        )
    # uncached for large index tensors (not worth keeping) and under dynamo (which warns about lru_cache)
    uncached = in_features * out_features > 2**22 or torch.compiler.is_compiling()
    index = _dense_index.__wrapped__ if uncached else _dense_index
    return weight[..., index(in_features, out_features, n, weight.device)]


class Circulant:
    """The q x p DFT layer ``W[i, j] = w[(i + j) % n]`` (see :mod:`dftnet.kernels.circulant`)."""

    name = "dft_linear"

    def __init__(self, in_features: int, out_features: int, fft_size: int | None, recompute_spectrum: bool):
        self.in_features, self.out_features = in_features, out_features
        self.fft_size, self.recompute_spectrum = fft_size, recompute_spectrum

    @property
    def plan(self) -> Plan:
        return make_plan(self.in_features, self.out_features, self.fft_size)

    def dense_cheaper(self, batch: int, device: torch.device, training: bool) -> bool:
        if self.fft_size is not None:  # an explicit FFT length asks for the FFT route
            return False
        return use_dense(self.in_features, self.out_features, batch, device, training)

    def matrix(self, weight: Tensor) -> Tensor:
        return dft_matrix(weight, self.in_features, self.out_features)

    def dense(self, input: Tensor, weight: Tensor, bias: Tensor | None, training: bool) -> Tensor:
        p, q = self.in_features, self.out_features
        if not training:
            return torch.nn.functional.linear(input, circulant_view(weight, p, q), bias)
        if input.numel() == 0:
            return torch.nn.functional.linear(input, self.matrix(weight), bias)
        out = DenseDFTFunction.apply(input, weight, p, q)  # keeps only x and w for backward
        return out if bias is None else out + bias

    def fft(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        plan = self.plan
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias)):
            save_spectrum = plan.circular and not self.recompute_spectrum
            return dft_linear_autograd(input, weight, bias, plan, save_spectrum)
        return dft_forward(input, weight, bias, plan)  # inference: no autograd bookkeeping

    def reference(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return dft_reference(input, weight, bias, self.plan)


class BlockCirculant:
    """The q x p block-circulant layer ``W[i, j] = w[i // k, j // k, (i + j) % k]`` (see
    :mod:`dftnet.kernels.block`)."""

    name = "block_dft_linear"

    def __init__(self, shape: BlockShape):
        self.shape = shape
        self.in_features, self.out_features = shape.in_features, shape.out_features

    def dense_cheaper(self, batch: int, device: torch.device, training: bool) -> bool:
        s = self.shape
        return use_dense(s.in_features, s.out_features, batch, device, training, block_size=s.block_size)

    def matrix(self, weight: Tensor) -> Tensor:
        return block_matrix(weight, self.in_features, self.out_features)

    def dense(self, input: Tensor, weight: Tensor, bias: Tensor | None, training: bool) -> Tensor:
        return torch.nn.functional.linear(input, self.matrix(weight), bias)

    def fft(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        p, q = self.in_features, self.out_features
        out = BlockDFTFunction.apply(input.reshape(-1, p), weight, self.shape)[0]
        out = out.reshape(*input.shape[:-1], q)
        return out if bias is None else out + bias

    def reference(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return block_reference(input, weight, bias, self.shape)
