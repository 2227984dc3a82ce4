"""Speed benchmark of :class:`dftnet.DFTLinear` (the module behind ``dftnet bench``).

For each layer shape (p -> q), batch B and mode ("fwd" under ``torch.no_grad``, or "fwd+bwd": forward
plus the gradients of the input, the weight and the bias) it times four contenders:

* ``dftnet``: ``dftnet.DFTLinear(p, q)`` with its automatic method; the row records the route it took
  (``dense``, or the FFT length L of :func:`dftnet.plan.make_plan`, circular when L == n);
* ``plain``: the textbook torch.fft layer, ``irfft(rfft(x, n).conj() * rfft(w, n), n)[..., :q] + b``,
  with autograd doing the backward;
* ``linear``: ``nn.Linear(p, q)`` (skipped when its weight would be too big: 3 p q bytes-per-element
  over ``linear_max_gb``);
* ``other``: the same layer forced onto the route ``dftnet`` did not take (``method="fft"`` where it
  chose the dense product, ``method="dense"`` where it chose the FFT), for layers of at most
  ``ROUTE_CHECK_MAX_ENTRIES`` matrix entries: ``auto_over_best`` = dftnet / min(dftnet, other) checks the
  automatic choice (1.00 when it picked the faster way);
* ``floor``: the FFTs that any FFT layer must do, at DFTLinear's length L: a real FFT and an inverse
  real FFT of shape (B, L) for the forward, twice that for forward+backward. ``floor_n`` is the same at
  length n, for reference (it is what ``plain`` must pay).

Timing: every contender is warmed up, then the contenders are run in turns (the starting one rotates),
each turn timing a group of calls long enough (~2 ms) to be above timer and scheduling noise, and the
median of the turns is reported (``*_ms``). Each contender gets an equal share of ``budget`` seconds
per cell: up to ``repeats`` turns, at least 3. Times are per call, in milliseconds; ``*_spread`` is the
interquartile range over the median, a noise indicator. The fastest turn is kept too (``*_min_ms``,
and ratios ``*_min``): on a machine shared with other work it is the estimate least disturbed by it,
and the table and plot can show it instead (``stat="min"``, ``--stat min``).

Python use::

    from dftnet.experiments import bench
    rows = bench.sweep([256, 1024, "785x300"], [8, 128])
    print(bench.format_table(rows))
    bench.write_outputs(rows, "runs/my-bench")      # bench.csv, bench.json, bench.png
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from dftnet import DFTLinear
from dftnet.plan import make_plan, use_dense

__all__ = [
    "MODES",
    "DEFAULT_WIDTHS",
    "DEFAULT_BATCHES",
    "QUICK_WIDTHS",
    "QUICK_BATCHES",
    "STATS",
    "configure_parser",
    "run",
    "main",
    "sweep",
    "bench_cell",
    "time_contenders",
    "parse_widths",
    "parse_ints",
    "resolve_device",
    "resolve_dtype",
    "machine_info",
    "format_table",
    "format_row",
    "table_header",
    "write_outputs",
    "plot",
]

MODES = ("fwd", "fwd+bwd")
STATS = ("median", "min")
CONTENDERS = ("dftnet", "other", "plain", "linear", "floor", "floor_n")
AWKWARD_WIDTHS = (785, 1000, 1009, 4099, 10007)
DEFAULT_WIDTHS: tuple = tuple(2**k for k in range(6, 21)) + AWKWARD_WIDTHS + ((785, 300),)
DEFAULT_BATCHES = (1, 32, 128, 1024)
QUICK_WIDTHS: tuple = (256, 1024, 4096, 785, (785, 300))
QUICK_BATCHES = (8, 128)
DEFAULT_REPEATS = 21
DEFAULT_BUDGET_S = 1.0
QUICK_BUDGET_S = 0.4
QUICK_REPEATS = 11
MIN_REPEATS = 3
TARGET_SAMPLE_S = 2e-3  # each timed group of calls lasts at least this long
ROUTE_CHECK_MAX_ENTRIES = 4096 * 4096  # time the route not taken up to this p * q
BYTES_PER_ACTIVATION = 10  # memory estimate of a cell: B * max(n, L) * 10 elements (~40 bytes in float32)
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_GIB = 1024**3

CSV_FIELDS = (
    "p", "q", "n", "batch", "mode", "dtype", "device", "route", "fft_size", "circular", "dense",
    "dftnet_ms", "other_ms", "plain_ms", "linear_ms", "floor_ms", "floor_n_ms",
    "dftnet_over_floor", "auto_over_best", "plain_over_dftnet", "linear_over_dftnet", "floor_n_over_floor",
    "dftnet_min_ms", "other_min_ms", "plain_min_ms", "linear_min_ms", "floor_min_ms", "floor_n_min_ms",
    "dftnet_over_floor_min", "auto_over_best_min", "plain_over_dftnet_min", "linear_over_dftnet_min",
    "dftnet_spread", "other_spread", "plain_spread", "linear_spread", "floor_spread", "floor_n_spread",
    "repeats", "linear_repeats", "rel_err", "linear_skipped", "skipped",
)


# ----------------------------------------------------------------------------------------------------
# Argument parsing and validation
# ----------------------------------------------------------------------------------------------------

def _parse_width_token(tok: str) -> list[tuple[int, int]]:
    tok = tok.strip().lower().replace("**", "^")
    if ".." in tok:  # "2^6..2^16": the powers of two in between
        lo, hi = (_parse_pow(t, tok) for t in tok.split("..", 1))
        if lo > hi:
            raise ValueError(f"bad width range {tok!r}: {lo} > {hi}")
        out, v = [], 1
        while v <= hi:
            if v >= lo:
                out.append((v, v))
            v *= 2
        if not out:
            raise ValueError(f"width range {tok!r} contains no power of two")
        return out
    for sep in ("x", "->", ":"):
        if sep in tok:
            p, q = tok.split(sep, 1)
            return [(_positive_int(p, "width", tok), _positive_int(q, "width", tok))]
    v = _parse_pow(tok, tok)
    return [(v, v)]


def _parse_pow(t: str, whole: str) -> int:
    t = t.strip()
    if "^" in t:
        b, e = t.split("^", 1)
        base, exp = _positive_int(b, "width", whole), _positive_int(e, "width", whole, allow_zero=True)
        if exp > 40:
            raise ValueError(f"width {whole!r} is too large")
        return base**exp
    return _positive_int(t, "width", whole)


def _positive_int(s, what: str, whole=None, allow_zero: bool = False) -> int:
    whole = s if whole is None else whole
    if isinstance(s, bool):
        raise ValueError(f"bad {what} {whole!r}: expected a positive integer")
    if isinstance(s, int):
        v = s
    else:
        try:
            v = int(str(s).strip())
        except ValueError:
            raise ValueError(f"bad {what} {whole!r}: expected a positive integer") from None
    if v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"bad {what} {whole!r}: expected a positive integer")
    return v


def parse_widths(widths) -> list[tuple[int, int]]:
    """Layer shapes (p, q) from a comma-separated string or a sequence.

    Items: ``1024`` (square), ``785x300`` (p -> q; also ``785->300``), ``2^10`` and ``2^6..2^16``
    (all powers of two in the range), or (p, q) tuples. Raises ValueError naming a bad item.
    """
    if isinstance(widths, str):
        items = [t for t in widths.split(",") if t.strip()]
        if not items:
            raise ValueError(f"bad --widths {widths!r}: no width given")
    else:
        items = list(widths)
        if not items:
            raise ValueError("no width given")
    out: list[tuple[int, int]] = []
    for it in items:
        if isinstance(it, (tuple, list)):
            if len(it) != 2:
                raise ValueError(f"bad width {it!r}: expected (in_features, out_features)")
            out.append((_positive_int(it[0], "width", it), _positive_int(it[1], "width", it)))
        elif isinstance(it, int) and not isinstance(it, bool):
            out.append((_positive_int(it, "width"), _positive_int(it, "width")))
        elif isinstance(it, str):
            out.extend(_parse_width_token(it))
        else:
            raise ValueError(f"bad width {it!r}: expected an integer, 'PxQ' or a (p, q) pair")
    return out


def parse_ints(values, what: str = "batch") -> list[int]:
    """Positive integers from a comma-separated string or a sequence (ValueError naming a bad one)."""
    if isinstance(values, str):
        items = [t for t in values.split(",") if t.strip()]
    elif isinstance(values, int) and not isinstance(values, bool):
        items = [values]
    else:
        items = list(values)
    if not items:
        raise ValueError(f"no {what} given")
    return [_positive_int(v, what) for v in items]


def _parse_modes(modes) -> list[str]:
    items = [t.strip() for t in modes.split(",") if t.strip()] if isinstance(modes, str) else list(modes)
    if not items:
        raise ValueError("no mode given")
    for m in items:
        if m not in MODES:
            raise ValueError(f"bad mode {m!r}: expected one of {', '.join(MODES)}")
    return items


def resolve_device(device) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available) -> torch.device; ValueError otherwise."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"bad device {device!r}: expected cpu, cuda or auto")
    d = device.strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d == "cpu":
        return torch.device("cpu")
    if d == "cuda" or d.startswith("cuda:"):
        try:
            dev = torch.device(d)
        except RuntimeError:
            raise ValueError(f"bad device {device!r}: expected cpu, cuda, cuda:N or auto") from None
        if not torch.cuda.is_available():
            raise ValueError(f"bad device {device!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"bad device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise ValueError(f"bad device {device!r}: expected cpu, cuda, cuda:N or auto")


def resolve_dtype(dtype) -> torch.dtype:
    """'float32' / 'float64' (or the torch dtypes) -> torch.dtype; ValueError otherwise."""
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
        raise ValueError(f"bad dtype {dtype}: expected one of {', '.join(_DTYPES)}")
    key = str(dtype).strip().lower().removeprefix("torch.")
    key = {"float": "float32", "double": "float64", "fp32": "float32", "fp64": "float64"}.get(key, key)
    if key not in _DTYPES:
        raise ValueError(f"bad dtype {dtype!r}: expected one of {', '.join(_DTYPES)}")
    return _DTYPES[key]


def _positive_float(v, what: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"bad {what} {v!r}: expected a positive number") from None
    if not math.isfinite(f) or f <= 0:
        raise ValueError(f"bad {what} {v!r}: expected a positive number")
    return f


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's flags to ``parser`` (values are validated by :func:`run`)."""
    parser.description = parser.description or (
        "Time DFTLinear against a plain torch.fft layer, nn.Linear and the FFT floor."
    )
    parser.add_argument("--quick", action="store_true",
                        help="a small subset (widths 256,1024,4096,785,785x300; batches 8,128) "
                             "with a short time budget: under a minute on a 2-core CPU")
    parser.add_argument("--widths", default=None, metavar="LIST",
                        help="comma-separated layer widths: N (square), PxQ (non-square), 2^a..2^b "
                             "(powers of two); default 2^6..2^20,785,1000,1009,4099,10007,785x300")
    parser.add_argument("--batches", default=None, metavar="LIST",
                        help="comma-separated batch sizes (default 1,32,128,1024)")
    parser.add_argument("--modes", default=",".join(MODES), metavar="LIST",
                        help="comma-separated among fwd, fwd+bwd (default both)")
    parser.add_argument("--device", default="auto", help="cpu, cuda[:N] or auto (default auto)")
    parser.add_argument("--dtype", default="float32", help="float32 (default) or float64")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder for bench.csv, bench.json, bench.png "
                             "(default runs/bench-<timestamp>)")
    parser.add_argument("--repeats", default=None,
                        help=f"most timed turns per contender and cell (default {DEFAULT_REPEATS}, "
                             f"{QUICK_REPEATS} with --quick); fewer when they would exceed the "
                             f"contender's share of --budget, but at least {MIN_REPEATS} unless this is "
                             "smaller")
    parser.add_argument("--budget", default=None, metavar="SECONDS",
                        help=f"target timing seconds per cell, shared by the contenders (default "
                             f"{DEFAULT_BUDGET_S}, {QUICK_BUDGET_S} with --quick)")
    parser.add_argument("--stat", default="median",
                        help="statistic shown in the table and plot: median (default) or min (the "
                             "fastest turn: steadier on a machine shared with other work); the csv "
                             "and json hold both")
    parser.add_argument("--max-mem-gb", default="4", metavar="GB",
                        help="skip cells whose activations (B * max(n, L) * 10 elements) exceed this "
                             "(default 4)")
    parser.add_argument("--linear-max-gb", default="2", metavar="GB",
                        help="skip nn.Linear when 3 * p * q values (weight, gradient, one more) "
                             "exceed this (default 2)")
    parser.add_argument("--threads", default=None,
                        help="torch.set_num_threads for the run (default: leave torch's setting)")
    parser.add_argument("--no-plot", action="store_true", help="do not write bench.png")


