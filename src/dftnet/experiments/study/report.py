"""The study's results from ``study.json`` alone: the tables, the compute to reach dense, the frontier plot.

Per (size, budget, arm) the row is its best rate's cells: the rate chosen on validation (seed 0), the test
bpb of every seed (mean, and the half-range as the spread), and the verdict against dense at the same
budget: *better* or *worse* only when the seeds' ranges do not overlap, else *within spread*. The compute
to reach dense's test bpb at a budget is read from the arm's results over budgets at that size
(:func:`.frontier.budget_to_reach`), as a ratio to that budget, in measured seconds and in FLOPs.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean

from ..tables import new_figure
from .frontier import budget_to_reach

__all__ = ["arm_rows", "report_text", "headline_text", "answer_text", "plot_study"]

PEERS = ("lowrank", "monarch")  # the structures DFTnet is compared with, not its own
TARGET_TIME, TARGET_MEMORY = 0.6, 1.0  # the frontier target: dense's bpb in this much of its time and memory


def _arms(study: dict) -> list[str]:
    cfg = study["config"]
    return list(cfg["variants"]) + [f"{v}+attn" for v in cfg["attn_variants"]]


def _label(arm: str) -> str:
    return arm.replace("+attn", " (+attn)")


def arm_rows(study: dict) -> list[dict]:
    """One row per (size, budget, arm) whose rate search is settled (its best rate interior, or the search
    at its widest): its best rate's seeds and costs."""
    cfg, costs, cells = study["config"], study["costs"], study["cells"]
    rows = []
    for d, budgets in zip(cfg["sizes"], cfg["budgets"]):
        dense_cost = costs[f"dense@d{d}"]
        for budget in budgets:
            for arm in _arms(study):
                search = [c for c in cells if (c["arm"], c["d_model"], c["budget"], c["seed"]) == (arm, d, budget, 0)
                          and c["phase"] == "search"]
                if not search:
                    continue
                best = min(search, key=lambda c: (c["val_bpb"], c["k"]))
                tried = {c["k"] for c in search}
                interior = {best["k"] - 1, best["k"] + 1} <= tried
                if not interior and len(tried) < cfg.get("rates", 3) + cfg.get("max_widen", 4):
                    continue  # the rate search is still widening: no row yet
                seeds = sorted((c for c in cells if (c["arm"], c["d_model"], c["budget"], c["k"]) ==
                                (arm, d, budget, best["k"])), key=lambda c: c["seed"])
                tests = [c["test_bpb"] for c in seeds]
                cost = costs[f"{arm}@d{d}"]
                routes = sorted(set(best["routes"].values()))
                rows.append({
                    "d_model": d, "budget": budget, "arm": arm, "steps": best["steps"], "lr": best["lr"],
                    "rates_tried": sorted(c["lr"] for c in search), "seeds": len(tests), "test_bpb": tests,
                    "mean": mean(tests), "lo": min(tests), "hi": max(tests), "val_bpb": best["val_bpb"],
                    "budget_s": budget * dense_cost["seconds"], "seconds": best["steps"] * cost["seconds"],
                    "flops": best["steps"] * cost["flops"], "flops_vs_dense": best["steps"] * cost["flops"] /
                    (budget * dense_cost["flops"]), "step_s": cost["seconds"],
                    "step_vs_dense": cost["seconds"] / dense_cost["seconds"],
                    "memory_vs_dense": cost["peak_memory_bytes"] / dense_cost["peak_memory_bytes"],
                    "peak_memory_bytes": cost["peak_memory_bytes"], "routes": routes,
                    "mlp_parameters": best["mlp_parameters"]})
    _against_dense(rows)
    return rows


