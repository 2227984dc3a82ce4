"""The tables and plots the jobs report with: ``dftnet train``'s side-by-side table and curves,
``dftnet sweep``'s table and width/frontier plots, and what they share (aligned text tables, CSV
files, figures). The benchmark's own table and plot are in ``bench/report.py``; its figures come
from :func:`new_figure` too.

Plots use ``matplotlib.figure.Figure`` objects and ``fig.savefig``: no pyplot and no backend switch,
so a caller's matplotlib state is never touched.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["text_table", "format_bytes", "write_csv", "new_figure", "train_table", "plot_curves",
           "sweep_table", "plot_widths", "plot_frontier", "ratio", "lm_table", "plot_lm"]


# ----------------------------------------------------------------------------------- shared


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


# ----------------------------------------------------------------------------------- dftnet train


def train_table(results: list[dict]) -> str:
    """The side-by-side table of ``dftnet train``, with a DFT/dense ratio row when both nets ran."""
    cols = ["net", "parameters", "test acc", "s/epoch", "examples/s", "peak memory"]
    rows = [[r["layer"], f"{r['parameters']:,}", f"{r['test_acc']:.2%}", f"{r['seconds_per_epoch']:.1f}",
             f"{r['examples_per_s']:,.0f}", format_bytes(r["peak_memory_bytes"])] for r in results]
    by = {r["layer"]: r for r in results}
    if "dft" in by and "dense" in by:
        d, e = by["dft"], by["dense"]
        rows.append(["dft/dense", f"1/{e['parameters'] / d['parameters']:.0f}",
                     f"{d['test_acc'] - e['test_acc']:+.2%} pts",
                     f"1/{e['seconds_per_epoch'] / d['seconds_per_epoch']:.1f}",
                     f"{d['examples_per_s'] / e['examples_per_s']:.1f}x",
                     f"1/{e['peak_memory_bytes'] / max(d['peak_memory_bytes'], 1):.1f}"])
    return text_table(cols, rows, left=1)


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train (dashed) and validation, one color per net."""
    fig = new_figure((11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    kinds = list(dict.fromkeys(r["layer"] for r in history))  # in order of appearance
    colors = {"dft": "tab:blue", "dense": "tab:orange"}
    for i, kind in enumerate(kinds):
        color = colors.get(kind, f"C{i + 2}")
        rows = [r for r in history if r["layer"] == kind]
        ep = [r["epoch"] for r in rows]
        ax_loss.plot(ep, [r["train_loss"] for r in rows], "--", color=color, label=f"{kind} train")
        ax_loss.plot(ep, [r["val_loss"] for r in rows], "-o", color=color, ms=3, label=f"{kind} val")
        ax_acc.plot(ep, [100 * r["train_acc"] for r in rows], "--", color=color, label=f"{kind} train")
        ax_acc.plot(ep, [100 * r["val_acc"] for r in rows], "-o", color=color, ms=3, label=f"{kind} val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------- dftnet sweep


def sweep_table(rows: list[dict]) -> str:
    """One line per run of the sweep; skipped runs say so."""
    cols = ["dataset", "variant", "widths", "parameters", "test acc", "s/epoch", "examples/s"]
    lines = []
    for r in rows:
        if "skipped" in r:
            lines.append([r["dataset"], r["variant"], r["widths"], f"{r['dense_parameters']:,}",
                          "diverged" if r.get("diverged") else "skipped", "-", "-"])
        else:
            lines.append([r["dataset"], r["variant"], r["widths"], f"{r['parameters']:,}", f"{r['test_acc']:.2%}",
                          f"{r['seconds_per_epoch']:.1f}", f"{r['examples_per_s']:,.0f}"])
    return text_table(cols, lines, left=3)


def plot_widths(rows: list[dict], path: Path) -> None:
    """Accuracy, seconds per epoch and parameters against the hidden width W."""
    fig = new_figure((14, 4))
    axes = fig.subplots(1, 3)
    for (dataset, variant) in sorted({(r["dataset"], r["variant"]) for r in rows}):
        rs = sorted((r for r in rows if r["dataset"] == dataset and r["variant"] == variant), key=lambda r: r["W"])
        label = f"{variant} ({dataset})"
        W = [r["W"] for r in rs]
        axes[0].plot(W, [100 * r["test_acc"] for r in rs], "-o", label=label)
        axes[1].plot(W, [r["seconds_per_epoch"] for r in rs], "-o", label=label)
        axes[2].plot(W, [r["parameters"] for r in rs], "-o", label=label)
    axes[0].set(ylabel="test accuracy (%)", title="accuracy")
    axes[1].set(ylabel="seconds per epoch", yscale="log", title="time")
    axes[2].set(ylabel="parameters", yscale="log", title="parameters")
    for ax in axes:
        ax.set(xscale="log", xlabel="hidden width W")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_frontier(rows: list[dict], path: Path) -> None:
    """Test accuracy against parameters, one panel per dataset, each point named by its variant."""
    datasets = sorted({r["dataset"] for r in rows})
    fig = new_figure((6 * len(datasets), 4.5))
    axes = fig.subplots(1, len(datasets), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rs = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["parameters"])
        ax.plot([r["parameters"] for r in rs], [100 * r["test_acc"] for r in rs], ":", color="gray")
        for r in rs:
            ax.scatter(r["parameters"], 100 * r["test_acc"], s=30)
            ax.annotate(r["variant"], (r["parameters"], 100 * r["test_acc"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        ax.set(xscale="log", xlabel="parameters", ylabel="test accuracy (%)", title=dataset)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------- dftnet lm


def ratio(x: float, ref: float) -> str:
    """``x / ref`` as ``1/2.4`` below 1 and ``1.30x`` from 1 up."""
    if not (ref and x) or math.isnan(x) or math.isnan(ref):
        return "-"
    r = x / ref
    return f"1/{1 / r:.1f}" if r < 1 else f"{r:.2f}x"


def lm_table(results: list[dict]) -> str:
    """``dftnet lm``'s table: one row per variant, each value with its ratio to dense (when dense ran),
    then where a step's time goes."""
    dense = next((r for r in results if r["variant"] == "dense"), None)
    equal_s = results[0].get("equal_time_s", math.nan)
    when = f"{equal_s:.0f} s" if equal_s >= 10 else f"{equal_s:.2g} s"
    cols = ["variant", "parameters", "MLP parameters", "val bpb", f"bpb @ {when}", "tokens/s",
            "train s", "peak step memory"]

    def cell(r, key, fmt, rel=False):
        text = fmt(r[key])
        if dense is None or r is dense:
            return text
        if rel:
            return f"{text} ({100 * (r[key] / dense[key] - 1):+.1f}%)"
        return f"{text} ({ratio(r[key], dense[key])})"

    rows = [[r["variant"], cell(r, "parameters", "{:,}".format), cell(r, "mlp_parameters", "{:,}".format),
             cell(r, "val_bpb", "{:.3f}".format, rel=True), cell(r, "val_bpb_at_equal_time", "{:.3f}".format, rel=True),
             cell(r, "tokens_per_s", "{:,.0f}".format), cell(r, "seconds", "{:.1f}".format),
             cell(r, "peak_memory_bytes", format_bytes)] for r in results]
    main = text_table(cols, rows, left=1) + (
        f"\n(ratios to dense in parentheses; bpb @ {when}: validation bpb after {when} of training, the "
        "fastest variant's whole run, interpolated between evaluations)")
    timed = [r for r in results if r.get("timing")]
    if not timed:
        return main
    tcols = ["variant", "step ms", "MLP ms", "attention ms", "rest ms"]
    trows = []
    for r in timed:
        t = r["timing"]
        share = (lambda k, t=t: f"{t[k]:.1f} ({100 * t[k] / t['step_ms']:.0f}%)")
        trows.append([r["variant"], f"{t['step_ms']:.1f}", share("mlp_ms"), share("attention_ms"), share("rest_ms")])
    return main + "\n\nwhere a training step's time goes (step: forward, backward, clipping, AdamW; MLP and " \
        "attention: their forward + backward; rest: embeddings, LayerNorms, head and loss, optimizer)\n" \
        + text_table(tcols, trows, left=1)


def plot_lm(history: list[dict], path: Path) -> None:
    """Validation bits per byte against step and against training time, one line per variant."""
    fig = new_figure((11, 4))
    ax_step, ax_time = fig.subplots(1, 2, sharey=True)
    variants = list(dict.fromkeys(r["variant"] for r in history))
    for i, variant in enumerate(variants):
        rows = [r for r in history if r["variant"] == variant]
        bpb = [r["val_bpb"] for r in rows]
        color = "tab:orange" if variant == "dense" else f"C{i if i != 1 else 9}"
        ax_step.plot([r["step"] for r in rows], bpb, "-o", ms=3, color=color, label=variant)
        ax_time.plot([r["seconds"] for r in rows], bpb, "-o", ms=3, color=color, label=variant)
    ax_step.set(xlabel="step", ylabel="validation bits per byte", title="at equal steps")
    ax_time.set(xlabel="training seconds", title="at equal wall time")
    lows = [r["val_bpb"] for r in history if r["step"] > 0]
    if lows:  # the step-0 value (8 bits) would flatten the curves
        low, top = min(lows), min(max(lows), 1.6 * min(lows))
        ax_step.set_ylim(low - 0.05 * (top - low + 0.1), top + 0.05 * (top - low + 0.1))
    for ax in (ax_step, ax_time):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
