"""The benchmark's report: the text table (printed row by row as cells finish), the description of
the machine, and the files: bench.csv, bench.json and bench.png (time against width, log-log)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import torch

from dftnet import __version__

from ..harness.reproduce import cpu_model
from ..harness.writes import atomic_path, make_folder, write_text_atomic
from ..tables import new_figure, text_table, write_csv
from .end_to_end import E2E_FIELDS
from .grid import CSV_FIELDS

__all__ = ["STATS", "table_header", "format_row", "format_table", "format_overhead", "machine_info",
           "write_outputs", "plot"]

STATS = ("median", "min")

_COLUMNS = (  # (title, width, formatter)
    ("layer", 11, lambda r, t: str(r["n"]) if r["p"] == r["q"] else f"{r['p']}x{r['q']}"),
    ("batch", 5, lambda r, t: str(r["batch"])),
    ("mode", 7, lambda r, t: r["mode"]),
    ("route", 10, lambda r, t: r["route"]),
    ("dftnet ms", 9, lambda r, t: _fmt_ms(r["dftnet" + t + "_ms"])),
    ("±", 6, lambda r, t: _fmt_pm(r["dftnet_spread"])),
    ("plain ms", 9, lambda r, t: _fmt_ms(r["plain" + t + "_ms"])),
    ("linear ms", 9, lambda r, t: _fmt_ms(r["linear" + t + "_ms"], "skip")),
    ("floor ms", 9, lambda r, t: _fmt_ms(r["floor" + t + "_ms"])),
    ("floor@n", 9, lambda r, t: _fmt_ms(r["floor_n" + t + "_ms"])),
    ("dft/floor", 9, lambda r, t: _fmt_ratio(r["dftnet_over_floor" + t])),
    ("±", 6, lambda r, t: _fmt_pm(r["dftnet_over_floor_spread"])),
    ("auto/best", 9, lambda r, t: _fmt_ratio(r["auto_over_best" + t])),
    ("plain/dft", 9, lambda r, t: _fmt_ratio(r["plain_over_dftnet" + t])),
    ("lin/dft", 8, lambda r, t: _fmt_ratio(r["linear_over_dftnet" + t])),
)


def _fmt_ms(v, missing: str = "-") -> str:
    if v is None:
        return missing
    if v >= 100:
        return f"{v:.0f}"
    if v >= 0.01:
        return f"{v:.3g}"
    return f"{v:.2g}"


def _fmt_pm(spread) -> str:
    """A spread (IQR / median) as ``±`` half of it, in percent: q1..q3 is about the value ± that."""
    if spread is None:
        return ""
    pct = 50 * spread
    return f"±{pct:.0f}%" if pct < 999.5 else "±>999%"


def _fmt_us(v, lo=None, hi=None) -> str:
    """Microseconds, with a ``(lo–hi)`` range when given."""
    if v is None:
        return "-"
    s = f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"
    if lo is None or hi is None:
        return s
    return s + f" ({lo:.1f}–{hi:.1f})" if max(abs(lo), abs(hi)) < 100 else s + f" ({lo:.0f}–{hi:.0f})"


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


def format_overhead(rows: Sequence[dict], stat: str = "median", batch: int = 1) -> str:
    """The per-call overhead section: for the cells at ``batch`` (1: the fixed cost dominates),
    DFTLinear's time, its FFT floor and the difference in microseconds, each with its q1–q3 range
    (the overhead's: dftnet's q1..q3 less the floor's q3..q1). "" when no cell has that batch."""
    t = _stat_suffix(stat)
    sel = [r for r in rows if r["batch"] == batch and not r.get("skipped") and r.get("dftnet_ms") is not None]
    if not sel:
        return ""

    def us(r, name):
        v, q1, q3 = (r.get(f"{name}{x}_ms") for x in (t, "_q1", "_q3"))
        return _fmt_us(None if v is None else v * 1e3, None if q1 is None else q1 * 1e3,
                       None if q3 is None else q3 * 1e3)

    lines = [[_COLUMNS[0][2](r, t), r["mode"], r["route"], us(r, "dftnet"), us(r, "floor"),
              _fmt_us(r["overhead" + t + "_us"], r["overhead_lo_us"], r["overhead_hi_us"])] for r in sel]
    title = (f"per-call overhead at batch {batch}: dftnet - floor, µs per call ({stat}; q1–q3 in "
             "parentheses, the overhead's from dftnet's q1..q3 less the floor's q3..q1)")
    return title + "\n" + text_table(["layer", "mode", "route", "dftnet µs", "floor µs", "overhead µs"],
                                      lines, left=3)


def _git_commit() -> str | None:
    try:
        import subprocess

        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except Exception:
        return None


def machine_info(device: torch.device | str = "cpu") -> dict:
    """Description of the machine and software the numbers come from."""
    import numpy


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
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_name": cpu_model(),
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


def write_outputs(rows: Sequence[dict], out_dir, meta: dict | None = None, *, make_plot: bool = True,
                  stat: str = "median", end_to_end: dict | None = None) -> dict[str, Path]:
    """Write bench.csv, bench.json (``{"machine": ..., "config": ..., "rows": [...], "end_to_end": ...}``)
    and bench.png; with ``end_to_end`` (a result of :func:`bench_end_to_end`), end_to_end.csv too.

    ``meta`` may hold "machine" and "config" dicts; the machine is described when missing. The json's
    "end_to_end" is null without one. Returns {"csv": path, "json": path, "png": path (when plotted),
    "end_to_end_csv": path (with ``end_to_end``)}.
    """
    out = Path(out_dir)
    make_folder(out)
    meta = dict(meta or {})
    if "machine" not in meta:
        dev = rows[0]["device"] if rows else "cpu"
        meta["machine"] = machine_info(dev)
    paths = {"csv": out / "bench.csv", "json": out / "bench.json"}
    with atomic_path(paths["csv"]) as tmp:  # each file whole or not at all (a full disk, a crash)
        write_csv(tmp, [{k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS} for r in rows],
                  CSV_FIELDS, extrasaction="ignore")
    if end_to_end is not None:
        paths["end_to_end_csv"] = out / "end_to_end.csv"
        with atomic_path(paths["end_to_end_csv"]) as tmp:
            write_csv(tmp, [{k: ("" if end_to_end.get(k) is None else end_to_end.get(k))
                             for k in E2E_FIELDS}], E2E_FIELDS, extrasaction="ignore")
    doc = {**meta, "rows": [{k: _json_value(v) for k, v in r.items()} for r in rows],
           "end_to_end": None if end_to_end is None else {k: _json_value(v) for k, v in end_to_end.items()}}
    write_text_atomic(paths["json"], json.dumps(doc, indent=1, default=str) + "\n")
    if make_plot and any(not r.get("skipped") for r in rows):
        with atomic_path(out / "bench.png") as tmp:
            plot(rows, tmp, stat=stat)
        paths["png"] = out / "bench.png"
    return paths


def plot(rows: Sequence[dict], path, batch: int | None = 128, stat: str = "median") -> Path:
    """Time against width (log-log) for square layers at one batch: a panel per mode.

    Powers of two are joined by lines; other widths are plain markers. Guides: n log n (anchored on
    the floor at the largest width) and n^2 (anchored on nn.Linear's largest width). When ``batch``
    is not in the rows, the largest batch is used. ``stat``: "median" (default) or "min" times. Shaded
    bands (vertical bars at the markers) span each contender's q1..q3.
    """
    t = _stat_suffix(stat)
    path = Path(path)
    done = [r for r in rows if not r.get("skipped") and r["p"] == r["q"]]
    if not done:
        done = [r for r in rows if not r.get("skipped")]
    batches = sorted({r["batch"] for r in done})
    if batch not in batches:
        batch = batches[-1] if batches else batch
    modes = [m for m in ("fwd+bwd", "fwd") if any(r["mode"] == m for r in done)]
    fig = new_figure((6.5 * max(1, len(modes)), 5))  # no pyplot: the caller's matplotlib state is untouched
    axes = fig.subplots(1, max(1, len(modes)), squeeze=False)
    styles = {"dftnet": ("C0", "-", "DFTLinear"), "plain": ("C1", "-", "plain torch.fft"),
              "linear": ("C2", "-", "nn.Linear"), "floor": ("k", "--", "FFT floor (length L)"),
              "floor_n": ("0.5", ":", "FFT floor (length n)")}
    for ax, mode in zip(axes[0], modes):
        sel = sorted((r for r in done if r["mode"] == mode and r["batch"] == batch), key=lambda r: r["n"])
        for name, (color, ls, label) in styles.items():
            pts = [(r["n"], r[f"{name}{t}_ms"], r.get(f"{name}_q1_ms"), r.get(f"{name}_q3_ms"))
                   for r in sel if r.get(f"{name}{t}_ms")]
            pow2 = [pt for pt in pts if pt[0] & (pt[0] - 1) == 0]
            other = [pt for pt in pts if pt[0] & (pt[0] - 1) != 0]
            if pow2:
                ax.plot([pt[0] for pt in pow2], [pt[1] for pt in pow2], color=color, ls=ls, marker="o", ms=3,
                        label=label)
            if other:
                ax.plot([pt[0] for pt in other], [pt[1] for pt in other], color=color, ls="none", marker="x",
                        ms=6, label=None if pow2 else label)
            # The interquartile range of the turns, whatever ``stat`` the line shows: a band along a
            # line, a bar at a lone point.
            band = [pt for pt in pow2 if pt[2] is not None and pt[3] is not None]
            bars = [pt for pt in other if pt[2] is not None and pt[3] is not None]
            if len(band) >= 2:
                ax.fill_between([pt[0] for pt in band], [pt[2] for pt in band], [pt[3] for pt in band],
                                color=color, alpha=0.2, lw=0)
            else:
                bars += band
            if bars:
                ax.vlines([pt[0] for pt in bars], [pt[2] for pt in bars], [pt[3] for pt in bars],
                          color=color, lw=1.5, alpha=0.6)
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
        ax.set_ylabel(f"time per call (ms, {stat}; shaded: q1..q3)")
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