def _against_dense(rows: list[dict]) -> None:
    dense = {(r["d_model"], r["budget"]): r for r in rows if r["arm"] == "dense"}
    by_arm = {}
    for r in rows:
        by_arm.setdefault((r["arm"], r["d_model"]), []).append(r)
    for r in rows:
        ref = dense.get((r["d_model"], r["budget"]))
        r["vs_dense"] = r["mean"] / ref["mean"] - 1 if ref else math.nan
        if ref is None or r["arm"] == "dense":
            r["verdict"] = "–"
        elif min(r["seeds"], ref["seeds"]) < 2:
            r["verdict"] = "1 seed"
        else:
            r["verdict"] = "better" if r["hi"] < ref["lo"] else "worse" if r["lo"] > ref["hi"] else "within spread"
        r["reach_seconds"] = r["reach_flops"] = None
        if ref is not None and r["arm"] != "dense":
            own = by_arm[(r["arm"], r["d_model"])]
            for axis in ("seconds", "flops"):
                reach = budget_to_reach([(o[axis], o["mean"]) for o in own], ref["mean"])
                r[f"reach_{axis}"] = _ratio(reach, ref[axis])


def _ratio(reach: tuple[str, float], reference: float) -> list:
    return [reach[0], reach[1] / reference]


def _fmt_reach(reach) -> str:
    if reach is None:
        return "–"
    sign, x = reach
    return f"{'' if sign == '=' else sign}{x:.2f}×"


def _seconds(r: dict) -> str:
    return f"{r['budget_s']:.{0 if r['budget_s'] >= 10 else 1}f} s"


def _fmt_bpb(r: dict) -> str:
    return f"{r['mean']:.3f} ± {(r['hi'] - r['lo']) / 2:.3f}" if r["seeds"] > 1 else f"{r['mean']:.3f}"


def _route(r: dict) -> str:
    return "dense route" if r["routes"] == ["dense"] else "/".join(r["routes"])


def _table(rows: list[dict], full: bool) -> list[str]:
    head = ["d", "budget", "variant", "steps", "lr", "test bpb (seeds)", "vs dense", "verdict",
            "time to dense's bpb", "FLOPs to dense's bpb"]
    head += ["step time vs dense", "FLOPs vs dense", "peak mem vs dense", "route", "MLP params",
             "rates tried"] if full else []
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cols = [str(r["d_model"]), f"{r['budget']} dense steps ({_seconds(r)})", _label(r["arm"]),
                f"{r['steps']:,}", f"{r['lr']:.3g}", f"{_fmt_bpb(r)} ({r['seeds']})",
                "–" if r["arm"] == "dense" else f"{100 * r['vs_dense']:+.1f}%", r["verdict"],
                _fmt_reach(r["reach_seconds"]), _fmt_reach(r["reach_flops"])]
        if full:
            ratios = [f"{r[k]:.2f}×" for k in ("step_vs_dense", "flops_vs_dense", "memory_vs_dense")]
            cols += ratios + [_route(r), f"{r['mlp_parameters']:,}", ", ".join(f"{x:.3g}" for x in r["rates_tried"])]
        out.append("| " + " | ".join(cols) + " |")
    return out


def _preamble(study: dict) -> list[str]:
    cfg, machine = study["config"], study["costs"].get("machine", {})
    return [f"{cfg['layers']} layers, context {cfg['context']}, batch {cfg['batch_size']}; budgets in dense's steps "
            f"at each size, as seconds of 1-thread training on {machine.get('cpu', 'this machine')} (torch "
            f"{machine.get('torch', '?')}); each variant trains budget / its own step time steps. Test bpb on "
            f"{cfg['test_windows']} held-out windows, mean ± half-range over seeds; rates chosen on "
            f"{cfg['eval_windows']} validation windows (seed 0). 'Time/FLOPs to dense's bpb': the budget at which "
            "the variant reaches dense's mean test bpb at that budget, interpolated in log budget between the "
            "budgets trained, as a ratio to it (≤: already at the smallest budget; >: not within the largest)."]


def report_text(study: dict) -> str:
    """Every settled row, with costs, routes and the rates tried, as Markdown."""
    rows = arm_rows(study)
    return "\n".join(_preamble(study) + [""] + _table(rows, full=True)) + "\n"


