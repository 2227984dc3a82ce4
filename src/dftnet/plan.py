"""How a DFT layer of a given shape is computed: the FFT length, and FFT versus dense product.

A q x p DFT layer (n = max(p, q)) is a circular correlation of length n. The same outputs come from a
*linear* correlation of the input with the weight extended periodically to p + q - 1 taps, computed by an
FFT of any length L >= p + q - 1 (no wrap-around reaches the first q outputs). So the FFT length is
free to be n or any L >= p + q - 1, and we pick the cheaper.

The cost model was measured with torch's CPU FFT (pocketfft) and holds for cuFFT in spirit: lengths
2^a * m with a small odd part m are fast; lengths with a large prime factor (785 = 5 * 157, 4099, 10007)
cost ~8x their next power of two; and "5-smooth" is not enough (2025 = 3^4 5^2 and 3125 = 5^5 are slow).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

# Odd parts m for which 2^a * m was measured to cost about as much per L log L as a power of two.
_FAST_ODD_PARTS = (1, 3, 5, 9, 15, 25, 45, 75)
_FAST_ODD_PENALTY = {1: 1.0}  # other fast odd parts cost about 10-20% more per L log L
_OTHER_FAST_PENALTY = 1.15
_SLOW_PENALTY = 8.0  # large odd part: measured 7-13x a power of two per L log L


class Plan(NamedTuple):
    """How to compute a q x p DFT layer: ``fft_size == n`` is the circular route, larger the linear one."""

    in_features: int
    out_features: int
    n: int
    fft_size: int

    @property
    def circular(self) -> bool:
        return self.fft_size == self.n


def _odd_part(L: int) -> int:
    while L % 2 == 0:
        L //= 2
    return L


def fft_cost(L: int) -> float:
    """Relative cost of one real FFT of length L (arbitrary units, comparable between lengths)."""
    if L <= 1:
        return 1.0
    m = _odd_part(L)
    if m in _FAST_ODD_PARTS:
        penalty = _FAST_ODD_PENALTY.get(m, _OTHER_FAST_PENALTY)
    else:
        penalty = _SLOW_PENALTY
    return penalty * L * math.log2(L)


def fast_length(min_length: int) -> int:
    """Cheapest length L >= min_length by :func:`fft_cost`, among 2^a * m with m a fast odd part."""
    best, best_cost = None, math.inf
    for m in _FAST_ODD_PARTS:
        L = m
        while L < min_length:
            L *= 2
        cost = fft_cost(L)
        if cost < best_cost:
            best, best_cost = L, cost
    return best


def make_plan(in_features: int, out_features: int, fft_size: int | None = None) -> Plan:
    """Choose the FFT length for a layer (or validate a requested one)."""
    p, q = in_features, out_features
    n = max(p, q)
    if fft_size is None:
        linear = fast_length(p + q - 1)
        fft_size = n if fft_cost(n) <= fft_cost(linear) else linear
    elif fft_size != n and fft_size < p + q - 1:
        raise ValueError(
            f"fft_size must be n = max(in_features, out_features) = {n} (circular) or at least "
            f"in_features + out_features - 1 = {p + q - 1} (linear), got {fft_size}"
        )
    return Plan(p, q, n, fft_size)


def use_dense(in_features: int, out_features: int, batch: int, device: torch.device) -> bool:
    """Whether multiplying by the materialised q x p matrix is faster than the FFT route."""
    return in_features * out_features <= 64 * 64