# ----------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------

def _sync_fn(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_contenders(
    fns: dict[str, Callable[[], object]],
    *,
    repeats: int = DEFAULT_REPEATS,
    budget: float = DEFAULT_BUDGET_S,
    device: torch.device | str = "cpu",
    min_repeats: int = MIN_REPEATS,
    target_sample: float = TARGET_SAMPLE_S,
) -> dict[str, dict]:
    """Time callables against each other, interleaved.

    Each callable is warmed up (one call, then one timed call that sizes its group of calls, lasting
    about ``target_sample`` seconds), then turns are run; in each turn every callable still due runs
    its group, the order rotating from turn to turn. Each callable gets an equal share of ``budget``
    seconds: ``repeats`` turns, or fewer when they would exceed its share, never fewer than
    ``min(min_repeats, repeats)``. So a slow contender (nn.Linear at large n) does not starve the
    others of turns, and while it is due it is interleaved with them.

    Returns {name: {"median", "min", "q1", "q3", "spread", "repeats"}}, times in seconds per call.
    """
    device = torch.device(device)
    sync = _sync_fn(device)
    names = list(fns)
    est: dict[str, float] = {}
    for name in names:  # warm-up: plan caches, allocator, lazy init
        fn = fns[name]
        fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        est[name] = max(time.perf_counter() - t0, 1e-7)
    inner = {k: max(1, min(10_000, math.ceil(target_sample / est[k]))) for k in names}
    share = budget / max(1, len(names))
    floor_rep = min(min_repeats, repeats)
    n_rep = {k: int(min(repeats, max(floor_rep, share // (inner[k] * est[k])))) for k in names}
    samples: dict[str, list[float]] = {k: [] for k in names}
    perf = time.perf_counter
    for r in range(max(n_rep.values())):
        s = r % len(names)
        for name in names[s:] + names[:s]:
            if r >= n_rep[name]:
                continue
            fn, m = fns[name], inner[name]
            sync()
            t0 = perf()
            for _ in range(m):
                fn()
            sync()
            samples[name].append((perf() - t0) / m)
    stats = {}
    for name, xs in samples.items():
        xs = sorted(xs)
        med = statistics.median(xs)
        if len(xs) >= 4:
            q = statistics.quantiles(xs, n=4, method="inclusive")
            q1, q3 = q[0], q[2]
        else:
            q1, q3 = xs[0], xs[-1]
        stats[name] = {"median": med, "min": xs[0], "q1": q1, "q3": q3,
                       "spread": (q3 - q1) / med if med > 0 else 0.0, "repeats": len(xs)}
    return stats


# ----------------------------------------------------------------------------------------------------
# One cell and the sweep
# ----------------------------------------------------------------------------------------------------

def _plain_layer(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, n: int, q: int) -> torch.Tensor:
    """The textbook FFT implementation of the DFT layer (circular, length n), autograd for backward."""
    return torch.fft.irfft(torch.fft.rfft(x, n).conj() * torch.fft.rfft(w, n), n)[..., :q] + b


def _route(p: int, q: int, batch: int, device: torch.device, mode: str = "fwd+bwd"):
    plan = make_plan(p, q)
    dense = bool(use_dense(p, q, batch, device, training=mode == "fwd+bwd"))
    return plan, dense


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
    plan, dense = _route(p, q, batch, device, mode)
    row = _base_row(p, q, batch, mode, dtype, device, plan, dense)
    n, L = plan.n, plan.fft_size
    layers = layers or {}
    layer = layers.get("dftnet")
    if layer is None:
        layer = DFTLinear(p, q, device=device, dtype=dtype)
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
        other = DFTLinear(p, q, method="fft" if dense else "dense", device=device, dtype=dtype)
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
    _add_ratios(row)
    return row


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
    batches = parse_ints(batches, "batch")
    modes = _parse_modes(modes)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    repeats = _positive_int(repeats, "repeats")
    budget = _positive_float(budget, "budget")
    max_mem_gb = _positive_float(max_mem_gb, "max-mem-gb")
    linear_max_gb = _positive_float(linear_max_gb, "linear-max-gb")
    itemsize = torch.empty((), dtype=dtype).element_size()

    rows: list[dict] = []
    gc_was_enabled = gc.isenabled()
    try:
        for p, q in shapes:
            plan, _ = _route(p, q, 1, device)
            runnable = [bt for bt in batches
                        if _cell_mem_bytes(p, q, bt, plan.fft_size, itemsize) <= max_mem_gb * _GIB]
            layers = None
            if runnable:
                torch.manual_seed(0)
                layers = {"dftnet": DFTLinear(p, q, device=device, dtype=dtype),
                          "linear": _make_linear(p, q, device, dtype, linear_max_gb)}
            for bt in batches:
                for mode in modes:
                    if bt not in runnable:
                        plan_b, dense_b = _route(p, q, bt, device, mode)
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


# ----------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------

_COLUMNS = (  # (title, width, formatter)
    ("layer", 11, lambda r, t: str(r["n"]) if r["p"] == r["q"] else f"{r['p']}x{r['q']}"),
    ("batch", 5, lambda r, t: str(r["batch"])),
    ("mode", 7, lambda r, t: r["mode"]),
    ("route", 10, lambda r, t: r["route"]),
    ("dftnet ms", 9, lambda r, t: _fmt_ms(r["dftnet" + t + "_ms"])),
    ("plain ms", 9, lambda r, t: _fmt_ms(r["plain" + t + "_ms"])),
    ("linear ms", 9, lambda r, t: _fmt_ms(r["linear" + t + "_ms"], "skip")),
    ("floor ms", 9, lambda r, t: _fmt_ms(r["floor" + t + "_ms"])),
    ("floor@n", 9, lambda r, t: _fmt_ms(r["floor_n" + t + "_ms"])),
    ("dft/floor", 9, lambda r, t: _fmt_ratio(r["dftnet_over_floor" + t])),
    ("auto/best", 9, lambda r, t: _fmt_ratio(r["auto_over_best" + t])),
    ("plain/dft", 9, lambda r, t: _fmt_ratio(r["plain_over_dftnet" + t])),
    ("lin/dft", 8, lambda r, t: _fmt_ratio(r["linear_over_dftnet" + t])),
    ("noise", 6, lambda r, t: "" if r["dftnet_spread"] is None else f"{100 * r['dftnet_spread']:.0f}%"),
)


def _fmt_ms(v, missing: str = "-") -> str:
    if v is None:
        return missing
    if v >= 100:
        return f"{v:.0f}"
    if v >= 0.01:
        return f"{v:.3g}"
    return f"{v:.2g}"


def _fmt_ratio(v) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def table_header() -> str:
    """The table's title line and rule."""
    head = "  ".join(t.rjust(w) if i >= 4 else t.ljust(w) for i, (t, w, _) in enumerate(_COLUMNS))
    return head + "\n" + "-" * len(head)


def _stat_suffix(stat: str) -> str:
    if stat not in STATS:
        raise ValueError(f"bad stat {stat!r}: expected one of {', '.join(STATS)}")
    return "_min" if stat == "min" else ""


def format_row(row: dict, stat: str = "median") -> str:
    """One aligned table line for a row (a skipped cell says why); ``stat``: "median" or "min"."""
    t = _stat_suffix(stat)
    cells = []
    for i, (_, w, f) in enumerate(_COLUMNS):
        if row.get("skipped") and i >= 4:
            cells.append(f"skipped: {row['skipped']}")
            break
        s = f(row, t)
        cells.append(s.rjust(w) if i >= 4 else s.ljust(w))
    return "  ".join(cells).rstrip()


def format_table(rows: Sequence[dict], stat: str = "median") -> str:
    """The whole table as text (header, one line per row); ``stat``: "median" or "min"."""
    return "\n".join([table_header()] + [format_row(r, stat) for r in rows])


def _git_commit() -> str | None:
    try:
        import subprocess

        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except Exception:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict:
    """Description of the machine and software the numbers come from."""
    import numpy

    from dftnet import __version__

    device = torch.device(device)
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "dftnet_version": __version__,
        "git_commit": _git_commit(),
        "torch_version": torch.__version__,
        "numpy_version": numpy.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_name": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkl_available": torch.backends.mkl.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.type == "cuda":
        info["cuda_version"] = torch.version.cuda
        info["allow_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_outputs(rows: Sequence[dict], out_dir, meta: dict | None = None, *,
                  make_plot: bool = True, stat: str = "median") -> dict[str, Path]:
    """Write bench.csv, bench.json (``{"machine": ..., "config": ..., "rows": [...]}``) and bench.png.

    ``meta`` may hold "machine" and "config" dicts; the machine is described when missing.
    Returns {"csv": path, "json": path, "png": path (when plotted)}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    if "machine" not in meta:
        dev = rows[0]["device"] if rows else "cpu"
        meta["machine"] = machine_info(dev)
    paths = {"csv": out / "bench.csv", "json": out / "bench.json"}
    with open(paths["csv"], "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
        wr.writeheader()
        for r in rows:
            wr.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    doc = {**meta, "rows": [{k: _json_value(v) for k, v in r.items()} for r in rows]}
    with open(paths["json"], "w") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")
    if make_plot and any(not r.get("skipped") for r in rows):
        paths["png"] = plot(rows, out / "bench.png", stat=stat)
    return paths


def plot(rows: Sequence[dict], path, batch: int | None = 128, stat: str = "median") -> Path:
    """Time against width (log-log) for square layers at one batch: a panel per mode.

    Powers of two are joined by lines; other widths are plain markers. Guides: n log n (anchored on
    the floor at the largest width) and n^2 (anchored on nn.Linear's largest width). When ``batch``
    is not in the rows, the largest batch is used. ``stat``: "median" (default) or "min" times.
    """
    t = _stat_suffix(stat)
    # The object-oriented API with the Agg canvas: no pyplot, so the caller's backend is untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    done = [r for r in rows if not r.get("skipped") and r["p"] == r["q"]]
    if not done:
        done = [r for r in rows if not r.get("skipped")]
    batches = sorted({r["batch"] for r in done})
    if batch not in batches:
        batch = batches[-1] if batches else batch
    modes = [m for m in ("fwd+bwd", "fwd") if any(r["mode"] == m for r in done)]
    fig = Figure(figsize=(6.5 * max(1, len(modes)), 5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(modes)), squeeze=False)
    styles = {"dftnet": ("C0", "-", "DFTLinear"), "plain": ("C1", "-", "plain torch.fft"),
              "linear": ("C2", "-", "nn.Linear"), "floor": ("k", "--", "FFT floor (length L)"),
              "floor_n": ("0.5", ":", "FFT floor (length n)")}
    for ax, mode in zip(axes[0], modes):
        sel = sorted((r for r in done if r["mode"] == mode and r["batch"] == batch), key=lambda r: r["n"])
        for name, (color, ls, label) in styles.items():
            pts = [(r["n"], r[f"{name}{t}_ms"]) for r in sel if r.get(f"{name}{t}_ms")]
            pow2 = [(n, t) for n, t in pts if n & (n - 1) == 0]
            other = [(n, t) for n, t in pts if n & (n - 1) != 0]
            if pow2:
                ax.plot(*zip(*pow2), color=color, ls=ls, marker="o", ms=3, label=label)
            if other:
                ax.plot(*zip(*other), color=color, ls="none", marker="x", ms=6,
                        label=None if pow2 else label)
        ns = sorted({r["n"] for r in sel})
        if len(ns) >= 2:
            grid = [ns[0] * (ns[-1] / ns[0]) ** (i / 50) for i in range(51)]
            fl = [(r["n"], r[f"floor{t}_ms"]) for r in sel if r.get(f"floor{t}_ms")]
            if fl:
                n0, t0 = max(fl)
                ax.plot(grid, [t0 * g * math.log2(g) / (n0 * math.log2(n0)) for g in grid],
                        color="tab:purple", lw=0.8, alpha=0.6, label="∝ n log n")
            li = [(r["n"], r[f"linear{t}_ms"]) for r in sel if r.get(f"linear{t}_ms")]
            if li:
                n0, t0 = max(li)
                ax.plot(grid, [t0 * (g / n0) ** 2 for g in grid], color="tab:red", lw=0.8,
                        alpha=0.6, label="∝ n²")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("width n (square n → n layer)")
        ax.set_ylabel(f"time per call (ms, {stat})")
        ax.set_title(f"{mode}, batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if rows:
        r0 = rows[0]
        fig.suptitle(f"dftnet bench: {r0['device']}, {r0['dtype']} (x: non-power-of-two widths)",
                     fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------

def _get(args, name, default):
    v = getattr(args, name, None)
    return default if v is None else v


def _config_from_args(args: argparse.Namespace) -> dict:
    quick = bool(getattr(args, "quick", False))
    widths = getattr(args, "widths", None)
    batches = getattr(args, "batches", None)
    repeats = getattr(args, "repeats", None)
    budget = getattr(args, "budget", None)
    threads = getattr(args, "threads", None)
    cfg = {
        "quick": quick,
        "widths": parse_widths(widths if widths is not None else (QUICK_WIDTHS if quick else DEFAULT_WIDTHS)),
        "batches": parse_ints(batches if batches is not None else
                              (QUICK_BATCHES if quick else DEFAULT_BATCHES), "batch"),
        "modes": _parse_modes(_get(args, "modes", MODES)),
        "device": resolve_device(_get(args, "device", "auto")),
        "dtype": resolve_dtype(_get(args, "dtype", "float32")),
        "repeats": _positive_int(repeats if repeats is not None else
                                 (QUICK_REPEATS if quick else DEFAULT_REPEATS), "--repeats"),
        "budget": _positive_float(budget if budget is not None else
                                  (QUICK_BUDGET_S if quick else DEFAULT_BUDGET_S), "--budget"),
        "max_mem_gb": _positive_float(_get(args, "max_mem_gb", 4), "--max-mem-gb"),
        "linear_max_gb": _positive_float(_get(args, "linear_max_gb", 2), "--linear-max-gb"),
        "threads": None if threads is None else _positive_int(threads, "--threads"),
        "plot": not getattr(args, "no_plot", False),
        "stat": _get(args, "stat", "median"),
    }
    _stat_suffix(cfg["stat"])
    out = getattr(args, "out", None)
    if out is None:
        out = Path("runs") / f"bench-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    elif not str(out).strip():
        raise ValueError(f"bad --out {out!r}: empty path")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"bad --out {str(out)!r}: exists and is not a directory")
    cfg["out"] = out
    return cfg


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed flags: print the table, write the outputs; returns 0.

    Raises ValueError (naming the bad value) for bad flag values, before any timing.
    """
    cfg = _config_from_args(args)
    if cfg["threads"] is not None:
        torch.set_num_threads(cfg["threads"])
    device = cfg["device"]
    machine = machine_info(device)
    t_start = time.perf_counter()
    print(f"dftnet bench: {machine['device_name']} ({device}), {cfg['dtype']}, torch "
          f"{machine['torch_version']}, {machine['torch_threads']} threads, "
          f"{machine['cpu_count']} CPUs, load {machine.get('loadavg', ['?'])[0]}", flush=True)
    print(f"times: {cfg['stat']} ms per call; fwd under no_grad, fwd+bwd = forward + grads of input, weight, "
          "bias; floor = rfft+irfft of (B, L) x1 (fwd) or x2 (fwd+bwd) at DFTLinear's FFT length L; "
          "noise = IQR/median of dftnet", flush=True)
    load = machine.get("loadavg", [0.0])[0]
    if device.type == "cpu" and load + machine["torch_threads"] > (machine["cpu_affinity"] or
                                                                  machine["cpu_count"] or 1) + 0.5:
        print(f"WARNING: load average {load:.1f} with {machine['torch_threads']} torch threads on "
              f"{machine['cpu_affinity'] or machine['cpu_count']} CPUs: other processes compete for "
              "the cores, and multi-threaded ops then stall (a thread waits to be scheduled); "
              "times will be noisy. " + ("Try --threads 1, or a quieter machine."
                                         if machine["torch_threads"] > 1 else "Use a quieter machine."),
              flush=True)
    print(table_header(), flush=True)
    rows = sweep(cfg["widths"], cfg["batches"], cfg["modes"], device=device, dtype=cfg["dtype"],
                 repeats=cfg["repeats"], budget=cfg["budget"], max_mem_gb=cfg["max_mem_gb"],
                 linear_max_gb=cfg["linear_max_gb"], callback=lambda r: print(format_row(r, cfg["stat"]), flush=True))
    elapsed = time.perf_counter() - t_start
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    config = {k: (str(v) if isinstance(v, (Path, torch.device, torch.dtype)) else v)
              for k, v in cfg.items()}
    config["widths"] = [list(w) for w in cfg["widths"]]
    config["elapsed_s"] = round(elapsed, 2)
    config["argv"] = sys.argv
    paths = write_outputs(rows, cfg["out"], {"machine": machine, "config": config},
                          make_plot=cfg["plot"], stat=cfg["stat"])
    bad = [r for r in rows if r.get("rel_err") is not None
           and r["rel_err"] > (1e-4 if cfg["dtype"] == torch.float32 else 1e-10)]
    for r in bad:
        print(f"WARNING: DFTLinear and the plain FFT layer disagree at {r['p']}x{r['q']} batch "
              f"{r['batch']}: relative error {r['rel_err']:.2e}", flush=True)
    n_skip = sum(1 for r in rows if r.get("skipped"))
    print(f"{len(rows) - n_skip} cells timed, {n_skip} skipped, in {elapsed:.1f} s; wrote "
          + ", ".join(str(p) for p in paths.values()), flush=True)
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Stand-alone entry point (``python -m dftnet.bench``, ``benchmarks/bench.py``)."""
    parser = argparse.ArgumentParser(prog=prog or "dftnet bench")
    configure_parser(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(prog="python -m dftnet.bench"))
