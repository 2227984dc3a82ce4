"""What every report shares: aligned text tables, sizes in bytes, ratios, CSV files and figures.

Plots use ``matplotlib.figure.Figure`` objects and ``fig.savefig``: no pyplot and no backend switch,
so a caller's matplotlib state is never touched.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["text_table", "format_bytes", "ratio", "write_csv", "new_figure"]


def text_table(cols: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Header, rule and rows, each column as wide as its widest cell; the first ``left`` columns are
    left-aligned, the others right-aligned."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])


def format_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(b) < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


def write_csv(path: Path, rows: Sequence[dict], fieldnames: Sequence[str], **kwargs) -> Path:
    """One row per dict, under ``fieldnames`` (``kwargs`` go to ``csv.DictWriter``)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames), **kwargs)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def new_figure(figsize: tuple[float, float]):
    """A figure drawn with the Agg canvas (PNG), independent of pyplot and its global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def ratio(x: float, ref: float) -> str:
    """``x / ref`` as ``1/2.4`` below 1 and ``1.30x`` from 1 up."""
    if not (ref and x) or math.isnan(x) or math.isnan(ref):
        return "-"
    r = x / ref
    return f"1/{1 / r:.1f}" if r < 1 else f"{r:.2f}x"
