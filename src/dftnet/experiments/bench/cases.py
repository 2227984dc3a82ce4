"""The benchmark's cases: layer shapes, one timed cell (DFTLinear, the plain torch.fft layer,
nn.Linear, the route not taken and the FFT floor) and the sweep over shapes, batches and modes.

Each cell is a row: a dict with the keys of ``grid.CSV_FIELDS`` (times in ms, None where skipped).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable

import torch
from torch import nn

from dftnet import DFTLinear
from dftnet.plan import make_plan

from ..argtypes import comma_list, one_of, positive_float, positive_int
from ..harness.device import resolve_device
from .grid import CSV_FIELDS, DEFAULT_BATCHES, DEFAULT_WIDTHS, MODES, parse_widths, resolve_dtype
from .timing import DEFAULT_BUDGET_S, DEFAULT_REPEATS, ratio_spread, time_contenders

__all__ = ["CONTENDERS", "bench_cell", "sweep"]

CONTENDERS = ("dftnet", "other", "plain", "linear", "floor", "floor_n")
ROUTE_CHECK_MAX_ENTRIES = 4096 * 4096  # time the route not taken up to this p * q
BYTES_PER_ACTIVATION = 10  # memory estimate of a cell: B * max(n, L) * 10 elements (~40 bytes in float32)
_GIB = 1024**3



# ----------------------------------------------------------------------------------------------------
# One cell and the sweep
# ----------------------------------------------------------------------------------------------------

def _plain_layer(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, n: int, q: int) -> torch.Tensor:
    """The textbook FFT implementation of the DFT layer (circular, length n), autograd for backward."""
    return torch.fft.irfft(torch.fft.rfft(x, n).conj() * torch.fft.rfft(w, n), n)[..., :q] + b


def _route(layer: DFTLinear, batch: int, mode: str = "fwd+bwd"):
    """The layer's plan (its FFT length) and whether a call on ``batch`` rows takes the dense route."""
    plan = make_plan(layer.in_features, layer.out_features, layer.fft_size)
    return plan, layer.route(batch, training=mode == "fwd+bwd") == "dense"


def _route_str(row: dict) -> str:
    if row.get("dense"):
        return "dense"
    return f"{'circ' if row.get('circular') else 'lin'}:{row.get('fft_size')}"


def _cell_mem_bytes(p: int, q: int, batch: int, fft_size: int, itemsize: int) -> int:
    return batch * max(p, q, fft_size) * BYTES_PER_ACTIVATION * itemsize


def _base_row(p, q, batch, mode, dtype, device, plan, dense) -> dict:
    row = {k: None for k in CSV_FIELDS}
    row.update(p=p, q=q, n=max(p, q), batch=batch, mode=mode, dtype=str(dtype).removeprefix("torch."),
               device=str(device), fft_size=plan.fft_size, circular=plan.circular, dense=dense,
               linear_skipped="", skipped="")
    row["route"] = _route_str(row)
    return row


