"""How much of a DFT layer's distance from the FFT floor is memory: one chunk's rfft (342 x 2048, the
kernels' 4 MiB chunk at L = 2048) from an input in cache against inputs read from memory, and one call of
1,026 rows per 342 (thread CPU time, 1 thread, medians of 3 rounds of 60 calls).

    python benchmarks/fft_memory_bound.py
"""

from __future__ import annotations

import statistics
import time

import torch


def _median_ms(fn, calls: int = 60) -> float:
    times = []
    for i in range(calls):
        t0 = time.thread_time()
        fn(i)
        times.append(time.thread_time() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    torch.set_num_threads(1)
    rows, L = 342, 2048
    inputs = [torch.randn(rows, L) for _ in range(24)]  # 24 x 2.8 MB: more than the last-level cache holds
    whole = torch.randn(3 * rows, L)
    cases = {"in cache": lambda i: torch.fft.rfft(inputs[0]),
             "from memory": lambda i: torch.fft.rfft(inputs[i % len(inputs)]),
             "one call, per 342 rows": lambda i: torch.fft.rfft(whole)}
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(3):
        for name, fn in cases.items():
            results[name].append(_median_ms(fn) / (3 if name.startswith("one call") else 1))
    for name, ms in results.items():
        print(f"rfft ({rows}, {L}) {name:<24} {statistics.median(ms):.3f} ms  [{min(ms):.3f}-{max(ms):.3f}]")


if __name__ == "__main__":
    main()
