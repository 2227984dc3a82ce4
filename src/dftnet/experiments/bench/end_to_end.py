"""The benchmark's end-to-end row: one AdamW training step of the seed net, DFT against dense.

The seed MLP (``784-4096-1024-256-64-10``, :class:`dftnet.experiments.mnist.models.MLP` with its default
layer arguments) takes a step at batch 128: cross-entropy (label smoothing 0.1), then
``opt.zero_grad(set_to_none=True); loss.backward(); opt.step()`` with ``AdamW(lr=1e-3,
weight_decay=0.01)``. Four contenders, timed interleaved by :func:`time_contenders`:

* ``dft``: the step of ``MLP(layer="dft")``; ``dense``: the step of ``MLP(layer="dense")``;
* ``floor``: what the DFT net's layers must pay at least, as one callable: for a layer on the FFT
  route at this batch in training (``layer.route(B, training=True)``), rfft + irfft
  of a (B, L) tensor twice (L = ``make_plan(p, q).fft_size``: the cells' fwd+bwd floor); for a layer
  on the dense route, ``nn.Linear(p, q)`` forward and the gradients of its input, weight and bias;
* ``optimizer``: ``AdamW.step`` alone, on a copy of the DFT net whose gradients are set.

The result is one flat dict (``E2E_FIELDS``, times in ms per step, ``*_q1_ms``/``*_q3_ms`` the
quartiles of the turns, ``*_spread`` their IQR over the median) plus ``layers`` (each layer's shape
and route): ``dense_over_dft`` (the DFT net's speed-up), ``dft_over_floor`` and
``dft_over_floor_opt`` = dft / (floor + optimizer), from medians and (``*_min``) fastest turns.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from dftnet import DFTLinear
from dftnet.plan import make_plan

from ..argtypes import positive_float, positive_int
from ..harness.device import resolve_device
from ..mnist.models import MLP, SEED_WIDTHS
from ..tables import text_table
from .grid import resolve_dtype
from .timing import DEFAULT_BUDGET_S, DEFAULT_REPEATS, ratio_spread, time_contenders

__all__ = ["E2E_CONTENDERS", "E2E_FIELDS", "E2E_BATCH", "bench_end_to_end", "format_end_to_end"]

E2E_CONTENDERS = ("dft", "dense", "floor", "optimizer")
E2E_BATCH = 128
E2E_RATIOS = (("dense_over_dft", "dense", ("dft",)), ("dft_over_floor", "dft", ("floor",)),
              ("dft_over_floor_opt", "dft", ("floor", "optimizer")))  # (name, numerator, denominator terms)
E2E_FIELDS = (
    "widths", "batch", "dtype", "device", "routes",
    *(f"{c}{x}" for c in E2E_CONTENDERS
      for x in ("_ms", "_min_ms", "_q1_ms", "_q3_ms", "_spread", "_repeats")),
    "floor_opt_ms",
    *(f"{name}{x}" for name, _, _ in E2E_RATIOS for x in ("", "_min", "_spread")),
)
_LABELS = {"dft": "DFT net step", "dense": "dense net step", "floor": "DFT net floor",
           "optimizer": "DFT net AdamW.step", "dense_over_dft": "dense/DFT (speed-up)",
           "dft_over_floor": "DFT/floor", "dft_over_floor_opt": "DFT/(floor+optimizer)"}


def _adamw_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    def step():
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _adamw(model: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def _floor(model: nn.Module, batch: int, device: torch.device, dtype: torch.dtype):
    """The DFT net's floor as one callable, and each layer's shape and route."""
    layers, parts = [], []
    for m in model.modules():
        if not isinstance(m, DFTLinear):
            continue
        p, q = m.in_features, m.out_features
        plan = make_plan(p, q)
        L = plan.fft_size
        dense = m.route(batch, training=True) == "dense"
        layers.append({"p": p, "q": q, "fft_size": L, "dense": dense,
                       "route": "dense" if dense else f"{'circ' if plan.circular else 'lin'}:{L}"})
        if dense:
            lin = nn.Linear(p, q, device=device, dtype=dtype)
            x = torch.randn(batch, p, device=device, dtype=dtype, requires_grad=True)
            g = torch.randn(batch, q, device=device, dtype=dtype)
            parts.append(lambda lin=lin, x=x, g=g: torch.autograd.grad(lin(x), (x, lin.weight, lin.bias), g))
        else:
            t = torch.randn(batch, L, device=device, dtype=dtype)
            parts.append(lambda t=t, L=L: [torch.fft.irfft(torch.fft.rfft(t), L) for _ in range(2)])

    def floor():
        for part in parts:
            part()
    return floor, layers


def bench_end_to_end(
    widths: Sequence[int] = SEED_WIDTHS,
    batch: int = E2E_BATCH,
    *,
    device: torch.device | str = "auto",
    dtype: torch.dtype | str = torch.float32,
    repeats: int = DEFAULT_REPEATS,
    budget: float = 4 * DEFAULT_BUDGET_S,
    seed: int = 0,
) -> dict:
    """Time the training step of ``MLP(widths, layer="dft")`` against ``layer="dense"``, the DFT net's
    floor and its optimizer step (see the module docstring); returns the flat result dict.

    ``widths``: the net's sizes (the seed net's by default; tests pass a small one). ``budget``: seconds
    shared by the four contenders, each timed up to ``repeats`` turns (at least 3).
    """
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    batch, repeats, budget = positive_int(batch), positive_int(repeats), positive_float(budget)
    widths = tuple(widths)
    torch.manual_seed(seed)
    dft = MLP(widths, layer="dft", device=device, dtype=dtype)
    dense = MLP(widths, layer="dense", device=device, dtype=dtype)
    x = torch.randn(batch, widths[0], device=device, dtype=dtype)
    y = torch.randint(0, widths[-1], (batch,), device=device)
    opt_only = copy.deepcopy(dft)  # its gradients stay set: the optimizer step alone
    F.cross_entropy(opt_only(x), y, label_smoothing=0.1).backward()
    floor, layers = _floor(dft, batch, device, dtype)
    fns = {"dft": _adamw_step(dft, _adamw(dft), x, y), "dense": _adamw_step(dense, _adamw(dense), x, y),
           "floor": floor, "optimizer": _adamw(opt_only).step}
    gc_was_enabled = gc.isenabled()
    gc.collect(1)
    gc.disable()
    try:
        stats = time_contenders(fns, repeats=repeats, budget=budget, device=device)
    finally:
        if gc_was_enabled:
            gc.enable()
    res: dict = {"widths": "-".join(map(str, widths)), "batch": batch,
                 "dtype": str(dtype).removeprefix("torch."), "device": str(device),
                 "routes": ",".join(f"{d['p']}x{d['q']}:{d['route']}" for d in layers), "layers": layers}
    for name, s in stats.items():
        for key, field in (("median", "_ms"), ("min", "_min_ms"), ("q1", "_q1_ms"), ("q3", "_q3_ms")):
            res[name + field] = s[key] * 1e3
        res[name + "_spread"], res[name + "_repeats"] = s["spread"], s["repeats"]
    res["floor_opt_ms"] = res["floor_ms"] + res["optimizer_ms"]
    for name, num, dens in E2E_RATIOS:
        res[name] = res[num + "_ms"] / sum(res[d + "_ms"] for d in dens)
        res[name + "_min"] = res[num + "_min_ms"] / sum(res[d + "_min_ms"] for d in dens)
        res[name + "_spread"] = ratio_spread(res[name], res[num + "_q1_ms"], res[num + "_q3_ms"],
                                             sum(res[d + "_q1_ms"] for d in dens),
                                             sum(res[d + "_q3_ms"] for d in dens))
    return res


def format_end_to_end(res: dict, stat: str = "median") -> str:
    """The end-to-end section: each contender's ms per step and the ratios, with q1–q3 ranges (a
    ratio's: its numerator's q1..q3 over its denominator's q3..q1)."""
    t = "_min" if stat == "min" else ""
    lines = [[_LABELS[c] + " (ms)", f"{res[f'{c}{t}_ms']:.3g}",
              f"{res[f'{c}_q1_ms']:.3g}–{res[f'{c}_q3_ms']:.3g}"] for c in E2E_CONTENDERS]
    for name, num, dens in E2E_RATIOS:
        lo = res[num + "_q1_ms"] / sum(res[d + "_q3_ms"] for d in dens)
        hi = res[num + "_q3_ms"] / sum(res[d + "_q1_ms"] for d in dens)
        lines.append([_LABELS[name], f"{res[name + t]:.2f}", f"{lo:.2f}–{hi:.2f}"])
    title = (f"end to end: one AdamW training step of MLP {res['widths']}, batch {res['batch']} "
             f"({stat}; q1–q3 of the turns, a ratio's from its parts' q1..q3)\nDFT net's layers: "
             + ", ".join(f"{d['p']}x{d['q']} {d['route']}" for d in res["layers"])
             + " (floor: rfft+irfft x2 of (B, L) on the FFT route, nn.Linear fwd+bwd on the dense route)")
    return title + "\n" + text_table(["", stat, "q1–q3"], lines, left=1)
