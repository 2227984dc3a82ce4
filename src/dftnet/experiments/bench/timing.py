"""Timing callables against each other: warm-up, interleaved turns, medians of repeats."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.utils.benchmark

__all__ = ["time_contenders", "ratio_spread", "DEFAULT_REPEATS", "DEFAULT_BUDGET_S", "MIN_REPEATS",
           "TARGET_SAMPLE_S", "CLOCKS"]

DEFAULT_REPEATS = 21
DEFAULT_BUDGET_S = 1.0
MIN_REPEATS = 3
TARGET_SAMPLE_S = 2e-3  # each timed group of calls lasts at least this long
CLOCKS = ("wall", "cpu")


def _clock(device: torch.device, clock: str = "wall") -> Callable[[], float]:
    """The clock a timed group reads before and after its calls.

    ``clock="cpu"``: the calling thread's CPU time (``time.thread_time``), for 1 thread on the CPU: time
    that other processes take from the core is not counted, so a shared machine's load disturbs the
    turns less (it still shares caches and memory bandwidth).

    On an accelerator, ``torch.utils.benchmark.timer``: it synchronizes the (current) accelerator, then
    reads ``timeit.default_timer``, so queued kernels are counted. ``torch.utils.benchmark.Timer``
    itself does not fit the interleaved turns below: each of its ``timeit`` calls adds warm-up calls of
    its own and pins the thread count. On the CPU there is nothing to synchronize.
    """
    if clock not in CLOCKS:
        raise ValueError(f"bad clock {clock!r}: expected one of {', '.join(CLOCKS)}")
    if clock == "cpu":
        if device.type != "cpu" or torch.get_num_threads() != 1:
            raise ValueError("the cpu clock times 1 thread on the CPU (torch.set_num_threads(1)): other "
                             "threads' work would not be counted")
        return time.thread_time
    return time.perf_counter if device.type == "cpu" else torch.utils.benchmark.timer


def time_contenders(
    fns: dict[str, Callable[[], object]],
    *,
    repeats: int = DEFAULT_REPEATS,
    budget: float = DEFAULT_BUDGET_S,
    device: torch.device | str = "cpu",
    min_repeats: int = MIN_REPEATS,
    target_sample: float = TARGET_SAMPLE_S,
    clock: str = "wall",
) -> dict[str, dict]:
    """Time callables against each other, interleaved.

    Each callable is warmed up (one call, then one timed call that sizes its group of calls, lasting
    about ``target_sample`` seconds), then turns are run; in each turn every callable still due runs
    its group, the order rotating from turn to turn. Each callable gets an equal share of ``budget``
    seconds: ``repeats`` turns, or fewer when they would exceed its share, never fewer than
    ``min(min_repeats, repeats)``. So a slow contender (nn.Linear at large n) does not starve the
    others of turns, and while it is due it is interleaved with them. ``clock``: "wall" or, for 1 thread
    on the CPU, "cpu" (the thread's CPU time; see :func:`_clock`).

    Returns {name: {"median", "min", "q1", "q3", "spread", "repeats"}}, times in seconds per call.
    """
    device = torch.device(device)
    clock = _clock(device, clock)
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device:  # the clock synchronizes the current device
        samples = _interleaved_samples(fns, clock, repeats, budget, min_repeats, target_sample)
    return {name: _summary(xs) for name, xs in samples.items()}


def _interleaved_samples(fns, clock, repeats, budget, min_repeats, target_sample) -> dict[str, list[float]]:
    names = list(fns)
    est: dict[str, float] = {}
    for name in names:  # warm-up: plan caches, allocator, lazy init
        fn = fns[name]
        fn()
        t0 = clock()
        fn()
        est[name] = max(clock() - t0, 1e-7)
    inner = {k: max(1, min(10_000, math.ceil(target_sample / est[k]))) for k in names}
    share = budget / max(1, len(names))
    floor_rep = min(min_repeats, repeats)
    n_rep = {k: int(min(repeats, max(floor_rep, share // (inner[k] * est[k])))) for k in names}
    samples: dict[str, list[float]] = {k: [] for k in names}
    for r in range(max(n_rep.values())):
        s = r % len(names)
        for name in names[s:] + names[:s]:
            if r >= n_rep[name]:
                continue
            fn, m = fns[name], inner[name]
            t0 = clock()
            for _ in range(m):
                fn()
            samples[name].append((clock() - t0) / m)
    return samples


def _summary(xs: list[float]) -> dict:
    xs = sorted(xs)
    med = statistics.median(xs)
    if len(xs) >= 4:
        q = statistics.quantiles(xs, n=4, method="inclusive")
        q1, q3 = q[0], q[2]
    else:
        q1, q3 = xs[0], xs[-1]
    return {"median": med, "min": xs[0], "q1": q1, "q3": q3,
            "spread": (q3 - q1) / med if med > 0 else 0.0, "repeats": len(xs)}


def ratio_spread(ratio, num_q1, num_q3, den_q1, den_q3) -> float | None:
    """The spread of a ratio of two timed contenders, relative to ``ratio`` (like ``spread``).

    The width of ``num_q1 / den_q3 .. num_q3 / den_q1`` (any middle-half turn of one over any of the
    other) over ``ratio``: about the sum of the two spreads. None when a value is missing.
    """
    if ratio is None or None in (num_q1, num_q3, den_q1, den_q3) or den_q1 <= 0 or ratio <= 0:
        return None
    return (num_q3 / den_q1 - num_q1 / den_q3) / ratio
