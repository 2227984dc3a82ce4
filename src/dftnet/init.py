"""He-style initialisation of structured weights: flat magnitude spectrum, random phases, zero DC.

The magnitudes per frequency (:func:`circulant_magnitude`, :func:`block_magnitude`) also set the scale of
the spectral parametrisation (:mod:`dftnet.spectral`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._signs import random_signs

__all__ = ["circulant_kaiming_", "block_circulant_kaiming_", "circulant_magnitude", "block_magnitude"]


def circulant_magnitude(in_features: int, out_features: int) -> float:
    """|rfft(w)[k]| of :func:`circulant_kaiming_` for k != 0: ``sqrt(n g / p)``, ``g = 2 / (1 - p / (n pi))``."""
    p, n = in_features, max(in_features, out_features)
    if n <= 2:  # He-uniform fallback: E|rfft(w)[k]|^2 = n Var(w) = 2 n / p
        return math.sqrt(2.0 * n / p)
    return math.sqrt(n * 2.0 / (1.0 - p / (n * math.pi)) / p)


def block_magnitude(in_features: int, out_features: int, block_size: int) -> float:
    """|rfft(w_rc)[f]| of :func:`block_circulant_kaiming_` for f != 0 (see its docstring)."""
    p, k = in_features, block_size
    if k <= 2:
        return math.sqrt(2.0 * k / p)
    C = -(-p // k)
    p_last = p - (C - 1) * k
    fluct = p * (k - 1) * (1 - 1 / math.pi - _relu_block_covariance(k))
    return math.sqrt(2.0 * k * k / (fluct + p_last * (k - p_last) / math.pi))


@torch.no_grad()
def circulant_kaiming_(weight: Tensor, in_features: int, out_features: int) -> Tensor:
    r"""He-style init for a circulant weight: flat magnitude spectrum, random phases, zero mean.

    I.i.d. weights give every frequency k a random gain ``|rfft(w)[k]|^2`` (exponentially distributed),
    and through a deep stack these gains multiply per frequency: activations vanish or explode (seen
    for 19 of 20 seeds in a 10-layer i.i.d. He-initialised DFT+ReLU stack). Instead every non-zero
    frequency gets the same magnitude and a uniform random phase, so a square layer is a scaled
    orthogonal matrix; the DC gain is 0 (``sum(w) = 0``), so outputs are zero-mean and a ReLU keeps
    half their energy. With p inputs of mean-square ``E[a^2] = v + mu^2`` (post-ReLU: ``mu^2 =
    E[a^2] / pi``), ``E[z_i^2] = g (v + mu^2 (1 - p/n))`` for ``Var(w) = g/p``, so
    ``g = 2 / (1 - p / (n pi))`` keeps ``E[relu(z)^2] = E[a^2]`` layer after layer (``g = 2``, He's,
    when p << n). Layers with n <= 2 fall back to He-uniform.
    """
    n = weight.shape[-1]
    p = in_features
    if n <= 2:
        bound = math.sqrt(6.0 / p)
        return nn.init.uniform_(weight, -bound, bound)
    magnitude = circulant_magnitude(p, out_features)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    phase = torch.rand(n // 2 + 1, device=weight.device, dtype=dtype) * (2 * math.pi)
    spectrum = torch.polar(torch.full_like(phase, magnitude), phase)
    spectrum[0] = 0
    if n % 2 == 0:  # the Nyquist bin of a real signal is real: a random sign
        spectrum[-1] = random_signs(1, device=weight.device, dtype=dtype)[0] * magnitude  # no .item(): meta
    return weight.copy_(torch.fft.irfft(spectrum, n))


def _relu_block_covariance(k: int) -> float:
    """Cov(a_i, a_j) / E[a_i^2] for a = relu(z), z Gaussian with correlation -1/(k - 1) (a zero-sum block).

    The arc-cosine kernel (Cho & Saul, 2009): ``E[relu(x) relu(y)] = s^2 (sin t + (pi - t) cos t) / (2 pi)``
    for correlation ``cos t``, minus the squared mean ``s^2 / (2 pi)``, over ``E[a^2] = s^2 / 2``.
    """
    rho = -1.0 / (k - 1)
    return (math.sqrt(1 - rho * rho) + rho * (math.pi - math.acos(rho)) - 1) / math.pi


@torch.no_grad()
def block_circulant_kaiming_(weight: Tensor, in_features: int, out_features: int) -> Tensor:
    r"""He-style init of a ``(R, C, k)`` block weight: per block a flat spectrum, random phases, zero DC.

    The principle of :func:`dftnet.layers.circulant_kaiming_`, block by block: i.i.d. taps would give
    every block and frequency a random gain, while a flat spectrum makes every full block a scaled
    orthogonal matrix, and zero DC (zero block sums) cancels the mean of post-ReLU inputs. With magnitude
    m on the k - 1 non-DC bins, random phases give the taps ``E[w_a w_b] = m^2 (k delta_ab - 1) / k^2``
    and ``sum_b w_b = 0``. An output sums p inputs of mean-square ``E[a^2] = v + mu^2`` over C blocks
    (``mu^2 = E[a^2] / pi`` after a ReLU):

    * the means cancel in every full block and leave ``mu^2 p' (k - p') m^2 / k^2`` from the partial last
      input block of ``p' = p - (C - 1) k`` real columns;
    * the fluctuations give ``(v - c) p (k - 1) m^2 / k^2``, where c is the covariance of two inputs of
      one block: a zero-DC block layer makes its k outputs of a block sum to zero (correlation
      ``-1 / (k - 1)``), and after the ReLU ``c = E[a^2] kappa_k`` (:func:`_relu_block_covariance`,
      -0.21 for k = 3, -0.07 for k = 8, O(1/k)); ignoring it grows the activations by a factor
      ``1 - c / v`` per layer of a deep stack (1.3 for k = 3, 1.1 for k = 8).

    Requiring ``E[relu(z)^2] = E[z^2] / 2 = E[a^2]`` gives

        m^2 = 2 k^2 / (p (k - 1) (1 - 1/pi - kappa_k) + p' (k - p') / pi)

    i.e. ``Var(w) = g / p`` with He's ``g = 2`` raised (by at most ``1 / (1 - 1/pi)``) for the mean and
    correlation that the zero-DC blocks remove; one block (k >= p) is ``circulant_kaiming_`` up to the
    O(1/k) covariance term. Block sizes k <= 2 (where zero DC leaves a rank-1 or zero block) fall back
    to He-uniform, ``U(+-sqrt(6 / p))``.
    """
    R, C, k = weight.shape
    p = in_features
    if k <= 2:
        bound = math.sqrt(6.0 / p)
        return nn.init.uniform_(weight, -bound, bound)
    magnitude = block_magnitude(p, out_features, k)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    F = k // 2 + 1
    phase = torch.rand(R, C, F, device=weight.device, dtype=dtype) * (2 * math.pi)
    spectrum = torch.polar(torch.full_like(phase, magnitude), phase)
    spectrum[..., 0] = 0
    if k % 2 == 0:  # the Nyquist bin of a real signal is real: a random sign
        spectrum[..., -1] = random_signs(R * C, device=weight.device, dtype=dtype).view(R, C) * magnitude
    return weight.copy_(torch.fft.irfft(spectrum, k, dim=-1))
