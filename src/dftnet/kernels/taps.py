"""A DFT layer's parameter as the kernels use it: its weight, the taps the FFT correlates with, their
conjugate spectrum, and the parameter's gradient back from the taps' or the spectrum's.

The parameter is the weight itself (the functional form) or the layer's stored scaled Hartley spectrum
(:mod:`dftnet.spectral`): a :class:`ParamKind` says which and maps it. The block kernels
(:mod:`dftnet.kernels.block`) use the same maps per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ..plan import Plan
from ..spectral import (
    by_cas_matrix,
    cas_matrix,
    conj_rfft_of_weight,
    spectrum_grad,
    spectrum_to_weight,
    weight_to_spectrum,
)

__all__ = ["weight_taps", "fold_taps", "weight_spectrum", "ParamKind", "WEIGHT"]


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
    if plan.circular:  # no full-range slice (an alias, which the autograd engine's vmap cannot batch)
        return taps_grad if taps_grad.shape[-1] == plan.n else taps_grad[: plan.n]
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


@dataclass(frozen=True)
class ParamKind:
    """What a structure's parameter is: the weight w itself (``scale`` None, :data:`WEIGHT`: the functional
    forms) or a layer's stored spectrum ``H(w) / scale`` (:mod:`dftnet.spectral`). A structure holds one
    (:mod:`dftnet._dispatch.routes`) and the kernels ask it for the weight, its spectrum and the parameter's gradient.
    Frozen and hashable: a cache key."""

    scale: float | None = None

    def weight(self, param: torch.Tensor) -> torch.Tensor:
        """The weight w (differentiable): the parameter itself, or ``spectrum_to_weight(param, scale)``."""
        return param if self.scale is None else spectrum_to_weight(param, self.scale)

    def param(self, weight: torch.Tensor) -> torch.Tensor:
        """The parameter that gives the weight w: the inverse of :meth:`weight`."""
        return weight if self.scale is None else weight_to_spectrum(weight, self.scale)

    def from_weight_grad(self, grad_weight: torch.Tensor) -> torch.Tensor:
        """The parameter's gradient from the weight's (the spectral map is its own adjoint)."""
        return grad_weight if self.scale is None else spectrum_to_weight(grad_weight, self.scale)

    def conj_spectrum(self, param: torch.Tensor, plan: Plan) -> torch.Tensor:
        """``conj(rfft(taps, L))``; elementwise for a spectrum on the circular route."""
        if self.scale is not None and plan.circular:
            return conj_rfft_of_weight(param, self.scale)
        return weight_spectrum(self.weight(param), plan)

    def inverts_gradient(self, plan: Plan) -> bool:
        """Whether the parameter's gradient needs ``irfft(sum_batch G * X, L)`` (False: elementwise)."""
        return self.scale is None or not plan.circular

    def grad(self, S: torch.Tensor, plan: Plan) -> torch.Tensor:
        """The parameter's gradient from what :func:`dftnet.kernels.circulant._backward_rows` returns:
        ``S = sum_batch G * X`` where the gradient is elementwise, else (:meth:`inverts_gradient`) the taps'
        gradient ``irfft(S, L)``."""
        if not self.inverts_gradient(plan):
            assert self.scale is not None  # inverts_gradient is True without a scale
            return spectrum_grad(S, plan.n, self.scale)
        return self.from_weight_grad(fold_taps(S, plan))

    def rfft(self, param: torch.Tensor) -> torch.Tensor:
        """``rfft(w)`` along the last dimension (elementwise from a stored spectrum): the block kernels'."""
        if self.scale is None:
            return torch.fft.rfft(param, dim=-1)
        return conj_rfft_of_weight(param, self.scale).conj_physical()

    def grad_from_rfft(self, S: torch.Tensor, n: int) -> torch.Tensor:
        """The parameter's gradient from ``S = rfft(grad_weight, n)`` along the last dimension."""
        if self.scale is None:
            return torch.fft.irfft(S, n, dim=-1)
        return spectrum_grad(S.contiguous(), n, self.scale)

    def composed(self, A: torch.Tensor) -> torch.Tensor:
        """The n x m matrix P with ``param @ P = weight(param) @ A`` for an n x m matrix A (float64)."""
        if self.scale is None:
            return A
        return spectrum_to_weight(torch.eye(A.shape[0], dtype=A.dtype), self.scale) @ A

    def matrix_taps(self, param: torch.Tensor, p: int, q: int) -> torch.Tensor:
        """The p + q - 1 taps ``taps[m] = w[m % n]`` of the q x p matrix (``W[i, j] = taps[i + j]``), along the
        last dimension (differentiable: plain torch ops, so autograd's C++ nodes do the backward). For a
        spectrum with n <= ``MATRIX_MAX_N`` one product with a cached (n, p + q - 1) cas matrix; otherwise the
        weight repeated."""
        n, length = param.shape[-1], p + q - 1
        if self.scale is not None and by_cas_matrix(param):
            return param @ _cas_taps(n, length, float(self.scale), param.device, param.dtype)
        w = self.weight(param)
        return w[..., :length] if length <= n else torch.cat([w, w[..., : length - n]], -1)  # length < 2n


WEIGHT = ParamKind()


@lru_cache(maxsize=64)
def _cas_taps(n: int, length: int, scale: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    index = torch.arange(length, device=device) % n
    return cas_matrix(n, scale, device, dtype).index_select(1, index).contiguous()
