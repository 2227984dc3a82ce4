r"""The spectral parametrisation: a structured layer stores its weight's Hartley spectrum, scaled.

Why. A hidden DFT layer's input comes out of a ReLU and has a positive mean, so the gradient of its
weight ``w`` is nearly the same for every k: ``gw[k] ~ mean(h) sum_i g[i]``. Adam's first steps are
sign-like and would move all n weights the same way, shifting the layer's DC gain by ``lr n`` and killing
every ReLU of a wide net after one step (784-16384-16384-10 ended at chance). Stored as its spectrum,
the same gradient lands on ONE coordinate (the DC bin), and Adam steps each frequency's gain on its own:
a relative change of about ``lr * SPECTRAL_GAIN`` per step, whatever n is.

What is stored. The discrete Hartley transform ``H(x)[k] = sum_m x[m] cas(2 pi k m / n)`` with
``cas = cos + sin`` is real, orthogonal up to ``sqrt(n)`` and its own inverse up to n; ``H(x)[k]`` and
``H(x)[n - k]`` are the two real coordinates of frequency k (``Re - Im`` and ``Re + Im`` of
``rfft(x)[k]``). A layer keeps the parameter ``spectrum = H(w) / scale`` (same shape as w) and computes

    w = H(spectrum) * scale / n,        scale = SPECTRAL_GAIN * m,

with m the magnitude per frequency that the He-style init gives the layer (:mod:`dftnet.init`), so
``spectrum`` starts with entries of RMS ``1 / SPECTRAL_GAIN`` in every layer, and AdamW's decoupled
weight decay shrinks w exactly as it shrinks ``spectrum`` (the map is linear and orthogonal up to scale).
The matrix is unchanged: still built from one length-n vector w (per block for block layers).
"""

from __future__ import annotations

import math
import sys
from functools import lru_cache

import torch
from torch import Tensor

from ._compat import batched_grad, cached

__all__ = ["SPECTRAL_GAIN", "hartley", "cas_matrix", "by_cas_matrix", "spectrum_to_weight", "weight_to_spectrum",
           "conj_rfft_of_weight", "spectrum_grad"]

# Chosen by measurement (CHANGELOG.md, "A user's own loop, version 0.1 and prototypes"): 4, 16, 32 and 64
# were tried; with AdamW at lr 1e-3 ... 3e-3, 32 moves every layer's spectrum by about 3-10% of its initial
# magnitude per step.
SPECTRAL_GAIN = 32.0


def hartley(x: Tensor) -> Tensor:
    """The discrete Hartley transform along the last dimension: ``H = Re X - Im X`` with ``X = fft(x)``
    (one FFT and one subtraction; fewer ops than rfft plus mirroring). ``hartley(hartley(x)) = n x``."""
    X = torch.view_as_real(torch.fft.fft(x))
    return X[..., 0] - X[..., 1]


# Below this length the weight is one matrix-vector product with the cached, scaled cas matrix: fewer
# ops than the FFT and its views (each op costs microseconds on CPU), and O(n^2) is small there.
MATRIX_MAX_N = 256