def headline_text(study: dict) -> str:
    """The README's table: the largest size with a finished comparison (dense and another variant with
    every seed at one budget), every such budget's finished rows."""
    seeds = study["config"]["seeds"]
    rows = [r for r in arm_rows(study) if r["seeds"] == seeds]
    compared = {(r["d_model"], r["budget"]) for r in rows if r["arm"] != "dense"} & \
        {(r["d_model"], r["budget"]) for r in rows if r["arm"] == "dense"}
    if not compared:
        return "(no finished comparison yet)\n"
    largest = max(d for d, _ in compared)
    return "\n".join(_table([r for r in rows if (r["d_model"], r["budget"]) in compared and r["d_model"] == largest],
                            full=False)) + "\n"


def _budget_label(r: dict) -> str:
    return f"{r['budget']:,} dense steps ({_seconds(r)})"


def _is_dftnet(arm: str) -> bool:
    return arm != "dense" and not arm.startswith(PEERS)


def answer_text(study: dict) -> str:
    """The README's answer, in words, from the finished rows (every seed): per size and budget the variant
    with the lowest test bpb and each variant's verdict against dense; per size where dense overtakes each
    structured variant; and the frontier target (dense's bpb in <= 0.6x its time, <= 1.0x its peak memory)
    at the largest size and budget with a finished comparison, with its trend over the budgets."""
    cfg = study["config"]
    rows = [r for r in arm_rows(study) if r["seeds"] == cfg["seeds"]]
    at = {(r["d_model"], r["budget"], r["arm"]): r for r in rows}
    out, finished = [], []
    for d, budgets in zip(cfg["sizes"], cfg["budgets"]):
        parts, verdicts = [], {}
        for budget in budgets:
            here = sorted((r for r in rows if (r["d_model"], r["budget"]) == (d, budget)), key=lambda r: r["mean"])
            if (d, budget, "dense") not in at or len(here) < 2:
                parts.append(f"at {budget:,} dense steps the comparison is not finished")
                continue
            finished.append((d, budget))
            best = here[0]
            lead = ("dense has the lowest test bpb" if best["arm"] == "dense" else
                    f"{_label(best['arm'])} has the lowest, {-100 * best['vs_dense']:.1f}% below dense")
            groups = {}
            for r in here:
                if r["arm"] != "dense":
                    groups.setdefault(r["verdict"], []).append(_label(r["arm"]))
                    verdicts.setdefault(r["arm"], []).append((budget, r["verdict"]))
            rest = "; ".join(f"{v}: {', '.join(a)}" for v, a in sorted(groups.items()))
            # the (+attn) arms run at the largest size only
            missing = [_label(a) for a in _arms(study) if (d, budget, a) not in at and ("+" not in a
                                                                                  or d == cfg["sizes"][-1])]
            rest += f"; not finished: {', '.join(missing)}" if missing else ""
            parts.append(f"at {_budget_label(at[(d, budget, 'dense')])} {lead} ({rest})")
        overtakes = [_overtake(_label(a), v) for a, v in verdicts.items()]
        text = "; ".join(parts)
        out.append(f"- **d = {d}.** " + text[:1].upper() + text[1:] + "." +
                   (f" Against dense over the budgets: {'; '.join(overtakes)}." if overtakes else ""))
    out += _target_lines(rows, finished)
    hours = sum(c.get("wall_s", 0.0) for c in study["cells"]) / 3600
    out.append(f"- **Progress:** {len(study['cells'])} cells trained, {hours:.1f} hours of 1-thread training "
               f"(two cells run side by side on 2 cores).")
    return "\n".join(out) + "\n"


def _overtake(arm: str, verdicts: list[tuple[int, str]]) -> str:
    """Where dense overtakes ``arm``, from its verdicts at increasing budgets."""
    seq = ", ".join(f"{v} at {b:,}" for b, v in verdicts)
    ahead = [b for b, v in verdicts if v == "better"]
    if verdicts and all(v == "better" for _, v in verdicts):
        return f"{arm} {seq}: dense does not overtake it in the range measured"
    if ahead and ahead[-1] != verdicts[-1][0]:
        after = [b for b, _ in verdicts if b > ahead[-1]][0]
        return f"{arm} {seq}: dense catches up between {ahead[-1]:,} and {after:,} dense steps"
    level = [b for b, v in verdicts if v != "worse"]
    if level and level[-1] != verdicts[-1][0]:
        after = [b for b, _ in verdicts if b > level[-1]][0]
        return f"{arm} {seq}: dense pulls ahead again between {level[-1]:,} and {after:,} dense steps"
    return f"{arm} {seq}"