def bench_cell(
    p: int,
    q: int,
    batch: int,
    mode: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    repeats: int = DEFAULT_REPEATS,
    budget: float = DEFAULT_BUDGET_S,
    linear_max_gb: float = 2.0,
    layers: dict | None = None,
) -> dict:
    """Time one (p -> q, batch, mode) cell; returns a row (times in ms, None where skipped).

    ``layers`` may hold prebuilt ``{"dftnet": DFTLinear, "linear": nn.Linear or None}`` to reuse.
    """
    device = torch.device(device)
    if mode not in MODES:
        raise ValueError(f"bad mode {mode!r}: expected one of {', '.join(MODES)}")
    layers = layers or {}
    layer = layers.get("dftnet")
    if layer is None:
        layer = DFTLinear(p, q, diagonal=False, device=device, dtype=dtype)
    plan, dense = _route(layer, batch, mode)
    row = _base_row(p, q, batch, mode, dtype, device, plan, dense)
    n, L = plan.n, plan.fft_size
    if "linear" in layers:
        linear = layers["linear"]
    else:
        linear = _make_linear(p, q, device, dtype, linear_max_gb)
    if linear is None:
        row["linear_skipped"] = _linear_skip_reason(p, q, dtype, linear_max_gb)

    grad = mode == "fwd+bwd"
    x = torch.randn(batch, p, device=device, dtype=dtype, requires_grad=grad)
    g = torch.randn(batch, q, device=device, dtype=dtype)
    w = layer.weight.detach().clone().requires_grad_(grad)
    b = layer.bias.detach().clone().requires_grad_(grad)
    xL = torch.randn(batch, L, device=device, dtype=dtype)
    xn = xL if L == n else torch.randn(batch, n, device=device, dtype=dtype)

    def floor_at(t: torch.Tensor, length: int, passes: int) -> Callable[[], object]:
        def f():
            for _ in range(passes):
                y = torch.fft.irfft(torch.fft.rfft(t), length)
            return y
        return f

    other = None
    if p * q <= ROUTE_CHECK_MAX_ENTRIES:
        other = DFTLinear(p, q, method="fft" if dense else "dense", diagonal=False, device=device, dtype=dtype)
        other.load_state_dict(layer.state_dict())

    passes = 2 if grad else 1
    if grad:
        dft_params = (x, layer.spectrum, layer.bias)

        def f_dft():
            return torch.autograd.grad(layer(x), dft_params, g)

        def f_other():
            return torch.autograd.grad(other(x), (x, other.spectrum, other.bias), g)

        def f_plain():
            return torch.autograd.grad(_plain_layer(x, w, b, n, q), (x, w, b), g)

        def f_lin():
            return torch.autograd.grad(linear(x), (x, linear.weight, linear.bias), g)
    else:
        def f_dft():
            return layer(x)

        def f_other():
            return other(x)

        def f_plain():
            return _plain_layer(x, w, b, n, q)

        def f_lin():
            return linear(x)

    fns = {"dftnet": f_dft, "plain": f_plain}
    if other is not None:
        fns["other"] = f_other
    if linear is not None:
        fns["linear"] = f_lin
    fns["floor"] = floor_at(xL, L, passes)
    if L != n:
        fns["floor_n"] = floor_at(xn, n, passes)

    with torch.set_grad_enabled(grad):
        # Sanity check (also warms up): DFTLinear and the plain layer must agree.
        with torch.no_grad():
            ref = _plain_layer(x, w, b, n, q).double()
            got = layer(x).double()
            row["rel_err"] = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
            del ref, got
        stats = time_contenders(fns, repeats=repeats, budget=budget, device=device)
    if "floor_n" not in stats:
        stats["floor_n"] = stats["floor"]
    row["repeats"] = stats["dftnet"]["repeats"]
    row["linear_repeats"] = stats["linear"]["repeats"] if "linear" in stats else 0
    for name in CONTENDERS:
        s = stats.get(name)
        row[f"{name}_ms"] = None if s is None else s["median"] * 1e3
        row[f"{name}_min_ms"] = None if s is None else s["min"] * 1e3
        row[f"{name}_spread"] = None if s is None else s["spread"]
        row[f"{name}_q1_ms"] = None if s is None else s["q1"] * 1e3
        row[f"{name}_q3_ms"] = None if s is None else s["q3"] * 1e3
    _add_ratios(row)
    _add_overhead(row)
    return row


def _add_overhead(row: dict) -> None:
    """DFTLinear's cost beyond its FFT floor, in microseconds: ``overhead_us`` from the medians,
    ``overhead_min_us`` from the fastest turns, ``overhead_lo_us .. overhead_hi_us`` from dftnet's
    q1..q3 less the floor's q3..q1 (the spread of the difference, at most)."""
    def diff(a, b):
        ta, tb = row.get(a), row.get(b)
        return None if ta is None or tb is None else (ta - tb) * 1e3

    row["overhead_us"] = diff("dftnet_ms", "floor_ms")
    row["overhead_min_us"] = diff("dftnet_min_ms", "floor_min_ms")
    row["overhead_lo_us"] = diff("dftnet_q1_ms", "floor_q3_ms")
    row["overhead_hi_us"] = diff("dftnet_q3_ms", "floor_q1_ms")


