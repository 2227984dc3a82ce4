"""How a structured layer of a given shape is computed: the FFT length, and FFT versus dense product.

:class:`Plan` is a DFT layer's shape and FFT length, :class:`BlockShape` a block-circulant layer's shape;
:func:`use_dense` is the one cost model of both.

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
from functools import lru_cache
from typing import NamedTuple

import torch

from ._compat import cached, intra_op_threads

# Measured with torch's CPU FFT on 2 cores: cost per L log L relative to a power of two.
_PENALTY_SMOOTH = 1.2  # 2^a * m, a >= 3, m odd and 7-smooth (1000, 1536, 1600, 8640): 0.8-1.4x
_PENALTY_FEW_TWOS = 1.8  # 7-smooth with only one or two factors of two (6250)
_PENALTY_ODD = 3.0  # odd 7-smooth lengths (1215, 2025, 2187, 2401, 3125): about 3x
_PENALTY_SLOW = 8.0  # a prime factor > 7 (785 = 5 * 157, 1009, 4099, 10007): 6-17x


def _split(L: int) -> tuple[int, int]:
    """L = 2^a * m with m odd: returns (a, m)."""
    a = 0
    while L % 2 == 0:
        L //= 2
        a += 1
    return a, L


def _is_7_smooth(m: int) -> bool:
    for f in (3, 5, 7):
        while m % f == 0:
            m //= f
    return m == 1


_SMOOTH_ODD = tuple(m for m in range(1, 1000, 2) if _is_7_smooth(m))


class Plan(NamedTuple):
    """How to compute a q x p DFT layer: ``fft_size == n`` is the circular route, larger the linear one."""

    in_features: int
    out_features: int
    n: int
    fft_size: int

    @property
    def circular(self) -> bool:
        return self.fft_size == self.n


class BlockShape(NamedTuple):
    """A q x p block-circulant layer with k x k blocks (k = ``block_size``)."""

    in_features: int
    out_features: int
    block_size: int

    @property
    def in_blocks(self) -> int:
        return -(-self.in_features // self.block_size)

    @property
    def out_blocks(self) -> int:
        return -(-self.out_features // self.block_size)

    def transpose(self) -> BlockShape:
        return BlockShape(self.out_features, self.in_features, self.block_size)


def fft_cost(L: int) -> float:
    """Relative cost of one real FFT of length L (arbitrary units, comparable between lengths)."""
    if L <= 1:
        return 1.0
    a, m = _split(L)
    if m == 1:
        penalty = 1.0
    elif not _is_7_smooth(m):
        penalty = _PENALTY_SLOW
    elif a == 0:
        penalty = _PENALTY_ODD
    elif a < 3:
        penalty = _PENALTY_FEW_TWOS
    else:
        penalty = _PENALTY_SMOOTH
    return penalty * L * math.log2(L)


@lru_cache(maxsize=4096)
def fast_length(min_length: int) -> int:
    """Cheapest length L >= min_length by :func:`fft_cost`, among 2^a * m with m odd and 7-smooth."""
    best, best_cost = min_length, math.inf
    for m in _SMOOTH_ODD:
        L = m
        while L < min_length:
            L *= 2
        cost = fft_cost(L)
        if cost < best_cost:
            best, best_cost = L, cost
    return best


def make_plan(in_features: int, out_features: int, fft_size: int | None = None) -> Plan:
    """Choose the FFT length for a layer (or validate a requested one)."""
    n = max(in_features, out_features)
    if fft_size is not None and fft_size != n and fft_size < in_features + out_features - 1:
        raise ValueError(
            f"fft_size must be n = max(in_features, out_features) = {n} (circular) or at least "
            f"in_features + out_features - 1 = {in_features + out_features - 1} (linear), got {fft_size}"
        )
    return cached(_plan, in_features, out_features, fft_size)


@lru_cache(maxsize=4096)
def _plan(p: int, q: int, fft_size: int | None) -> Plan:
    n = max(p, q)
    if fft_size is None:
        linear = cached(fast_length, p + q - 1)
        fft_size = n if fft_cost(n) <= fft_cost(linear) else linear
    return Plan(p, q, n, fft_size)


# Cost model of the two routes, in microseconds, fitted (relative least squares) to both routes timed
# against each other on 1 thread (float32; n = 16 ... 1024 square, and 256x64, 64x10, 1024x256, 785x300,
# 300x785; batches 1 ... 512; `benchmarks/fit_routes.py`, each cell's median over 3 runs; the rows are
# docs/results/fit_routes.json): a fixed cost per call (in training mostly the autograd node and its
# Function), a cost per matrix entry for the dense route (building W from the spectrum) and a cost per
# row: B p q multiply-adds against B FFTs of cost fft_cost(L).
_DENSE_US = {False: (17.7, 1.06e-4, 2.59e-5), True: (245.0, 2.84e-3, 7.6e-5)}  # fixed, per entry, per row-entry
_FFT_US = {False: (55.0, 2.88e-4), True: (396.0, 8.6e-4)}  # fixed, per row-unit of fft_cost
# Block layers, fitted by `benchmarks/fit_routes.py --block` (1 thread, float32; 256x256 ... 4096x4096 at
# batches 1 ... 128 and the MLP shapes d -> 4d, 4d -> d of transformers, d = 512 ... 4096, k = 4 ... 64, 1,024
# and 8,192 rows; the rows are docs/results/fit_block_routes.json). Each way has its own constants:
# - the torch.fft kernel (:mod:`dftnet.kernels.block`): fixed, per entry of the blocks' spectra ((C + R) k a
#   row: its transforms and the copies that make them frequency-major) and per complex multiply-add of the
#   per-frequency C x R products;
# - the GEMM kernel (:mod:`dftnet.kernels.block_gemm`): fixed, per multiply-add of the transforms
#   ((C + R) k^2 a row) and of the real per-frequency products (2 k C R a row), and per entry of the
#   spectra those products read and write ((C + R) k a row: small per-frequency GEMMs, at k = 64 and
#   d = 512 C or R is 8, are bound by it);
# - the dense route (the matrix tiled from the taps): fixed, per matrix entry, per row-entry.
# On the fit's grid the refitted model's pick was within 1.02x of the fastest way in every cell. Since the chunks'
# spectra stay under BLOCK_SPECTRUM_MAX_BYTES the torch.fft kernel is faster at wide layers than it was timed
# for that fit (no fresh pages): the grid timed again on 1 thread (3 runs, rows in
# docs/results/block_route_check_capped_t1_r*.json) picked the GEMM kernel in inference at 16384->4096, k = 64,
# 1.25x slower, so its cost per complex multiply-add in inference is 0.8x the fitted one (worst pick on that
# grid then 1.06x in inference, 1.00x in training; on the cells the change does not touch, as before: 1.01x).
_BLOCK_FFT_US = {False: (120.0, 0.00314, 9.84e-05), True: (690.0, 0.00735, 0.000331)}
_BLOCK_GEMM_US = {False: (89.6, 2.52e-05, 1.93e-05, 0.00246), True: (456.0, 4.67e-05, 5.42e-05, 0.00672)}
_BLOCK_DENSE_US = {False: (18.9, 8.04e-05, 2.61e-05), True: (105.0, 0.00428, 7.48e-05)}


def _dense_us(p: int, q: int, batch: int, training: bool, speed: float = 1.0) -> float:
    fixed, per_entry, per_row_entry = _DENSE_US[training]
    return fixed + per_entry * p * q + per_row_entry * batch * p * q / speed


# With T CPU threads each way's per-row costs (and the dense route's per-entry cost of building W) are divided
# by T ** BLOCK_THREAD_EXPONENTS[way]; fixed costs are not. The dense route's and the GEMM kernel's exponents
# are from 9 cells at d = 512-2048 and k = 16-64, 1,024 rows, 4 runs at 1 and 2 threads (AMD EPYC, idle;
# `benchmarks/block_thread_rule.py`, rows in docs/results/block_thread_rule/), and the fit's whole grid on 2
# threads (docs/results/block_route_check_t2_r*.json): with the GEMM ways' per-row costs alone divided, the
# GEMM kernel was taken at small layers where the dense route was 1.2-1.45x faster. The torch.fft kernel's is
# from the whole grid timed again on 1 and 2 threads with the chunks' spectra under BLOCK_SPECTRUM_MAX_BYTES
# (docs/results/block_route_check_capped_t*.json; 3 and 7 runs): from 1 to 2 threads, over its cells of
# 1,024 rows or more, the GEMM kernel got 2 ** 0.79 (inference) and 2 ** 0.84 (training) faster, the torch.fft
# kernel 2 ** 0.80 and 2 ** 0.79 (before, with fresh pages on every call at wide layers, 2 ** 0.62 and
# 2 ** 0.70). With 0.75 the worst 2-thread picks on that grid are 1.02x in training and 1.11x in inference
# (4096->16384 at k = 64, a near-tie of the two kernels: 75 against 84 ms); with the 0.65 before, 1.05x and 1.14x.
BLOCK_THREAD_EXPONENTS = {"dense": 0.9, "gemm": 0.8, "fft": 0.75}


def block_costs(in_features: int, out_features: int, block_size: int, batch: int,
                training: bool = True, threads: int | None = None) -> dict[str, float]:
    """The cost model's estimates (microseconds, CPU) of a block layer's three ways: "dense" (the
    materialised matrix), "gemm" (:mod:`dftnet.kernels.block_gemm`: transforms and products as real GEMMs)
    and "fft" (:mod:`dftnet.kernels.block`: torch.fft, products as real GEMMs), with ``threads`` threads
    (default: torch's)."""
    p, q, k = in_features, out_features, block_size
    C, R = -(-p // k), -(-q // k)
    T = _cpu_threads(torch.device("cpu"), threads)
    speed = {way: T ** e for way, e in BLOCK_THREAD_EXPONENTS.items()}
    fixed, per_entry, per_row_entry = _BLOCK_DENSE_US[training]
    dense = fixed + (per_entry * p * q + per_row_entry * batch * p * q) / speed["dense"]
    fixed, per_entry, per_cmac = _BLOCK_FFT_US[training]
    fft = fixed + batch * (per_entry * (C + R) * k + per_cmac * C * R * (k // 2 + 1)) / speed["fft"]
    fixed, per_tmac, per_pmac, per_entry = _BLOCK_GEMM_US[training]
    gemm = fixed + batch * (per_tmac * (C + R) * k * k + per_pmac * 2 * k * C * R
                            + per_entry * (C + R) * k) / speed["gemm"]
    return {"dense": dense, "gemm": gemm, "fft": fft}


# On CPU a block layer's FFT route calls its kernel on chunks of rows, each BLOCK_CHUNK_BYTES of input and output
# rows or BLOCK_CHUNK_MIN_ROWS rows, whichever is more. fwd+bwd on 8,192 rows (512->2048 and 2048->512,
# k = 16 ... 64, 1 thread, AMD EPYC): one call took 1.1-1.3x (GEMM kernel) and 1.4-1.6x (torch.fft kernel)
# as long as calls on chunks of 1,024 rows. Chunks of 204 rows made 2048->8192 on 1,024 rows 1.1-1.2x slower.
# A chunk's spectra stay under BLOCK_SPECTRUM_MAX_BYTES, whatever its rows: glibc's malloc maps blocks of 32 MiB
# or more afresh from the OS on every allocation (its largest mmap threshold), and a call whose spectra were that
# large touched 25-42 thousand fresh pages per fwd+bwd (2048->8192 at k = 64 on 1,024 rows: 34 MiB spectra).
# Training steps of a d = 2048 block MLP (2048->8192->2048, 1,024 rows, 1 thread, AMD EPYC; 2 processes per arm,
# `benchmarks/block_chunk_faults.py`, docs/results/block_chunk_faults.json): k = 64 246-284 ms against 300-472 ms
# without the cap (malloc's thresholds raised as the dftnet commands do), 270-380 against 527-533 ms with glibc's
# defaults; k = 16 441-513 against 474-568 ms, and 486-590 against 593-615 ms.
BLOCK_CHUNK_BYTES = 8 << 20
BLOCK_CHUNK_MIN_ROWS = 1024
BLOCK_SPECTRUM_MAX_BYTES = 24 << 20


def block_chunk_rows(in_features: int, out_features: int, block_size: int, itemsize: int, rows: int) -> int:
    """Rows per call of a block layer's kernel on its FFT route, for a call on ``rows`` rows: chunks of
    equal size (not 1,000 + 24) of at least ``BLOCK_CHUNK_BYTES`` of input and output rows or
    ``BLOCK_CHUNK_MIN_ROWS`` rows, whichever is more, each with spectra under ``BLOCK_SPECTRUM_MAX_BYTES``."""
    target = max(BLOCK_CHUNK_MIN_ROWS, BLOCK_CHUNK_BYTES // ((in_features + out_features) * itemsize))
    shape = BlockShape(in_features, out_features, block_size)
    blocks = max(shape.in_blocks, shape.out_blocks)
    spectrum_row = blocks * (block_size // 2 + 1) * 2 * itemsize  # the larger side's complex spectrum, a row
    target = max(1, min(target, BLOCK_SPECTRUM_MAX_BYTES // spectrum_row))
    chunks = -(-rows // target)
    return max(1, -(-rows // chunks))


def _cpu_threads(device: torch.device, threads: int | None = None) -> int:
    """The thread count the cost models scale CPU costs by: ``threads`` or torch's; 1 off the CPU."""
    if device.type != "cpu":
        return 1
    return intra_op_threads() if threads is None else threads


def block_kernel(in_features: int, out_features: int, block_size: int, batch: int, device: torch.device,
                 training: bool = True) -> str:
    """The block layer's kernel on its FFT route: "gemm" or "fft", whichever :func:`block_costs` says is
    cheaper, with torch's threads on CPU (elsewhere the 1-thread rule, not measured there)."""
    costs = block_costs(in_features, out_features, block_size, batch, training, _cpu_threads(device))
    return "gemm" if costs["gemm"] <= costs["fft"] else "fft"


# DFT layers on CPU with T threads: both routes' per-row costs are divided by T ** ROW_THREAD_EXPONENT, their
# fixed costs are not. Refitting _DENSE_US and _FFT_US to the same grid on 2 threads (AMD EPYC, idle, 2 runs of
# `benchmarks/fit_routes.py --threads 2`, rows in docs/results/fit_routes_t2_r{1,2}.json) gave per-row costs
# 1.81-1.99x (dense) and 1.66-1.88x (FFT) smaller than on 1 thread, about 2 ** 0.9, and fixed costs within
# 12%. Without the rule the 1-thread constants picked the FFT route up to 1.18x slower on 2 threads (inference
# at batch 8-32, 256-785 wide; the runs' geometric mean); with it every pick was within 1.02x (1.00x and 1.11x
# in the single runs, where a refit to that run did no better). Measured on 1 and 2 threads only: more threads
# extrapolate.
ROW_THREAD_EXPONENT = 0.9


def use_dense(
    in_features: int, out_features: int, batch: int, device: torch.device, training: bool = True,
    block_size: int | None = None, threads: int | None = None,
) -> bool:
    """Whether multiplying by the materialised q x p matrix is cheaper than the FFT route.

    One model for both structures. The dense route costs a fixed amount per call, a cost per matrix
    entry (building W, and in training folding its gradient) and B p q multiply-adds. The FFT route
    costs a larger fixed amount (more kernels, the weight's spectrum) and per row: for a DFT layer two
    FFTs of the plan's length L (``fft_cost(L)``); for k x k blocks the cheaper of its two kernels
    (:func:`block_costs`). Fitted on CPU: for DFT layers the route it picks was within 1.00x of the faster
    one in training and 1.01x in inference over the fit's grid (its last fit); for block layers see
    docs/performance.md (block-circulant layers). On CUDA the same rule is used (not measured here).
    ``threads``: torch's intra-op threads on CPU (default: the current number; off the CPU, 1).
    """
    p, q = in_features, out_features
    threads = _cpu_threads(device, threads)
    if block_size is None or block_size >= max(p, q):
        speed = threads ** ROW_THREAD_EXPONENT
        fixed, per_row_unit = _FFT_US[training]
        row = per_row_unit * fft_cost(make_plan(p, q).fft_size) / speed
        return _dense_us(p, q, batch, training, speed) <= fixed + batch * row
    costs = block_costs(p, q, block_size, batch, training, threads)
    return costs["dense"] <= min(costs["gemm"], costs["fft"])
