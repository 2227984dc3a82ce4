"""``dftnet lm``'s table (each variant against dense) and its validation curves."""

from __future__ import annotations

import math
from pathlib import Path

from ..tables import format_bytes, new_figure, ratio, text_table

__all__ = ["lm_table", "plot_lm"]


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
