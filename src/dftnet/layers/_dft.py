"""The DFT layer as an ``nn.Module``: :class:`DFTLinear` (a circulant q x p weight matrix)."""

from __future__ import annotations

from torch import Tensor

from .._dispatch.checks import check_positive_int
from .._dispatch.routes import Circulant
from ..init import circulant_kaiming_, circulant_magnitude
from ..kernels.circulant_reference import dft_matrix
from ..kernels.taps import ParamKind
from ..plan import make_plan
from ._structured import _StructuredLinear

__all__ = ["DFTLinear"]


class DFTLinear(_StructuredLinear):
    r"""A dense layer whose q x p weight matrix is circulant: ``W[i, j] = weight[(i + j) % n]``.

    Drop-in for :class:`torch.nn.Linear`: ``y = x W^T + b`` for input ``(*, in_features)``, computed as
    a circular correlation by real FFTs in O(n log n) per example, with n = max(in_features,
    out_features) weights instead of in_features * out_features.

    Args:
        in_features: p, size of each input sample.
        out_features: q, size of each output sample.
        bias: learn an additive bias of shape ``(out_features,)``.
        fft_size, method, recompute_spectrum, exact_extremes: see :func:`dftnet.functional.dft_linear`.
        sign_flip: multiply the input by a fixed random +-1 diagonal first, ``y = W D x + b``
            (Cheng et al., ICCV 2015); D is the buffer ``sign`` and is saved in the state_dict.
        diagonal: learn a diagonal scaling of the input, ``y = W diag(d) x + b`` (diagonal-circulant
            layers, Araujo et al., 2020): p more parameters, initialised to 1. On by default: it raised
            the seed MNIST net's test accuracy by about half a point (CHANGELOG.md, "Recipe levers with
            version 0.1's layer").

    Attributes:
        spectrum: the parameter, ``(n,)``: the weight's Hartley spectrum over ``spectral_scale``
            (:mod:`dftnet.spectral`), so that Adam steps every frequency on its own at any width.
        weight: ``(n,)``, computed from ``spectrum``; initialised by
            :func:`dftnet.init.circulant_kaiming_` (flat magnitude spectrum, zero mean, Var ~ 2/p).
        bias: ``(out_features,)``, initialised ``U(-1/sqrt(p), 1/sqrt(p))`` like ``nn.Linear``.
    """

    __constants__ = ["in_features", "out_features", "fft_size", "method", "recompute_spectrum"]
    _default_diagonal = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 fft_size: int | None = None, method: str = "auto", recompute_spectrum: bool | None = None,
                 sign_flip: bool = False, diagonal: bool = True, exact_extremes: bool = False) -> None:
        super().__init__()
        p = check_positive_int("in_features", in_features)
        q = check_positive_int("out_features", out_features)
        if fft_size is not None:
            make_plan(p, q, fft_size)  # validates
        self.fft_size = fft_size
        self.recompute_spectrum = recompute_spectrum
        self._setup(p, q, (max(p, q),), bias, sign_flip, diagonal, method, circulant_magnitude(p, q),
                    exact_extremes, {"device": device, "dtype": dtype})

    @property
    def n(self) -> int:
        return self.spectrum.shape[0]

    def _init_weight(self, weight: Tensor) -> None:
        circulant_kaiming_(weight, self.in_features, self.out_features)

    def _matrix(self, weight: Tensor) -> Tensor:
        return dft_matrix(weight, self.in_features, self.out_features)

    def _structure_settings(self) -> tuple:
        return (self.fft_size, self.recompute_spectrum, self.spectral_scale)

    def _make_structure(self, kind: ParamKind) -> Circulant:
        return Circulant(self.in_features, self.out_features, self.fft_size, self.recompute_spectrum, kind, memo=True)

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}" + self._repr_tail()
        if self.fft_size is not None:
            s += f", fft_size={self.fft_size}"
        if self.recompute_spectrum is not None:
            s += f", recompute_spectrum={self.recompute_spectrum}"
        return s
