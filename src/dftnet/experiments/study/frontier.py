"""Compute frontiers from learning curves: the arithmetic of ``dftnet study``, kept free of training.

A *curve* is a list of ``(step, val_bpb)`` pairs in increasing step. With a cost per step (seconds on a
machine, or FLOPs from :mod:`.flops`) it becomes ``(compute, val_bpb)`` pairs. Between evaluations the
curve is taken as linear in compute.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["to_compute", "lower_envelope", "compute_to_reach", "value_at", "budget_to_reach"]

Curve = Sequence[tuple[float, float]]


def to_compute(curve: Curve, cost_per_step: float) -> list[tuple[float, float]]:
    """``(step, bpb)`` -> ``(step * cost_per_step, bpb)``."""
    if not cost_per_step > 0:
        raise ValueError(f"cost per step must be positive, got {cost_per_step}")
    return [(step * cost_per_step, bpb) for step, bpb in curve]


def lower_envelope(curves: Iterable[Curve]) -> list[tuple[float, float]]:
    """The best bpb reachable with at most a given compute, over several ``(compute, bpb)`` curves: the
    points (sorted by compute) that beat every point of lower or equal compute. A step function: between
    two envelope points the bpb is the left one's (a run can stop at any evaluation)."""
    out: list[tuple[float, float]] = []
    for x, y in sorted(p for c in curves for p in c):  # at equal compute, the lowest bpb comes first
        if not out or y < out[-1][1]:
            out.append((x, y))
    return out


def compute_to_reach(curve: Curve, target: float) -> float:
    """The least compute at which a ``(compute, bpb)`` curve reaches ``bpb <= target``, interpolating
    linearly between evaluations; ``inf`` if it never does."""
    prev = None
    for x, y in curve:
        if y <= target:
            if prev is None or prev[1] <= target:
                return x
            (x0, y0) = prev
            return x0 + (x - x0) * (y0 - target) / (y0 - y)
        prev = (x, y)
    return math.inf


def value_at(curve: Curve, x: float) -> float:
    """The bpb of a ``(compute, bpb)`` curve at compute ``x``, linear between evaluations; ``nan``
    outside the curve."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if curve and x == curve[-1][0]:
        return curve[-1][1]
    return math.nan


def budget_to_reach(points: Sequence[tuple[float, float]], target: float) -> tuple[str, float]:
    """The budget at which a variant's ``(budget, bpb)`` results (one per budget trained, increasing
    budgets) reach ``bpb <= target``, interpolated linearly in log budget between the two budgets that
    bracket it. Returns ``("=", budget)``; ``("<=", smallest)`` when the smallest budget already reaches
    it (nothing below was measured); ``(">", largest)`` when no budget measured reaches it."""
    if not points:
        raise ValueError("budget_to_reach: no points")
    pts = sorted(points)
    if pts[0][1] <= target:
        return ("<=", pts[0][0])
    for (b0, y0), (b1, y1) in zip(pts, pts[1:]):
        if y1 <= target:
            t = (y0 - target) / (y0 - y1)
            return ("=", math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0))))
    return (">", pts[-1][0])
