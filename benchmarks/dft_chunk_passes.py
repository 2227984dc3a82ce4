"""The elementwise passes of one `DFTLinear` chunk (128 rows at L = 2048, the kernels' chunk on 1 thread),
against the forms that would fuse them: the bias added after `irfft` against `irfft(out=)` alone (the
bias folded into the spectrum would leave only that), the complex product `mul` against `addcmul` (the
product with the bias's spectrum added), and the weight gradient's batch sum `sum(0)` against a GEMV on
the (real, imaginary) pairs. With ``--compiled``, also one chunk's whole forward (the input's rfft, the
product, its conjugation, irfft, bias) as the eager kernel runs it and in real pairs through
``torch.compile`` (inductor; it does not generate code for complex ops, so the pairs are real views).
Thread CPU time on 1 thread, wall time on more; median [range] of 5 rounds, each the median of 60
calls, the cases interleaved within a round.

    python benchmarks/dft_chunk_passes.py              # and --threads 2, --compiled
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _median_us(fn, clock, calls: int = 60) -> float:
    times = []
    for _ in range(calls):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--fft-size", type=int, default=2048)
    parser.add_argument("--compiled", action="store_true", help="also the forward chunk through torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    M, L = args.rows, args.fft_size
    F = L // 2 + 1
    Y = torch.randn(M, F, dtype=torch.complex64)
    X, cW, cB = torch.randn_like(Y), torch.randn(F, dtype=torch.complex64), torch.randn(F, dtype=torch.complex64)
    P, out, bias = torch.empty_like(Y), torch.empty(8 * M, L), torch.randn(L)
    rows = out[:M]
    ones, Yr = torch.ones(1, M), torch.view_as_real(Y).reshape(M, 2 * F)
    cases = {
        "irfft": lambda: torch.fft.irfft(Y, L),
        "irfft(out=)": lambda: torch.fft.irfft(Y, L, out=rows),
        "irfft, then add(bias, out=)": lambda: torch.add(torch.fft.irfft(Y, L), bias, out=rows),
        "mul(out=)": lambda: torch.mul(X, cW, out=P),
        "addcmul(out=)": lambda: torch.addcmul(cB, X, cW, out=P),
        "sum(0)": lambda: Y.sum(0),
        "GEMV on (re, im) pairs": lambda: ones @ Yr,
    }
    if args.compiled:
        cases.update(_forward_chunks(M, L, cW, bias))
    results: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()
    for _ in range(5):
        for name, fn in cases.items():
            results[name].append(_median_us(fn, clock))
    print(f"({M}, {F}) complex64 spectra, L = {L}, {args.threads} thread(s)")
    for name, us in results.items():
        print(f"{name:<30} {statistics.median(us):8.1f} us  [{min(us):.1f}-{max(us):.1f}]")


def _forward_chunks(M: int, L: int, cW: torch.Tensor, bias: torch.Tensor) -> dict:
    """One chunk's forward, (M, L // 4) input padded to L: the eager kernel's ops, and real pairs compiled."""
    x, cWr = torch.randn(M, L // 4), torch.view_as_real(cW)

    def eager():
        return torch.fft.irfft(torch.fft.rfft(x, L).mul_(cW).conj_physical_(), L).add_(bias)

    def real_pairs(x):
        X = torch.view_as_real(torch.fft.rfft(x, L))
        xr, xi, wr, wi = X[..., 0], X[..., 1], cWr[..., 0], cWr[..., 1]
        Y = torch.stack([xr * wr - xi * wi, -(xr * wi + xi * wr)], -1)  # conj(X * cW) in pairs
        return torch.fft.irfft(torch.view_as_complex(Y), L) + bias

    compiled = torch.compile(real_pairs, fullgraph=True)
    torch.testing.assert_close(compiled(x), eager(), rtol=1e-4, atol=1e-3)
    return {"forward chunk, eager kernel": eager, "forward chunk, compiled pairs": lambda: compiled(x)}


if __name__ == "__main__":
    main()
