"""How each structure computes its product: the dense route, the FFT route and its explicit matrix.

A *structure* is one layer shape of one kind (circulant or block-circulant). :mod:`dftnet._dispatch.pipeline` runs
every call through the same steps (dtypes, autocast, route choice, extreme values) and asks the
structure only for what :class:`Structure` lists: its cost model, its explicit matrix, its dense and FFT
routes for eager autograd, and its *reference* form (plain differentiable torch ops, for tracers and
transforms), so the two layers differ in their kernels and nothing else.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from .._compat import grad_recorded, intra_op_threads, version_counter
from ..kernels.block import (
    BlockDFTFunction,
    block_dense_forward,
    block_forward,
    block_matrix,
    block_reference,
    embedded_spectrum,
)
from ..kernels.block_gemm import BlockGemmFunction, gemm_forward, packed_weight
from ..kernels.circulant import dft_forward
from ..kernels.circulant_autograd import dft_linear_autograd
from ..kernels.circulant_reference import circulant_view, dense_forward, dft_matrix, dft_reference
from ..kernels.taps import WEIGHT, ParamKind
from ..plan import BlockShape, block_chunk_rows, block_kernel, make_plan, use_dense

__all__ = ["Structure", "Circulant", "BlockCirculant"]


class Structure(Protocol):
    """What :func:`dftnet._dispatch.pipeline.structured_linear` asks of a structure. ``param`` is what the layer
    stores (the weight, or its spectrum: ``kind`` says which; see :class:`Circulant`)."""

    name: str  # the functional form's name, for error messages
    kind: ParamKind  # what the parameter is
    fuses_diagonal: bool  # whether fft() takes the input's diagonal scaling (an extra argument) itself

    def weight(self, param: Tensor) -> Tensor:
        """The weight w (differentiable)."""

    def dense_cheaper(self, batch: int, device_type: str, training: bool) -> bool:
        """The cost model: is the dense route the cheaper for this call?"""

    def matrix(self, param: Tensor) -> Tensor:
        """The explicit q x p matrix (differentiable)."""

    def dense(self, input: Tensor, param: Tensor, bias: Tensor | None, training: bool) -> Tensor:
        """The dense route in eager mode."""

    def fft(self, input: Tensor, param: Tensor, bias: Tensor | None, diagonal: Tensor | None = None) -> Tensor:
        """The FFT route in eager mode (the hand-written kernels)."""

    def reference(self, input: Tensor, param: Tensor, bias: Tensor | None) -> Tensor:
        """The FFT route from plain differentiable torch ops, for tracers and transforms."""


class _InferenceMemo:
    """What a layer derives from its parameter (its weight, matrix, spectrum), kept for calls that do
    not differentiate it (inference): keyed on the parameter itself, its version counter (which every
    in-place update bumps) and its storage, so any change of the parameter invalidates it."""

    def __init__(self):
        self.param, self.key, self.values = None, None, {}

    def get(self, name: str, param: Tensor, make):
        try:
            # inference tensors (made in inference mode) only serve inference mode
            key = (version_counter(param), param.data_ptr(), torch.is_inference_mode_enabled())
        except RuntimeError:  # a tensor without storage: do not cache
            return make()
        if key[0] is None:  # an inference-mode tensor has no version counter: do not cache
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

    fuses_diagonal = False

    def __init__(self, kind: ParamKind, memo: bool):
        self.kind = kind
        self.memo = _InferenceMemo() if memo else None
        self._routes: dict = {}

    def weight(self, param: Tensor) -> Tensor:
        """The weight w from the parameter (differentiable)."""
        return self.kind.weight(param)

    def dense_cheaper(self, batch: int, device_type: str, training: bool) -> bool:
        key = (batch, device_type, training, intra_op_threads())
        dense = self._routes.get(key)
        if dense is None:
            dense = self._dense_cheaper(batch, torch.device(device_type), training)
            if len(self._routes) < 256 and not torch.compiler.is_compiling():
                self._routes[key] = dense
        return dense

    def _dense_cheaper(self, batch: int, device: torch.device, training: bool) -> bool:
        raise NotImplementedError  # each structure's cost model

    def _derived(self, name: str, param: Tensor, make):
        """``make(param)``, kept in the memo while the parameter is unchanged (inference only)."""
        if self.memo is None or grad_recorded(param):
            return make(param)
        return self.memo.get(name, param, lambda: make(param))


class Circulant(_Structure):
    """The q x p DFT layer ``W[i, j] = w[(i + j) % n]`` (see :mod:`dftnet.kernels.circulant`).

    The parameter handed to the routes is the weight w (``kind`` :data:`~dftnet.kernels.taps.WEIGHT`, the
    functional form) or the layer's stored spectrum (``ParamKind(spectral_scale)``, :mod:`dftnet.spectral`).
    A layer keeps one structure: the plan, the route per batch size, and (``memo``) the inference-time derived
    tensors are computed once."""

    name = "dft_linear"
    fuses_diagonal = True  # fft() takes the input's diagonal scaling into its autograd Function

    def __init__(self, in_features: int, out_features: int, fft_size: int | None, recompute_spectrum: bool | None,
                 kind: ParamKind = WEIGHT, memo: bool = False):
        super().__init__(kind, memo)
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
        return dense_forward(input, param, bias, p, q, self.kind)

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
        if grad_recorded(input, param, bias, diagonal):  # autograd records: the Function
            return dft_linear_autograd(input, param, bias, plan, self.save_spectrum(input, diagonal), self.kind,
                                       diagonal)
        cWf = self._derived("spectrum", param, lambda p: self.kind.conj_spectrum(p, plan))
        return dft_forward(input, param, bias, plan, self.kind, cWf, diagonal)  # inference: no autograd records

    def reference(self, input: Tensor, param: Tensor, bias: Tensor | None) -> Tensor:
        return dft_reference(input, self.weight(param), bias, self.plan)


class BlockCirculant(_Structure):
    """The q x p block-circulant layer ``W[i, j] = w[i // k, j // k, (i + j) % k]`` (see
    :mod:`dftnet.kernels.block`); the parameter is the weight or a stored spectrum, as for
    :class:`Circulant`. Its FFT route has two kernels, chosen per call by the cost model
    (:func:`dftnet.plan.block_kernel`): real GEMMs (:mod:`dftnet.kernels.block_gemm`) or torch.fft."""

    name = "block_dft_linear"

    def __init__(self, shape: BlockShape, kind: ParamKind = WEIGHT, memo: bool = False):
        super().__init__(kind, memo)
        self.shape = shape
        self.in_features, self.out_features = shape.in_features, shape.out_features
        self._kernels: dict = {}

    def _dense_cheaper(self, batch: int, device: torch.device, training: bool) -> bool:
        s = self.shape
        return use_dense(s.in_features, s.out_features, batch, device, training, block_size=s.block_size)

    def kernel(self, batch: int, device_type: str, training: bool) -> str:
        """The FFT route's kernel for this call: "gemm" or "fft" (kept per batch, device type, training and
        number of threads)."""
        key = (batch, device_type, training, intra_op_threads())
        kernel = self._kernels.get(key)
        if kernel is None:
            s = self.shape
            kernel = block_kernel(s.in_features, s.out_features, s.block_size, batch, torch.device(device_type),
                                  training)
            if len(self._kernels) < 256:
                self._kernels[key] = kernel
        return kernel

    def matrix(self, param: Tensor) -> Tensor:
        return block_matrix(self.weight(param), self.in_features, self.out_features)

    def dense(self, input: Tensor, param: Tensor, bias: Tensor | None, training: bool) -> Tensor:
        if not training:
            return torch.nn.functional.linear(input, self._derived("matrix", param, self.matrix), bias)
        return block_dense_forward(input, param, bias, self.shape, self.kind)

    def fft(self, input: Tensor, param: Tensor, bias: Tensor | None, diagonal: Tensor | None = None) -> Tensor:
        assert diagonal is None, "BlockCirculant does not fuse the diagonal: the pipeline multiplies it in first"
        x2 = input if input.dim() == 2 else input.reshape(-1, self.in_features)  # no view node for 2-D
        s = self.shape
        rows = block_chunk_rows(s.in_features, s.out_features, s.block_size, x2.element_size(), x2.shape[0])
        chunked = x2.shape[0] > rows and x2.device.type == "cpu"  # chunks of rows: their spectra stay in cache
        if grad_recorded(input, param, bias):
            gemm = self.kernel(rows if chunked else x2.shape[0], x2.device.type, True) == "gemm"
            out = (BlockGemmFunction if gemm else BlockDFTFunction).apply(x2, param, bias, self.shape, self.kind,
                                                                          rows if chunked else None)
        elif chunked:  # each chunk's kernel writes its rows of the result: no copy
            out = x2.new_empty(x2.shape[0], self.out_features)
            for chunk, chunk_out in zip(x2.split(rows), out.split(rows)):
                self._infer(chunk, param, bias, chunk_out)
        else:
            out = self._infer(x2, param, bias)
        return out if input.dim() == 2 else out.reshape(*input.shape[:-1], self.out_features)

    def _infer(self, x2: Tensor, param: Tensor, bias: Tensor | None, out: Tensor | None = None) -> Tensor:
        """The FFT route in inference, (B, p) -> (B, q), written into ``out`` where given: no autograd
        bookkeeping, the weight's spectrum kept while the parameter is unchanged."""
        if self.kernel(x2.shape[0], x2.device.type, False) == "gemm":
            Wp = self._derived("packed", param, lambda w: packed_weight(w, self.kind))
            return gemm_forward(x2, Wp, bias, self.shape, out)
        We = self._derived("spectrum", param, lambda w: embedded_spectrum(w, self.kind))
        return block_forward(x2, We, bias, self.shape, out)

    def reference(self, input: Tensor, param: Tensor, bias: Tensor | None) -> Tensor:
        return block_reference(input, self.weight(param), bias, self.shape)
