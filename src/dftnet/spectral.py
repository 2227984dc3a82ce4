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

import torch
from torch import Tensor

__all__ = ["SPECTRAL_GAIN", "hartley", "spectrum_to_weight", "weight_to_spectrum"]

# Chosen by measurement (README, "Large nets that learn"): 4, 16, 32 and 64 were tried; with AdamW at
# lr 1e-3 ... 3e-3, 32 moves every layer's spectrum by about 3-10% of its initial magnitude per step.
SPECTRAL_GAIN = 32.0


def hartley(x: Tensor) -> Tensor:
    """The discrete Hartley transform along the last dimension: ``H = Re X - Im X`` with ``X = fft(x)``
    (one FFT and one subtraction; fewer ops than rfft plus mirroring). ``hartley(hartley(x)) = n x``."""
    X = torch.view_as_real(torch.fft.fft(x))
    return X[..., 0] - X[..., 1]


def spectrum_to_weight(spectrum: Tensor, scale: float) -> Tensor:
    """``w = H(spectrum) * scale / n``: the structured weight from its stored spectrum (differentiable)."""
    if spectrum.dtype in (torch.float16, torch.bfloat16):  # no half FFTs on CPU
        return spectrum_to_weight(spectrum.float(), scale).to(spectrum.dtype)
    return hartley(spectrum) * (scale / spectrum.shape[-1])


def weight_to_spectrum(weight: Tensor, scale: float) -> Tensor:
    """``spectrum = H(w) / scale``: the inverse of :func:`spectrum_to_weight`."""
    if weight.dtype in (torch.float16, torch.bfloat16):
        return weight_to_spectrum(weight.float(), scale).to(weight.dtype)
    return hartley(weight) / scale