@lru_cache(maxsize=64)
def cas_matrix(n: int, scale: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``cas(2 pi k m / n) * scale / n`` (n x n, symmetric), built in float64."""
    k = torch.arange(n, dtype=torch.float64)
    angle = torch.outer(k, k).remainder_(n) * (2 * math.pi / n)
    return ((torch.cos(angle) + torch.sin(angle)) * (scale / n)).to(device=device, dtype=dtype)


def spectrum_to_weight(spectrum: Tensor, scale: float) -> Tensor:
    """``w = H(spectrum) * scale / n``: the structured weight from its stored spectrum (differentiable)."""
    if spectrum.dtype in (torch.float16, torch.bfloat16):  # no half FFTs on CPU
        return spectrum_to_weight(spectrum.float(), scale).to(spectrum.dtype)
    n = int(spectrum.shape[-1])  # under torch.jit.trace a size is a tensor, whose arithmetic rounds in float32
    if by_cas_matrix(spectrum):
        return spectrum @ _replicated_like(cas_matrix(n, float(scale), spectrum.device, spectrum.dtype), spectrum)
    # scaled first: the spectrum's gradient is then the scaling's fresh, contiguous product, not the real
    # part of the FFT's complex gradient (a view with stride 2)
    return hartley(spectrum * (scale / n))


def _replicated_like(matrix: Tensor, spectrum: Tensor) -> Tensor:
    """``matrix`` as a DTensor replicated over the mesh of ``spectrum`` where that is a DTensor (a sharded
    layer under FSDP2: a product needs both operands distributed), else as is."""
    dtensor = sys.modules.get("torch.distributed.tensor")  # not imported: spectrum cannot be a DTensor
    if dtensor is None or not isinstance(spectrum, dtensor.DTensor):
        return matrix
    mesh = spectrum.device_mesh
    return dtensor.DTensor.from_local(matrix, mesh, [dtensor.Replicate()] * mesh.ndim, run_check=False)


def by_cas_matrix(spectrum: Tensor) -> bool:
    """Whether to map this (float32 or float64) spectrum by a product with :func:`cas_matrix`: up to
    ``MATRIX_MAX_N``, not while tracing, and not under autocast (which would run the product in a lower
    precision; FFTs are left alone)."""
    return (spectrum.shape[-1] <= MATRIX_MAX_N and spectrum.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled(spectrum.device.type))


def weight_to_spectrum(weight: Tensor, scale: float) -> Tensor:
    """``spectrum = H(w) / scale``: the inverse of :func:`spectrum_to_weight`."""
    if weight.dtype in (torch.float16, torch.bfloat16):
        return weight_to_spectrum(weight.float(), scale).to(weight.dtype)
    return hartley(weight) / scale


# The kernels never need the weight itself on the circular route: its spectrum and the gradient of the
# spectrum are elementwise maps of the stored Hartley coefficients (no FFT). With s = spectrum,
# w = H(s) * scale / n and s[-f] = s[(n - f) % n]:
#     conj(rfft(w))[f] = scale / 2 * ((s[f] + s[-f]) + i (s[f] - s[-f])) = scale / 2 * (1 - i) * (s[-f] + i s[f])
# and for a weight gradient given by its rfft S (gw = irfft(S, n)), grad_s = scale / n * H(gw); with
# T = scale / n * (1 + i) * S (so Re T = scale / n * (Re S - Im S), Im T = scale / n * (Re S + Im S)):
#     grad_s[f] = Re T[f] (f <= n / 2),        grad_s[n - f] = Im T[f] (0 < f < n / 2)
# which holds where Im S = 0 at f = 0 and f = n / 2, as for the rfft of any real signal (and sums of
# products of such rffts). Each map is one gather and one complex multiply: few ops matter, since every
# op costs microseconds next to the FFTs of a small layer.


@lru_cache(maxsize=256)
def _mirror_index(n: int, device: torch.device) -> Tensor:
    """``[(-f) % n for f in 0 .. n // 2]``."""
    return (-torch.arange(n // 2 + 1, device=device)) % n


@lru_cache(maxsize=256)
def _unfold_index(n: int, device: torch.device) -> Tensor:
    """Indices into the flattened ``view_as_real(T)``: ``2 f`` (Re T[f]) for ``f <= n // 2``, then
    ``2 (n - m) + 1`` (Im T[n - m]) for ``m > n // 2``."""
    F = n // 2 + 1
    m = torch.arange(F, n, device=device)
    return torch.cat([torch.arange(F, device=device) * 2, (n - m) * 2 + 1])


def conj_rfft_of_weight(spectrum: Tensor, scale: float) -> Tensor:
    """``conj(rfft(w))`` along the last dimension for ``w = spectrum_to_weight(spectrum, scale)``, from
    the stored coefficients alone (no FFT; differentiable). ``(..., n) -> (..., n // 2 + 1)`` complex."""
    n = spectrum.shape[-1]
    index = cached(_mirror_index, n, spectrum.device)
    out = torch.complex(spectrum.index_select(-1, index), spectrum.narrow(-1, 0, n // 2 + 1))
    return out.mul_(complex(scale / 2, -scale / 2))


def spectrum_grad(S: Tensor, n: int, scale: float) -> Tensor:
    """The gradient of the stored coefficients from ``S = rfft(grad_weight, n)`` along the last dimension
    (no FFT; differentiable): the adjoint of :func:`spectrum_to_weight` applied to ``irfft(S, n)``.
    ``(..., n // 2 + 1)`` complex, with ``Im S = 0`` at 0 and ``n / 2`` (an rfft's) ``-> (..., n)`` real."""
    index = cached(_unfold_index, n, S.device)
    T = S * complex(scale / n, scale / n)
    if T.requires_grad or T.stride(-1) != 1 or batched_grad(T):  # view(dtype): no gradient, no vmap rule
        T = torch.view_as_real(T).reshape(*T.shape[:-1], -1)
    else:  # (Re T, Im T) interleaved in one view: fewer ops than view_as_real and a flatten
        T = T.view(T.dtype.to_real())
    return T.index_select(-1, index)
