"""The block half of ``benchmarks/fit_routes.py --block``: time BlockDFTLinear's dense route and its two
FFT-route kernels (real GEMMs, torch.fft) against each other, and fit ``_BLOCK_GEMM_US`` and
``_BLOCK_FFT_US`` of ``dftnet.plan``, and ``_BLOCK_DENSE_US`` for the block layer's own dense route (relative
least squares, non-negative constants)."""

from __future__ import annotations

import numpy as np
import torch

from dftnet import BlockDFTLinear
from dftnet.experiments.bench.timing import time_contenders
from dftnet.plan import block_chunk_rows, block_costs

SMALL = [(256, 256, 16, b) for b in (1, 32, 128)] + [(256, 256, 64, 128), (784, 300, 32, 32), (784, 300, 32, 128),
                                                     (1024, 1024, 64, 1), (1024, 1024, 64, 128),
                                                     (4096, 4096, 256, 128), (1024, 1024, 8, 128)]
DENSE_SKIP = 4.0  # the dense route is not timed where the model puts it above this many times the faster kernel


def transformer_grid(rows_max: int) -> list[tuple[int, int, int, int]]:
    """MLP shapes d -> 4d and 4d -> d: d = 512 at 1,024 and 8,192 rows with k = 4, 8, 16, 32, 64; d = 1024
    and 2048 at 1,024 rows with k = 16, 64; d = 4096 at 1,024 rows with k = 64."""
    cells = []
    for d, ks, rows in [(512, (4, 8, 16, 32, 64), (1024, 8192)), (1024, (16, 64), (1024,)), (2048, (16, 64), (1024,)),
                        (4096, (64,), (1024,))]:
        for p, q in ((d, 4 * d), (4 * d, d)):
            cells += [(p, q, k, b) for k in ks for b in rows if b <= rows_max]
    return cells


def _call(layer, x, g, training):
    if training:
        return lambda: torch.autograd.grad(layer(x), [x, layer.spectrum, layer.bias], g)
    return lambda: layer(x)


def measure_block(rows_max: int, cells: list[tuple[int, int, int, int]] | None = None, repeats: int = 5,
                  budget: float = 0.6) -> list[dict]:
    """Time the three ways over the grid, or over ``cells`` (p, q, k, rows) where given."""
    rows = []
    for p, q, k, B in cells or SMALL + transformer_grid(rows_max):
        torch.manual_seed(0)
        layers = {name: BlockDFTLinear(p, q, k, diagonal=False, method="dense" if name == "dense" else "fft")
                  for name in ("dense", "gemm", "fft")}
        for training in (False, True):
            x = torch.randn(B, p, requires_grad=training)
            g = torch.randn(B, q)
            chunk = block_chunk_rows(p, q, k, x.element_size(), B)  # the route's calls: chunks of rows
            for name in ("gemm", "fft"):  # each layer's FFT route held to one kernel
                for n in {B} | {min(chunk, B - s) for s in range(0, B, chunk)}:
                    layers[name]._get_structure()._kernels[(n, "cpu", training, torch.get_num_threads())] = name
            model = block_costs(p, q, k, B, training)
            names = ["gemm", "fft"] + (["dense"] if model["dense"] <= DENSE_SKIP * min(model["gemm"], model["fft"])
                                       else [])
            with torch.set_grad_enabled(training):
                r = time_contenders({n: _call(layers[n], x, g, training) for n in names}, repeats=repeats,
                                    budget=budget)
            row = dict(p=p, q=q, k=k, B=B, training=training)
            for n in ("dense", "gemm", "fft"):
                row[n] = r[n]["median"] * 1e6 if n in r else None
            rows.append(row)
            print(row, flush=True)
    return rows


def _nonneg_fit(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """min sum ((A c - y) / y)^2 over c >= 0 (dropping features whose unconstrained fit is negative)."""
    keep = list(range(A.shape[1]))
    while True:
        c = np.zeros(A.shape[1])
        c[keep] = np.linalg.lstsq(A[:, keep] / y[:, None], np.ones_like(y), rcond=None)[0]
        if (c >= 0).all():
            return c
        keep = [i for i in keep if c[i] > 0]


def features(r: dict) -> tuple[list[float], list[float], list[float]]:
    p, q, k, B = r["p"], r["q"], r["k"], r["B"]
    C, R = -(-p // k), -(-q // k)
    dense = [1.0, p * q, B * p * q]
    gemm = [1.0, B * (C + R) * k * k, B * 2 * k * C * R, B * (C + R) * k]
    fft = [1.0, B * (C + R) * k, B * C * R * (k // 2 + 1)]
    return dense, gemm, fft


def fit_block(rows: list[dict]) -> None:
    for training in (False, True):
        R = [r for r in rows if r["training"] == training]
        fd, fg, ff = zip(*(features(r) for r in R))
        D = [i for i, r in enumerate(R) if r["dense"] is not None]
        cd = _nonneg_fit(np.array([fd[i] for i in D]), np.array([R[i]["dense"] for i in D]))
        cg = _nonneg_fit(np.array(fg), np.array([r["gemm"] for r in R]))
        cf = _nonneg_fit(np.array(ff), np.array([r["fft"] for r in R]))
        fmt = lambda c: tuple(float(f"{v:.3g}") for v in c)  # noqa: E731
        print(f"training={training}: _BLOCK_DENSE_US {fmt(cd)}, _BLOCK_GEMM_US {fmt(cg)}, _BLOCK_FFT_US {fmt(cf)}")
        worst = {"current": (1.0, None), "refitted": (1.0, None)}
        for r in R:
            timed = {n: r[n] for n in ("dense", "gemm", "fft") if r[n] is not None}
            best = min(timed.values())
            d, g, f = features(r)
            current = current_model(r)
            refitted = dict(dense=float(np.dot(cd, d)), gemm=float(np.dot(cg, g)), fft=float(np.dot(cf, f)))
            for name, model in (("current", current), ("refitted", refitted)):
                pick = min((n for n in model if n in timed), key=model.get)
                if min(model, key=model.get) not in timed:  # the model picked an untimed (dense) route
                    pick = "dense?"
                ratio = timed.get(pick, float("inf")) / best
                if ratio > worst[name][0]:
                    worst[name] = (ratio, (r["p"], r["q"], r["k"], r["B"], pick))
        print(f"  chosen over the fastest, worst cell: current {worst['current']}, refitted {worst['refitted']}")


def current_model(r: dict) -> dict[str, float]:
    """The committed model's costs for a timed cell, at the rows of the layer's calls: it picks per chunk."""
    chunk = block_chunk_rows(r["p"], r["q"], r["k"], 4, r["B"])
    return block_costs(r["p"], r["q"], r["k"], chunk, r["training"])


def report_choice(rows: list[dict]) -> None:
    """Per cell: the times of the three ways, the way the current model picks, and its time over the fastest."""
    for r in rows:
        model = current_model(r)
        timed = {n: r[n] for n in model if r[n] is not None}
        pick = min(model, key=model.get)
        ratio = timed.get(pick, float("inf")) / min(timed.values())
        times = ", ".join(f"{n} {t / 1e3:.1f} ms" for n, t in timed.items())
        print(f"{r['p']}->{r['q']} k={r['k']} rows={r['B']} {'fwd+bwd' if r['training'] else 'fwd'}: {times}; "
              f"picked {pick}, {ratio:.2f}x the fastest")
