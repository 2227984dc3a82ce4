"""The study's results from its compact file ``study.json``: tables, ratios to dense, the frontier plot.

Everything here reads ``study.json`` alone (curves, learning rates, step costs), so the committed copy of
that file redraws the published plot and tables: ``dftnet study --report docs/results/lm_study.json``.
"""

from __future__ import annotations

import math
from pathlib import Path

from .frontier import compute_to_reach, lower_envelope, to_compute
from .reports import format_bytes, new_figure
from .study_cost import config_key

__all__ = ["grid_rows", "transfer_rows", "report_text", "plot_study"]


def _final_cells(study: dict) -> list[dict]:
    """The cell each (variant, size) is judged by: its lowest final bpb over the rates tried at that size
    (all of ``--lrs`` at the smallest size, the transfer rates at the largest, the small size's best
    elsewhere), so every variant is compared at its own best measured rate."""
    keep = {}
    for c in study["cells"]:
        key = (c["variant"], c["d_model"])
        if key not in keep or c["final_bpb"] < keep[key]["final_bpb"]:
            keep[key] = c
    return [keep[k] for k in sorted(keep, key=lambda k: (k[1], study["config"]["variants"].index(k[0])))]


def _curves(study: dict, axis: str) -> dict[tuple[str, int], list]:
    """(variant, d) -> (compute, bpb) curve; axis "seconds" (measured) or "flops" (the model)."""
    return {(c["variant"], c["d_model"]): to_compute(c["curve"], study["costs"][config_key(c["variant"], c["d_model"])][axis])
            for c in _final_cells(study)}


def grid_rows(study: dict) -> list[dict]:
    """One row per (size, variant): final bpb, costs, and the compute to reach dense's final bpb at that
    size as a ratio to dense's compute there, from the variant's own size (``same``) and from the
    variant's envelope over all sizes (``any``), in measured time and in FLOPs."""
    cells = _final_cells(study)
    dense = {c["d_model"]: c for c in cells if c["variant"] == "dense"}
    rows = []
    for c in cells:
        cost = study["costs"][config_key(c["variant"], c["d_model"])]
        dcost = study["costs"][config_key("dense", c["d_model"])]
        target = dense[c["d_model"]]["final_bpb"]
        row = {"variant": c["variant"], "d_model": c["d_model"], "lr": c["lr"], "final_bpb": c["final_bpb"],
               "bpb_vs_dense": c["final_bpb"] / target - 1, "parameters": c["parameters"],
               "mlp_parameters": c["mlp_parameters"], "step_s": cost["seconds"],
               "step_s_spread": [cost["seconds_q1"], cost["seconds_q3"]], "step_flops": cost["flops"],
               "peak_memory_bytes": cost["peak_memory_bytes"],
               "memory_vs_dense": cost["peak_memory_bytes"] / dcost["peak_memory_bytes"]}
        for axis in ("seconds", "flops"):
            curves = _curves(study, axis)
            dense_total = curves[("dense", c["d_model"])][-1][0]
            same = compute_to_reach(curves[(c["variant"], c["d_model"])], target)
            env = lower_envelope(v for (name, _), v in curves.items() if name == c["variant"])
            anyd = compute_to_reach(env, target)
            row[f"reach_{axis}_same"] = same / dense_total
            row[f"reach_{axis}_any"] = anyd / dense_total
        rows.append(row)
    return rows


def transfer_rows(study: dict) -> list[dict]:
    """At the largest size, each transfer variant's final bpb at x1/2, x1 and x2 its small-size best rate."""
    large, best = max(study["config"]["sizes"]), study["best_lrs"]
    rows = []
    for v in study["config"]["transfer"]:
        got = {c["lr"] / best[v]: c["final_bpb"] for c in study["cells"]
               if c["variant"] == v and c["d_model"] == large and c["phase"] in ("lr", "grid", "transfer")}
        if got:
            factor = min(got, key=got.get)
            rows.append({"variant": v, "small_best_lr": best[v], "bpb_by_factor": {f"{k:g}": got[k] for k in sorted(got)},
                         "large_best_lr": best[v] * factor, "within_2x": 0.5 - 1e-9 <= factor <= 2 + 1e-9})
    return rows


def _ratio(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:.2f}×"


def report_text(study: dict) -> str:
    """The tables of the study, as Markdown."""
    cfg = study["config"]
    lines = [f"Sizes {cfg['sizes']}, {cfg['layers']} layers, context {cfg['context']}, batch {cfg['batch_size']}, "
             f"{cfg['steps']} steps; validation on {cfg['eval_windows']} windows; step time: 1 thread, median of "
             f"{cfg['timing_rounds']} interleaved rounds.", ""]
    head = ["d", "variant", "lr", "val bpb", "vs dense", "MLP params", "step ms (IQR)", "GFLOP/step", "peak mem",
            "mem vs dense", "time to dense bpb", "(any size)", "FLOPs to dense bpb", "(any size)"]
    body = [[str(r["d_model"]), r["variant"], f"{r['lr']:g}", f"{r['final_bpb']:.3f}", f"{100 * r['bpb_vs_dense']:+.1f}%",
             f"{r['mlp_parameters']:,}", f"{1e3 * r['step_s']:.0f} ({1e3 * r['step_s_spread'][0]:.0f}–{1e3 * r['step_s_spread'][1]:.0f})",
             f"{r['step_flops'] / 1e9:.2f}", format_bytes(r["peak_memory_bytes"]), f"{r['memory_vs_dense']:.2f}×",
             _ratio(r["reach_seconds_same"]), _ratio(r["reach_seconds_any"]), _ratio(r["reach_flops_same"]),
             _ratio(r["reach_flops_any"])] for r in grid_rows(study)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(b) + " |" for b in body]
    lines += ["", "Learning rates (best final bpb at the smallest size): "
              + ", ".join(f"{v} {lr:g}" for v, lr in study["best_lrs"].items()), ""]
    tr = transfer_rows(study)
    if tr:
        lines += ["| variant | best lr, smallest size | bpb at the largest size, by rate (× that best) | best lr, largest size | within 2× |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['small_best_lr']:g} | "
                  + ", ".join(f"×{float(f):g}: {b:.3f}" for f, b in r["bpb_by_factor"].items())
                  + f" | {r['large_best_lr']:g} | {'yes' if r['within_2x'] else 'no'} |" for r in tr]
    return "\n".join(lines) + "\n"


def plot_study(study: dict, path: Path) -> None:
    """Validation bpb against training compute (log x): measured seconds and model FLOPs, one thin line per
    variant and size, and each variant's lower envelope over sizes."""
    fig = new_figure((13, 5))
    axes = fig.subplots(1, 2)
    variants = study["config"]["variants"]
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    for ax, axis, label in zip(axes, ("seconds", "flops"), ("training time on 1 thread (s)", "training FLOPs")):
        curves = _curves(study, axis)
        for (v, d), curve in curves.items():
            pts = [p for p in curve if p[0] > 0]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[v], lw=0.7, alpha=0.45)
        for v in variants:
            env = [p for p in lower_envelope(c for (name, _), c in curves.items() if name == v) if p[0] > 0]
            ax.step([p[0] for p in env], [p[1] for p in env], where="post", color=colors[v], lw=2,
                    ls="-" if v == "dense" else "--", label=v)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation bits per byte")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Compute frontier: thin lines one run per size, thick lines each variant's lower envelope")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
