"""The cost of one training step of each study configuration: time, peak memory and FLOPs.

Time is measured the ``dftnet bench`` way: one process, one thread, every configuration built first and
warmed up, then ``rounds`` rounds in which each configuration, in turn, runs a few timed training steps
(forward, backward, clipping, AdamW) with :class:`torch.utils.benchmark.Timer`. A configuration's step time
is the median of its rounds, with the quartiles as the spread; interleaving means a slow moment of the
machine lands on every configuration alike, so the ratios hold even when the absolute times drift.
"""

from __future__ import annotations

import torch
from torch.utils import benchmark

from .flops import step_flops
from .memory import peak_step_memory

__all__ = ["measure_costs", "config_key"]


def config_key(variant: str, d_model: int) -> str:
    return f"{variant}@d{d_model}"


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    q = torch.tensor(xs, dtype=torch.float64).quantile(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return tuple(float(v) for v in q)


class _Flat(torch.nn.Module):
    """(B, T) bytes -> (B*T, V) logits, for :func:`.memory.peak_step_memory`'s cross-entropy."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, x):
        return self.gpt(x).flatten(0, 1)


def measure_costs(study, configs: list[tuple[str, int, int]], log=print) -> dict[str, dict]:
    """For each ``(variant, d_model, heads)``: seconds per step (median, quartiles), peak step memory in
    bytes and FLOPs per step. ``study`` is the :class:`.study.StudyConfig`."""
    from . import corpus as corpus_mod
    from .distributed import Context
    from .lm import build_variant, train_step

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        corpus = corpus_mod.load_corpus(limit=study.limit)
        starts = corpus_mod.batch_indices(len(corpus.train), study.context, study.batch_size, study.seed, 0)
        x, y = corpus_mod.get_batch(corpus.train, starts, study.context, torch.device("cpu"))
        runs, out = {}, {}
        for variant, d, heads in configs:
            lm = study.lm(variant, d, heads, 1e-3)
            r = build_variant(variant, lm, Context())
            train_step(r.model, r, x, y)  # warm-up: plans, caches, optimizer state
            key = config_key(variant, d)
            runs[key] = (r, benchmark.Timer("train_step(m, r, x, y)", globals={
                "train_step": train_step, "m": r.model, "r": r, "x": x, "y": y}, num_threads=1))
            out[key] = {"variant": variant, "d_model": d, "flops": step_flops(lm.gpt(variant), study.batch_size),
                        "peak_memory_bytes": peak_step_memory(_Flat(r.model), x, y.flatten())}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for i in range(study.timing_rounds):
            for key, (_, timer) in runs.items():
                times[key].append(timer.timeit(2).median)
            log(f"  timing round {i + 1}/{study.timing_rounds} done")
        for key, ts in times.items():
            q1, med, q3 = _quantiles(ts)
            out[key].update(seconds=med, seconds_q1=q1, seconds_q3=q3, rounds=len(ts))
        return out
    finally:
        torch.set_num_threads(threads)
