"""A DFT layer's parameter as the kernels use it: its weight, the taps the FFT correlates with, their
conjugate spectrum, and the parameter's gradient back from the taps' or the spectrum's.

The parameter is the weight itself (``scale`` None, the functional form) or the layer's stored scaled
Hartley spectrum (``scale`` = its spectral scale, :mod:`dftnet.spectral`). The block kernels
(:mod:`dftnet.kernels.block`) use the same maps per block.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..plan import Plan
from ..spectral import by_cas_matrix, cas_matrix, conj_rfft_of_weight, spectrum_grad, spectrum_to_weight

__all__ = ["weight_taps", "fold_taps", "weight_spectrum", "param_weight", "param_spectrum", "inverts_gradient",
           "param_grad", "matrix_taps"]


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


def param_weight(param: torch.Tensor, scale: float | None) -> torch.Tensor:
    """The weight w of a parameter: itself (``scale`` None) or ``spectrum_to_weight(param, scale)``."""
    return param if scale is None else spectrum_to_weight(param, scale)


def param_spectrum(param: torch.Tensor, plan: Plan, scale: float | None) -> torch.Tensor:
    """``conj(rfft(taps, L))`` of a parameter; elementwise for a spectrum on the circular route."""
    if scale is not None and plan.circular:
        return conj_rfft_of_weight(param, scale)
    return weight_spectrum(param_weight(param, scale), plan)


def inverts_gradient(plan: Plan, scale: float | None) -> bool:
    """Whether the parameter's gradient needs ``irfft(sum_batch G * X, L)`` (False: elementwise)."""
    return scale is None or not plan.circular


def param_grad(S: torch.Tensor, plan: Plan, scale: float | None) -> torch.Tensor:
    """The parameter's gradient from what :func:`dftnet.kernels.circulant._backward_rows` returns:
    ``S = sum_batch G * X`` where the gradient is elementwise, else (:func:`inverts_gradient`) the taps'
    gradient ``irfft(S, L)``."""
    if not inverts_gradient(plan, scale):
        assert scale is not None  # inverts_gradient is True without a scale
        return spectrum_grad(S, plan.n, scale)
    gw = fold_taps(S, plan)
    return gw if scale is None else spectrum_to_weight(gw, scale)  # the map is its own adjoint


def matrix_taps(param: torch.Tensor, p: int, q: int, scale: float | None) -> torch.Tensor:
    """The p + q - 1 taps ``taps[m] = w[m % n]`` of the q x p matrix (``W[i, j] = taps[i + j]``), from the
    weight or the stored spectrum, along the last dimension (differentiable: plain torch ops, so autograd's
    C++ nodes do the backward). For a spectrum with n <= ``MATRIX_MAX_N`` one product with a cached
    (n, p + q - 1) cas matrix; otherwise the weight repeated."""
    n, length = param.shape[-1], p + q - 1
    if scale is not None and by_cas_matrix(param):
        return param @ _cas_taps(n, length, float(scale), param.device, param.dtype)
    w = param_weight(param, scale)
    return w[..., :length] if length <= n else torch.cat([w, w[..., : length - n]], -1)  # length < 2n


@lru_cache(maxsize=64)
def _cas_taps(n: int, length: int, scale: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    index = torch.arange(length, device=device) % n
    return cas_matrix(n, scale, device, dtype).index_select(1, index).contiguous()