def _add_ratios(row: dict) -> None:
    """Ratios of medians, and (``*_min``) of minima: the fastest turns, least disturbed by other load."""
    def ratio(a, b, stat=""):
        ta, tb = row.get(f"{a}{stat}_ms"), row.get(f"{b}{stat}_ms")
        return ta / tb if ta is not None and tb else None

    for stat, suffix in (("", ""), ("_min", "_min")):
        row["dftnet_over_floor" + suffix] = ratio("dftnet", "floor", stat)
        to_other = ratio("dftnet", "other", stat)  # dftnet / min(dftnet, other) = max(1, dftnet / other)
        row["auto_over_best" + suffix] = None if to_other is None else max(1.0, to_other)
        row["plain_over_dftnet" + suffix] = ratio("plain", "dftnet", stat)
        row["linear_over_dftnet" + suffix] = ratio("linear", "dftnet", stat)
    row["floor_n_over_floor"] = ratio("floor_n", "floor")
    row["dftnet_over_floor_spread"] = ratio_spread(row["dftnet_over_floor"], row.get("dftnet_q1_ms"),
                                                   row.get("dftnet_q3_ms"), row.get("floor_q1_ms"),
                                                   row.get("floor_q3_ms"))


def _linear_bytes(p: int, q: int, dtype: torch.dtype) -> int:
    return 3 * p * q * torch.empty((), dtype=dtype).element_size()


def _linear_skip_reason(p, q, dtype, linear_max_gb) -> str:
    need = _linear_bytes(p, q, dtype) / _GIB
    return f"nn.Linear needs {need:.1f} GiB > {linear_max_gb:g} GiB"


def _make_linear(p, q, device, dtype, linear_max_gb) -> nn.Linear | None:
    if _linear_bytes(p, q, dtype) > linear_max_gb * _GIB:
        return None
    return nn.Linear(p, q, device=device, dtype=dtype)


def sweep(
    widths: Iterable = DEFAULT_WIDTHS,
    batches: Iterable[int] = DEFAULT_BATCHES,
    modes: Iterable[str] = MODES,
    *,
    device: torch.device | str = "auto",
    dtype: torch.dtype | str = torch.float32,
    repeats: int = DEFAULT_REPEATS,
    budget: float = DEFAULT_BUDGET_S,
    max_mem_gb: float = 4.0,
    linear_max_gb: float = 2.0,
    callback: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Benchmark every (width, batch, mode); returns one row (dict) per cell, in sweep order.

    ``widths``: ints (square n -> n), (p, q) pairs or strings as in :func:`parse_widths`. Cells whose
    activations would exceed ``max_mem_gb`` come back with ``skipped`` set and no times; nn.Linear is
    skipped (``linear_skipped``) when its weight would exceed ``linear_max_gb``. ``callback(row)`` is
    called as each row completes. Raises ValueError for bad values.
    """
    shapes = parse_widths(widths)
    batches = comma_list(positive_int, "batch")(batches)
    modes = comma_list(one_of(MODES), "mode")(modes)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    repeats = positive_int(repeats)
    budget = positive_float(budget)
    max_mem_gb = positive_float(max_mem_gb)
    linear_max_gb = positive_float(linear_max_gb)
    itemsize = torch.empty((), dtype=dtype).element_size()

    rows: list[dict] = []
    gc_was_enabled = gc.isenabled()
    try:
        for p, q in shapes:
            plan = make_plan(p, q)
            runnable = [bt for bt in batches
                        if _cell_mem_bytes(p, q, bt, plan.fft_size, itemsize) <= max_mem_gb * _GIB]
            layers = None
            if runnable:
                torch.manual_seed(0)
                layers = {"dftnet": DFTLinear(p, q, diagonal=False, device=device, dtype=dtype),
                          "linear": _make_linear(p, q, device, dtype, linear_max_gb)}
            for bt in batches:
                for mode in modes:
                    if bt not in runnable:  # no layer built for this shape: the route of one on the meta device
                        route_layer = layers["dftnet"] if layers else DFTLinear(p, q, diagonal=False, device="meta")
                        plan_b, dense_b = _route(route_layer, bt, mode)
                        row = _base_row(p, q, bt, mode, dtype, device, plan_b, dense_b)
                        need = _cell_mem_bytes(p, q, bt, plan.fft_size, itemsize) / _GIB
                        row["skipped"] = f"needs ~{need:.1f} GiB > --max-mem-gb {max_mem_gb:g}"
                    else:
                        gc.collect(1)  # young generations only: a full collection costs ~0.1 s
                        gc.disable()
                        try:
                            row = bench_cell(p, q, bt, mode, device=device, dtype=dtype,
                                             repeats=repeats, budget=budget,
                                             linear_max_gb=linear_max_gb, layers=layers)
                        finally:
                            if gc_was_enabled:
                                gc.enable()
                    rows.append(row)
                    if callback is not None:
                        callback(row)
            del layers
            gc.collect(1)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        if gc_was_enabled:
            gc.enable()
    return rows
