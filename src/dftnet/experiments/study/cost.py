"""The cost of one training step of each study configuration: time, peak memory and FLOPs.

Time is measured the ``dftnet bench`` way: one process, one thread, every configuration built first and
warmed up, then ``rounds`` rounds in which each configuration, in turn, runs a few timed training steps
(forward, backward, clipping, AdamW) with :class:`torch.utils.benchmark.Timer`. A configuration's step time
is the median of its rounds, with the quartiles as the spread. The clock is the thread's CPU time
(:func:`time.thread_time`): on a quiet machine it equals the wall time of a 1-thread step, and on a shared
one it leaves out the time the process waits for a core, which wall time would count at random (measured
at load 6 on 2 cores: dense at d = 512, 1.05 s wall against 0.51 s CPU; quiet, 0.49 s wall). Interleaving
puts what the sharing still costs (caches, memory bandwidth) on every configuration alike.

Dense is the anchor: a budget is dense's steps times dense's step time, so configurations timed in a
later pass (:func:`rescale_to`) are timed beside dense again and scaled by the ratio of dense's times.
"""

from __future__ import annotations

import time

import torch
from torch.utils import benchmark

from ..harness.memory import peak_step_memory
from ..harness.reproduce import cpu_model
from .flops import layer_routes, step_flops

__all__ = ["measure_costs", "rescale_to"]


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    q = torch.tensor(xs, dtype=torch.float64).quantile(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return tuple(float(v) for v in q)


class _Flat(torch.nn.Module):
    """(B, T) bytes -> (B*T, V) logits, for :func:`..harness.memory.peak_step_memory`'s cross-entropy."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, x):
        return self.gpt(x).flatten(0, 1)


def measure_costs(study, configs: list[tuple], log=print) -> dict[str, dict]:
    """For each ``(arm, d_model, heads)`` (:class:`.plan.Arm`): seconds per step (median, quartiles),
    peak step memory in bytes, the route of each structured layer and FLOPs per step for those routes;
    and ``"machine"``: the CPU, threads and torch version. ``study`` is the :class:`.plan.StudyConfig`."""
    from ..harness.distributed import Context
    from ..harness.loop import train_step
    from ..lm import corpus as corpus_mod
    from ..lm.train import build_variant
    from .plan import cost_key

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        corpus = corpus_mod.load_corpus(limit=study.limit)
        starts = corpus_mod.batch_indices(len(corpus.train), study.context, study.batch_size, 0, 0)
        x, y = corpus_mod.get_batch(corpus.train, starts, study.context, torch.device("cpu"))
        runs, out = {}, {}
        for arm, d, heads in configs:
            lm = study.lm(arm, d, heads, 1e-3, 0, 1000)
            r = build_variant(arm.variant, lm, Context())
            train_step(r.model, r, x, y)  # warm-up: plans, caches, optimizer state
            key = cost_key(arm, d)
            runs[key] = (r, benchmark.Timer("train_step(m, r, x, y)", globals={
                "train_step": train_step, "m": r.model, "r": r, "x": x, "y": y}, num_threads=1, timer=time.thread_time))
            routes = layer_routes(r.model, study.batch_size * study.context)
            out[key] = {"arm": arm.key, "variant": arm.variant, "structure": arm.structure, "d_model": d,
                        "routes": routes, "flops": step_flops(lm.gpt(arm.variant), study.batch_size, routes),
                        "peak_memory_bytes": peak_step_memory(_Flat(r.model), x, y.flatten())}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for i in range(study.timing_rounds):
            for key, (_, timer) in runs.items():
                times[key].append(timer.timeit(2).median)
            log(f"  timing round {i + 1}/{study.timing_rounds} done")
        for key, ts in times.items():
            q1, med, q3 = _quantiles(ts)
            out[key].update(seconds=med, seconds_q1=q1, seconds_q3=q3, rounds=len(ts))
        return {"machine": {"cpu": cpu_model(), "threads": 1, "torch": torch.__version__, "clock": "thread CPU time"},
                **out}
    finally:
        torch.set_num_threads(threads)


def rescale_to(anchor: dict, new: dict) -> dict:
    """Costs from a later timing pass (``new``, which timed dense beside them at each size) in the scale of
    ``anchor``'s dense: each configuration's times x (anchor's dense time / new's dense time) at its size.
    Dense itself keeps the anchor's entry, so every budget in seconds is unchanged."""
    out = {}
    for key, cost in new.items():
        if key == "machine" or cost["arm"] == "dense":
            continue
        dense_key = f"dense@d{cost['d_model']}"
        scale = anchor[dense_key]["seconds"] / new[dense_key]["seconds"]
        out[key] = {**cost, **{k: cost[k] * scale for k in ("seconds", "seconds_q1", "seconds_q3")},
                    "rescaled_by": scale}
    return out
