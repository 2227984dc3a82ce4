"""The transformer preset of ``dftnet bench`` (``--preset transformer``): the MLP shapes of a transformer
block, d -> 4d and 4d -> d at d = 512, 1024, 2048, 4096, on 1,024 and 8,192 rows.

Each cell (shape, rows, mode) times, interleaved in turns (:func:`~dftnet.experiments.bench.timing.time_contenders`):

* ``linear``: ``nn.Linear(p, q)``, the baseline of every ratio;
* ``dft``: ``DFTLinear(p, q)`` with its default settings (learned diagonal, automatic route);
* ``block-k``: ``BlockDFTLinear(p, q, block_size=k)`` with its default settings, for k in ``BLOCK_SIZES``;
* ``c3a-k``: PEFT's C3A block-circulant operation (``peft.tuners.c3a.utils.BlockCircularConvolution``,
  weight (q / k, p / k, k)), where ``peft`` is importable (an optional benchmark dependency);
* each layer's FFT-route floor, the transforms that any FFT route must do: for ``dft`` an rfft and an
  irfft of (rows, L) at its FFT length L, twice for forward+backward; for ``block-k`` an rfft of the input's
  blocks (rows, p / k, k) and an irfft of the output's (rows, q / k, k), plus the same for the gradients
  (rfft of (rows, q / k, k), irfft of (rows, p / k, k)) for forward+backward. ``c3a-k`` rows share
  ``block-k``'s floor.

A row per (cell, layer): its time (median, quartiles, fastest turn), the route it took, ``linear_over_layer``
(its speed-up over nn.Linear), ``layer_over_floor`` and, for ``block-k``, ``c3a_over_layer``. fwd runs under
``torch.no_grad``; fwd+bwd is the forward plus the gradients of the input and of every parameter.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from dftnet import BlockDFTLinear, DFTLinear
from dftnet.plan import make_plan

from ..harness.writes import atomic_path, make_folder, write_text_atomic
from ..tables import text_table, write_csv
from .grid import MODES
from .timing import time_contenders

__all__ = ["TRANSFORMER_DIMS", "TRANSFORMER_ROWS", "BLOCK_SIZES", "QUICK_DIMS", "QUICK_ROWS", "QUICK_BLOCKS",
           "TRANSFORMER_FIELDS", "mlp_shapes", "c3a_operation", "transformer_cell", "transformer_sweep",
           "format_transformer", "transformer_columns", "transformer_cells", "write_transformer"]

TRANSFORMER_DIMS = (512, 1024, 2048, 4096)
TRANSFORMER_ROWS = (1024, 8192)
BLOCK_SIZES = (8, 16, 32, 64)
QUICK_DIMS = (512,)
QUICK_ROWS = (1024,)
QUICK_BLOCKS = (16, 64)
BYTES_PER_ACTIVATION = 12  # a cell's memory estimate: rows * max(p, q) * 12 elements (C3A's complex spectra)
_GIB = 1024**3

TRANSFORMER_FIELDS = (
    "p", "q", "rows", "mode", "layer", "block_size", "route", "ms", "q1_ms", "q3_ms", "min_ms", "spread",
    "repeats", "linear_ms", "linear_min_ms", "floor_ms", "floor_min_ms", "linear_over_layer",
    "linear_over_layer_min", "layer_over_floor", "layer_over_floor_min", "c3a_ms", "c3a_over_layer", "skipped",
)


def mlp_shapes(dims: Iterable[int]) -> list[tuple[int, int]]:
    """The two projections of a transformer MLP per width d: (d, 4d) and (4d, d)."""
    return [s for d in dims for s in ((d, 4 * d), (4 * d, d))]


def c3a_operation() -> Callable | None:
    """PEFT's C3A block-circulant product ``apply(x, w)`` (w of shape (q / k, p / k, k)), or None where
    ``peft`` is not importable."""
    try:
        from peft.tuners.c3a.utils import BlockCircularConvolution
    except Exception:  # not installed, or an incompatible version: the rows are left out
        return None
    return BlockCircularConvolution.apply


def _ffts(shapes_in: Sequence[tuple], shapes_out: Sequence[tuple], device, dtype) -> Callable[[], object]:
    """A callable doing an rfft of each input shape and an irfft to each output shape (last dim = length)."""
    ins = [torch.randn(*s, device=device, dtype=dtype) for s in shapes_in]
    outs = [(torch.randn(*s[:-1], s[-1] // 2 + 1, device=device, dtype=dtype.to_complex()), s[-1])
            for s in shapes_out]

    def run():
        for t in ins:
            torch.fft.rfft(t)
        for spectrum, length in outs:
            torch.fft.irfft(spectrum, length)
    return run


def _step(module: nn.Module | Callable, x: torch.Tensor, params: Sequence[torch.Tensor], g: torch.Tensor,
          grad: bool) -> Callable[[], object]:
    if grad:
        return lambda: torch.autograd.grad(module(x), params, g)

    def fwd():
        with torch.no_grad():
            return module(x)
    return fwd


def transformer_cell(p: int, q: int, rows: int, mode: str, *, blocks: Sequence[int] = BLOCK_SIZES,
                     device="cpu", dtype=torch.float32, repeats: int = 11, budget: float = 4.0,
                     c3a: bool = True, clock: str = "wall") -> list[dict]:
    """Time one (p -> q, rows, mode) cell; returns its rows (one per layer, see the module docstring).
    ``clock``: see :func:`~dftnet.experiments.bench.timing.time_contenders`."""
    if mode not in MODES:
        raise ValueError(f"bad mode {mode!r}: expected one of {', '.join(MODES)}")
    for k in blocks:
        if p % k or q % k:
            raise ValueError(f"block size {k} does not divide {p} -> {q}")
    device = torch.device(device)
    grad = mode == "fwd+bwd"
    torch.manual_seed(0)
    kw = {"device": device, "dtype": dtype}
    x = torch.randn(rows, p, requires_grad=grad, **kw)
    g = torch.randn(rows, q, **kw)
    passes = 2 if grad else 1
    layers: dict[str, nn.Module] = {"linear": nn.Linear(p, q, **kw), "dft": DFTLinear(p, q, **kw)}
    for k in blocks:
        layers[f"block-{k}"] = BlockDFTLinear(p, q, block_size=k, **kw)
    fns = {name: _step(m, x, [x, *m.parameters()], g, grad) for name, m in layers.items()}
    L = make_plan(p, q).fft_size
    fns["dft:floor"] = _ffts([(rows, L)] * passes, [(rows, L)] * passes, device, dtype)
    op = c3a_operation() if c3a else None
    for k in blocks:
        block_in, block_out = [(rows, p // k, k)], [(rows, q // k, k)]
        fns[f"block-{k}:floor"] = _ffts(block_in + (block_out if grad else []),
                                        block_out + (block_in if grad else []), device, dtype)
        if op is not None:
            w = (torch.randn(q // k, p // k, k, **kw) / p).requires_grad_(grad)
            fns[f"c3a-{k}"] = _step(lambda t, w=w: op(t, w), x, [x, w], g, grad)
    gc_was_enabled = gc.isenabled()
    gc.collect(1)
    gc.disable()
    try:
        stats = time_contenders(fns, repeats=repeats, budget=budget, device=device, clock=clock)
    finally:
        if gc_was_enabled:
            gc.enable()
    lin = stats["linear"]
    out = []
    for name in [n for n in fns if n != "linear" and ":" not in n]:
        s = stats[name]
        k = None if name == "dft" else int(name.split("-")[1])
        floor = stats["dft:floor" if k is None else f"block-{k}:floor"]
        route = "fft" if name.startswith("c3a") else layers[name].route(rows, training=grad)
        row = {f: None for f in TRANSFORMER_FIELDS}
        row.update(p=p, q=q, rows=rows, mode=mode, layer=name, block_size=k, route=route, skipped="",
                   ms=s["median"] * 1e3, q1_ms=s["q1"] * 1e3, q3_ms=s["q3"] * 1e3, min_ms=s["min"] * 1e3,
                   spread=s["spread"], repeats=s["repeats"], linear_ms=lin["median"] * 1e3,
                   linear_min_ms=lin["min"] * 1e3, floor_ms=floor["median"] * 1e3, floor_min_ms=floor["min"] * 1e3,
                   linear_over_layer=lin["median"] / s["median"], linear_over_layer_min=lin["min"] / s["min"],
                   layer_over_floor=s["median"] / floor["median"], layer_over_floor_min=s["min"] / floor["min"])
        c3a_stats = stats.get(f"c3a-{k}") if name.startswith("block") else None
        if c3a_stats is not None:
            row["c3a_ms"] = c3a_stats["median"] * 1e3
            row["c3a_over_layer"] = c3a_stats["median"] / s["median"]
        out.append(row)
    return out


def transformer_sweep(dims: Iterable[int] = TRANSFORMER_DIMS, rows: Iterable[int] = TRANSFORMER_ROWS,
                      modes: Iterable[str] = MODES, *, blocks: Sequence[int] = BLOCK_SIZES, device="cpu",
                      dtype=torch.float32, repeats: int = 11, budget: float = 4.0, max_mem_gb: float = 4.0,
                      c3a: bool = True, clock: str = "wall",
                      callback: Callable[[dict], None] | None = None) -> list[dict]:
    """Every cell of :func:`mlp_shapes` (dims) x rows x modes; cells whose activations would exceed
    ``max_mem_gb`` come back as one row with ``skipped`` set. ``callback(row)`` as each row completes."""
    device = torch.device(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    out = []
    for p, q in mlp_shapes(dims):
        for r in rows:
            for mode in modes:
                need = r * max(p, q) * BYTES_PER_ACTIVATION * itemsize
                if need > max_mem_gb * _GIB:
                    row = {f: None for f in TRANSFORMER_FIELDS}
                    row.update(p=p, q=q, rows=r, mode=mode, layer="all",
                               skipped=f"needs ~{need / _GIB:.1f} GiB > --max-mem-gb {max_mem_gb:g}")
                    cell = [row]
                else:
                    cell = transformer_cell(p, q, r, mode, blocks=blocks, device=device, dtype=dtype,
                                            repeats=repeats, budget=budget, c3a=c3a, clock=clock)
                for row in cell:
                    out.append(row)
                    if callback is not None:
                        callback(row)
    return out


def _x(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}x"


def transformer_columns(stat: str = "median") -> list[str]:
    """The table's column titles (``stat``: the statistic shown, median or min)."""
    return ["shape", "rows", "mode", "layer", "route", f"ms ({stat})", "±", "linear ms", "lin/layer",
            "layer/floor", "c3a/layer"]


