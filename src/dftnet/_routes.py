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

from .kernels.block import (BlockDFTFunction, BlockShape, block_dense_forward, block_forward, block_matrix,
                            block_reference, weight_spectrum as block_weight_spectrum)
from .kernels.circulant import (circulant_view, dense_forward, dft_forward, dft_linear_autograd, dft_reference,
                                param_spectrum, param_weight)
from .plan import make_plan, use_dense

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


def _recorded(input: Tensor, param: Tensor, bias: Tensor | None, diagonal: Tensor | None = None) -> bool:
    """Whether autograd records this call (the FFT routes then run their autograd Function, otherwise the
    forward kernel alone)."""
    return torch.is_grad_enabled() and (input.requires_grad or param.requires_grad
                                        or (bias is not None and bias.requires_grad)
                                        or (diagonal is not None and diagonal.requires_grad))


class _InferenceMemo:
    """What a layer derives from its parameter (its weight, matrix, spectrum), kept for calls that do
    not differentiate it (inference): keyed on the parameter itself, its version counter (which every
    in-place update bumps) and its storage, so any change of the parameter invalidates it."""

    def __init__(self):
        self.param, self.key, self.values = None, None, {}

    def get(self, name: str, param: Tensor, make):
        try:
            # inference tensors (made in inference mode) only serve inference mode
            key = (param._version, param.data_ptr(), torch.is_inference_mode_enabled())
        except RuntimeError:  # an inference-mode tensor has no version counter: do not cache
            return make()
        if param is not self.param or key != self.key:
            self.param, self.key, self.values = param, key, {}
        value = self.values.get(name)
        if value is None:
            value = self.values[name] = make()
        return value


class _Structure:
    """What both structures share: the parameter's weight, the route per (batch, device type,
    training), and the inference memo of values derived from the parameter."""

    def __init__(self, scale: float | None, memo: bool):
        self.scale = scale
        self.memo = _InferenceMemo() if memo else None
        self._routes: dict = {}

    def weight(self, param: Tensor) -> Tensor:
        """The weight w from the parameter (differentiable)."""
        return param_weight(param, self.scale)

    def dense_cheaper(self, batch: int, device_type: str, training: bool) -> bool:
        key = (batch, device_type, training)
        dense = self._routes.get(key)
        if dense is None:
            dense = self._dense_cheaper(batch, torch.device(device_type), training)
            if len(self._routes) < 256 and not torch.compiler.is_compiling():
                self._routes[key] = dense
        return dense

    def _derived(self, name: str, param: Tensor, make):
        """``make(param)``, kept in the memo while the parameter is unchanged (inference only)."""
        if self.memo is None or (param.requires_grad and torch.is_grad_enabled()):
            return make(param)
        return self.memo.get(name, param, lambda: make(param))


