"""``dftnet train``'s side-by-side table and curves, and ``dftnet sweep``'s table and its width and
accuracy/parameter plots."""

from __future__ import annotations

from pathlib import Path

from ..tables import format_bytes, new_figure, text_table

__all__ = ["train_table", "plot_curves", "sweep_table", "plot_widths", "plot_accuracy_frontier"]


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


def plot_accuracy_frontier(rows: list[dict], path: Path) -> None:
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