def _target_lines(rows: list[dict], finished: list[tuple[int, int]]) -> list[str]:
    if not finished:
        return ["- No comparison has every seed yet."]
    d = max(s for s, _ in finished)
    budgets = sorted(b for s, b in finished if s == d)
    at = {(r["budget"], r["arm"]): r for r in rows if r["d_model"] == d}
    top = budgets[-1]
    ours = [r for (b, a), r in at.items() if b == top and _is_dftnet(a)]
    if not ours:
        return [f"- **Target** at d = {d}: no DFTnet variant has every seed at {top:,} dense steps yet."]
    # a ratio interpolated between budgets first, then an upper bound (lowest bpb first), then a lower bound
    best = min(ours, key=lambda r: ({"=": 0, "<=": 1, ">": 2}[r["reach_seconds"][0]],
                                    r["mean"] if r["reach_seconds"][0] == "<=" else r["reach_seconds"][1]))
    sign, ratio = best["reach_seconds"]
    met_time = ("met" if ratio <= TARGET_TIME and sign != ">" else
                "not determined: no smaller budget was trained" if sign == "<=" else "missed")
    met_mem = "met" if best["memory_vs_dense"] <= TARGET_MEMORY else "missed"
    bound = {"<=": " (below dense's bpb already at its smallest budget: an upper bound)",
             ">": " (not reached within the largest budget trained: a lower bound)"}.get(sign, "")
    trend = "; ".join(
        f"{_label(a)}: " + ", ".join(f"{_fmt_reach(at[(b, a)]['reach_seconds'])} at {b:,}" for b in budgets
                                     if (b, a) in at)
        for a in sorted({a for (_, a) in at if a != "dense"}, key=lambda a: (not _is_dftnet(a), a)))
    return [f"- **Target** (the largest size and budget with every seed, d = {d}, {_budget_label(best)}): "
            f"{_label(best['arm'])} reaches dense's test bpb in {_fmt_reach(best['reach_seconds'])} dense's "
            f"time{bound} (target ≤ {TARGET_TIME}×: {met_time}) with {best['memory_vs_dense']:.2f}× its peak "
            f"step memory (target ≤ {TARGET_MEMORY}×: {met_mem}).",
            f"- **Trend** at d = {d}, time to dense's test bpb as a fraction of dense's, by budget in dense "
            f"steps (DFTnet's variants, then the peers): {trend}."]


def plot_study(study: dict, path: Path) -> None:
    """Test bpb against the budget (seconds, log x), one panel per size, one line per variant (seed mean,
    bars from the lowest to the highest seed)."""
    rows = arm_rows(study)
    sizes = sorted({r["d_model"] for r in rows}) or study["config"]["sizes"][:1]
    fig = new_figure((4.5 * len(sizes), 4))
    axes = fig.subplots(1, len(sizes), squeeze=False)[0]
    colors = {a: f"C{i % 10}" for i, a in enumerate(_arms(study))}
    for ax, d in zip(axes, sizes):
        for arm in _arms(study):
            pts = sorted((r["budget_s"], r["mean"], r["lo"], r["hi"]) for r in rows
                         if (r["arm"], r["d_model"]) == (arm, d))
            if pts:
                x, y = [p[0] for p in pts], [p[1] for p in pts]
                ax.errorbar(x, y, yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]], color=colors[arm],
                            marker="o", ms=3, lw=2 if arm == "dense" else 1.2, capsize=2, label=_label(arm))
        ax.set_xscale("log")
        ax.set_xlabel("budget: seconds of 1-thread training")
        ax.set_ylabel("test bits per byte")
        ax.set_title(f"d = {d}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Equal compute: each variant trained for the budget with its own step count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