class Circulant(_Structure):
    """The q x p DFT layer ``W[i, j] = w[(i + j) % n]`` (see :mod:`dftnet.kernels.circulant`).

    The parameter handed to the routes is the weight w (``scale`` None, the functional form) or the
    layer's stored spectrum (``scale`` = its spectral scale, :mod:`dftnet.spectral`). A layer keeps
    one structure: the plan, the route per batch size, and (``memo``) the inference-time derived
    tensors are computed once."""

    name = "dft_linear"
    fuses_diagonal = True  # fft() takes the input's diagonal scaling into its autograd Function

    def __init__(self, in_features: int, out_features: int, fft_size: int | None, recompute_spectrum: bool | None,
                 scale: float | None = None, memo: bool = False):
        super().__init__(scale, memo)
        self.in_features, self.out_features = in_features, out_features
        self.fft_size, self.recompute_spectrum = fft_size, recompute_spectrum
        self.plan = make_plan(in_features, out_features, fft_size)

    def _dense_cheaper(self, batch: int, device: torch.device, training: bool) -> bool:
        if self.fft_size is not None:  # an explicit FFT length asks for the FFT route
            return False
        return use_dense(self.in_features, self.out_features, batch, device, training)

    def matrix(self, param: Tensor) -> Tensor:
        return dft_matrix(self.weight(param), self.in_features, self.out_features)

    def _make_matrix(self, param: Tensor) -> Tensor:
        weight = self._derived("weight", param, self.weight)
        return circulant_view(weight, self.in_features, self.out_features)

    def dense(self, input: Tensor, param: Tensor, bias: Tensor | None, training: bool) -> Tensor:
        p, q = self.in_features, self.out_features
        if not training:
            return torch.nn.functional.linear(input, self._derived("matrix", param, self._make_matrix), bias)
        return dense_forward(input, param, bias, p, q, self.scale)

    def save_spectrum(self, input: Tensor, diagonal: Tensor | None) -> bool:
        """Whether backward gets the input's spectrum X (L + 2 reals a row) saved, or recomputes it from the
        input (p reals a row; one more FFT). ``recompute_spectrum`` True/False decides; None (auto) saves X
        only where the input is not kept anyway (no diagonal, no gradient to it) and is not the smaller."""
        plan = self.plan
        if not plan.circular or self.recompute_spectrum:
            return False
        if self.recompute_spectrum is False:
            return True
        return not (diagonal is not None or input.requires_grad or plan.in_features < plan.n)

    def fft(self, input: Tensor, param: Tensor, bias: Tensor | None, diagonal: Tensor | None = None) -> Tensor:
        plan = self.plan
        if _recorded(input, param, bias, diagonal):
            return dft_linear_autograd(input, param, bias, plan, self.save_spectrum(input, diagonal), self.scale,
                                       diagonal)
        if diagonal is not None:
            input = input * diagonal
        cWf = self._derived("spectrum", param, lambda p: param_spectrum(p, plan, self.scale))
        return dft_forward(input, param, bias, plan, self.scale, cWf)  # inference: no autograd bookkeeping

    def reference(self, input: Tensor, param: Tensor, bias: Tensor | None) -> Tensor:
        return dft_reference(input, self.weight(param), bias, self.plan)


class BlockCirculant(_Structure):
    """The q x p block-circulant layer ``W[i, j] = w[i // k, j // k, (i + j) % k]`` (see
    :mod:`dftnet.kernels.block`); the parameter is the weight or a stored spectrum, as for
    :class:`Circulant`."""

    name = "block_dft_linear"

    def __init__(self, shape: BlockShape, scale: float | None = None, memo: bool = False):
        super().__init__(scale, memo)
        self.shape = shape
        self.in_features, self.out_features = shape.in_features, shape.out_features

    def _dense_cheaper(self, batch: int, device: torch.device, training: bool) -> bool:
        s = self.shape
        return use_dense(s.in_features, s.out_features, batch, device, training, block_size=s.block_size)

    def matrix(self, param: Tensor) -> Tensor:
        return block_matrix(self.weight(param), self.in_features, self.out_features)

    def dense(self, input: Tensor, param: Tensor, bias: Tensor | None, training: bool) -> Tensor:
        if not training:
            return torch.nn.functional.linear(input, self._derived("matrix", param, self.matrix), bias)
        return block_dense_forward(input, param, bias, self.shape, self.scale)

    def fft(self, input: Tensor, param: Tensor, bias: Tensor | None) -> Tensor:
        x2 = input if input.dim() == 2 else input.reshape(-1, self.in_features)  # no view node for 2-D
        if _recorded(input, param, bias):
            out = BlockDFTFunction.apply(x2, param, bias, self.shape, self.scale)
        else:  # inference: no autograd bookkeeping, the weight's spectrum kept while the parameter is unchanged
            Wf = self._derived("spectrum", param, lambda w: block_weight_spectrum(w, self.scale))
            out = block_forward(x2, Wf, bias, self.shape)
        return out if input.dim() == 2 else out.reshape(*input.shape[:-1], self.out_features)

    def reference(self, input: Tensor, param: Tensor, bias: Tensor | None) -> Tensor:
        return block_reference(input, self.weight(param), bias, self.shape)