def transformer_cells(row: dict, stat: str = "median") -> list[str]:
    """One row's table cells."""
    shape = f"{row['p']}->{row['q']}"
    if row.get("skipped"):
        return [shape, str(row["rows"]), row["mode"], row["layer"], "skipped", "-", "-", "-", "-", "-", "-"]
    m = stat == "min"
    return [shape, str(row["rows"]), row["mode"], row["layer"], row["route"],
            f"{row['min_ms' if m else 'ms']:.2f}", f"{50 * row['spread']:.0f}%",
            f"{row['linear_min_ms' if m else 'linear_ms']:.2f}",
            _x(row["linear_over_layer_min" if m else "linear_over_layer"]),
            _x(row["layer_over_floor_min" if m else "layer_over_floor"]), _x(row.get("c3a_over_layer"))]


def format_transformer(rows: Sequence[dict], stat: str = "median") -> str:
    """The preset's table: a line per row (``±``: half the interquartile range over the median)."""
    return text_table(transformer_columns(stat), [transformer_cells(r, stat) for r in rows], left=5)


def write_transformer(rows: Sequence[dict], out_dir, meta: dict) -> dict[str, Path]:
    """Write bench.csv (columns ``TRANSFORMER_FIELDS``) and bench.json (``{**meta, "rows": [...]}``)."""
    out = Path(out_dir)
    make_folder(out)
    paths = {"csv": out / "bench.csv", "json": out / "bench.json"}
    with atomic_path(paths["csv"]) as tmp:
        write_csv(tmp, [{k: ("" if r.get(k) is None else r.get(k)) for k in TRANSFORMER_FIELDS} for r in rows],
                  TRANSFORMER_FIELDS, extrasaction="ignore")
    doc = {**meta, "rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                             for k, v in r.items()} for r in rows]}
    write_text_atomic(paths["json"], json.dumps(doc, indent=1, default=str) + "\n")
    return paths
