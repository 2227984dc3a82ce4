"""``dftnet study``: does a structured MLP give a better GPT for the same compute? Equal budgets, not equal steps.

Read top to bottom:

1. **Step costs** (:func:`.cost.measure_costs`): every (variant, size) on this machine, one thread,
   interleaved round by round (median and quartiles), its peak step memory, its FLOPs for the route each
   layer takes, and the CPU's name. Written to ``costs.json`` once and reused on ``--resume``.
2. **Budgets** (:func:`steps_for`): a budget is compute, given in *dense steps* per size (``--budgets``) and
   turned into seconds with dense's measured step time there. Every variant trains ``N = budget / its own
   step time`` steps, with its warmup and cosine decay set for N. Its FLOPs (N x its FLOPs per step) are the
   second axis.
3. **Rates** (:func:`search_ks`): at every (variant, size, budget) the same search for every variant, the
   peers included: ``--rates`` rates ``--lr-step`` apart around a centre (the variant's best at the previous
   budget, or at the previous size's first budget, or ``--lr-center``), widened one rate at a time until the
   best (lowest validation bpb, seed 0) is interior. Rates are chosen on validation windows only.
4. **Seeds:** the best rate is trained again with seeds 1 .. ``--seeds``-1 (init and data order change).
   Every cell reports its bpb on the held-out *test* split (:mod:`..lm.corpus`), which no choice reads.
5. **Cells** (:mod:`.cells`) run side by side in ``--jobs`` processes of one thread each; the plan
   (:func:`plan_cells`) is a function of the finished cells, so each finished cell (a small JSON in
   ``cells/``) is a resumable unit, and ``--resume`` skips it. A cell's result depends on its settings alone.
6. **Report** (:mod:`.report`): ``study.json``, the tables and the frontier plot (test bpb against
   budget), and the compute each variant needs to reach dense's test bpb at each budget.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .. import configflags
from ..harness.writes import write_text_atomic

__all__ = ["StudyConfig", "QUICK", "Arm", "plan_cells", "search_ks", "steps_for", "cell_name", "run_study"]


@dataclass
class StudyConfig:
    sizes: tuple[int, ...] = (256, 512, 768)
    heads: tuple[int, ...] = (4, 8, 12)  # one per size
    budgets: tuple[tuple[int, ...], ...] = ((100, 400, 1600), (100, 400), (100, 400))  # dense steps, per size
    variants: tuple[str, ...] = ("dense", "dft", "block-16", "lowrank-4", "monarch-4")
    attn_variants: tuple[str, ...] = ("dft", "block-16")  # also with every projection structured, largest size
    lr_center: float = 2e-3  # the first search's centre
    lr_step: float = 2.0  # neighbouring rates differ by this factor
    rates: int = 3  # rates per search before widening (odd: centre and both sides)
    max_widen: int = 4  # at most this many rates beyond the first ones, on either side
    seeds: int = 3
    layers: int = 2
    context: int = 64
    batch_size: int = 16
    eval_windows: int = 256  # validation windows: every choice
    test_windows: int = 512  # test windows: every reported bpb
    limit: int | None = None  # bytes per corpus stream (tests)
    jobs: int = 2
    timing_rounds: int = 7

    def __post_init__(self):
        self.sizes, self.heads = tuple(int(s) for s in self.sizes), tuple(int(h) for h in self.heads)
        self.budgets = tuple(tuple(int(b) for b in bs) for bs in self.budgets)
        self.variants, self.attn_variants = tuple(self.variants), tuple(self.attn_variants)
        if len(self.heads) != len(self.sizes):
            raise ValueError(f"--heads needs one count per size: {len(self.sizes)} sizes, {len(self.heads)} counts")
        if len(self.budgets) != len(self.sizes) or not all(self.budgets):
            raise ValueError(f"--budgets needs a non-empty list per size: {len(self.sizes)} sizes, "
                             f"{len(self.budgets)} lists")
        if any(list(bs) != sorted(set(bs)) for bs in self.budgets):
            raise ValueError("--budgets: each size's budgets must be increasing")
        if "dense" not in self.variants:
            raise ValueError("--variants must include dense: every budget is counted in dense's steps")
        unknown = set(self.attn_variants) - set(self.variants)
        if unknown:
            raise ValueError(f"--attn-variants names variants that are not in --variants: {', '.join(sorted(unknown))}")
        if self.rates < 1 or self.rates % 2 == 0:
            raise ValueError(f"--rates must be odd and positive (a centre and both sides), got {self.rates}")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {self.seeds}")
        for arm in self.arms():
            for d, h in zip(self.sizes, self.heads):
                self.lm(arm, d, h, self.lr_center, 0, 1)  # ValueError for unknown variants and bad shapes

    def arms(self) -> list[Arm]:
        """Every (variant, structure) compared: each variant with structured MLPs, and the
        ``attn_variants`` with attention's projections structured too (at the largest size only)."""
        return [Arm(v, "mlp") for v in self.variants] + [Arm(v, "mlp+attn") for v in self.attn_variants]

    def sizes_of(self, arm: Arm) -> tuple[int, ...]:
        return self.sizes if arm.structure == "mlp" else self.sizes[-1:]

    def lm(self, arm: Arm, d_model: int, heads: int, lr: float, seed: int, steps: int):
        """The ``dftnet lm`` configuration of one cell (its schedule set for ``steps``)."""
        from ..lm.config import LMConfig

        return LMConfig(variants=(arm.variant,), d_model=d_model, heads=heads, layers=self.layers,
                        context=self.context, batch_size=self.batch_size, max_steps=steps, lr=lr,
                        seed=seed, limit=self.limit, quiet=True, device="cpu", structure=arm.structure,
                        eval_windows=self.eval_windows)


QUICK = dict(sizes=(32, 64), heads=(2, 4), budgets=((20, 80), (20, 80)),
             variants=("dense", "dft", "block-16", "lowrank-4", "monarch-4"), attn_variants=("dft",),
             rates=3, max_widen=2, seeds=2, layers=1, context=32, batch_size=8, eval_windows=32,
             test_windows=32, timing_rounds=3)

# what a finished cell's result depends on besides its name: --resume refuses a change of these
CELL_KEYS = ("layers", "context", "batch_size", "eval_windows", "test_windows", "limit", "lr_center", "lr_step")


@dataclass(frozen=True)
class Arm:
    variant: str
    structure: str = "mlp"

    @property
    def label(self) -> str:
        return self.variant if self.structure == "mlp" else f"{self.variant} (+attn)"

    @property
    def key(self) -> str:
        return self.variant if self.structure == "mlp" else f"{self.variant}+attn"


def cost_key(arm: Arm, d_model: int) -> str:
    return f"{arm.key}@d{d_model}"


def cell_name(cell: dict) -> str:
    return (f"d{cell['d_model']}-{cell['arm'].replace('@', 'x')}-b{cell['budget']}-n{cell['steps']}"
            f"-lr{cell['lr']:.4g}-s{cell['seed']}")


# ------------------------------------------------------------------------- budgets and rates


def steps_for(costs: dict, arm: Arm, d_model: int, budget: int) -> int:
    """Steps of ``arm`` at ``d_model`` in ``budget`` dense steps' time: budget x dense's step time / its own."""
    seconds = budget * costs[cost_key(Arm("dense"), d_model)]["seconds"]
    return max(1, round(seconds / costs[cost_key(arm, d_model)]["seconds"]))


def search_ks(center: int, rates: int, max_widen: int, done: dict[int, float]) -> tuple[list[int], int | None]:
    """The rate exponents to try (``lr = lr_center * lr_step**k``) around ``center``, given the finished
    ones' validation bpb (``done``): the first ``rates``, then one more beyond the best while the best
    is at an edge (at most ``max_widen`` beyond the first ones). Returns ``(ks, best)``, ``best`` None
    until the search is settled."""
    half = rates // 2
    ks = list(range(center - half, center + half + 1))
    while all(k in done for k in ks):
        best = min(ks, key=lambda k: (done[k], k))
        if best == ks[0] and ks[0] > center - half - max_widen:
            ks.insert(0, ks[0] - 1)
        elif best == ks[-1] and ks[-1] < center + half + max_widen:
            ks.append(ks[-1] + 1)
        else:
            return ks, best
    return ks, None


def plan_cells(cfg: StudyConfig, costs: dict, results: list[dict]) -> list[dict]:
    """Every cell the finished ``results`` make known: for each arm, size and budget in order, its rate
    search (centred on the previous budget's best, or the previous size's first best) and, once that is
    settled, the other seeds at its best rate. Cells are dicts; the plan grows as results come in."""
    val = {(r["arm"], r["d_model"], r["budget"], r["k"], r["seed"]): r["val_bpb"] for r in results}
    best: dict[tuple[str, int, int], int] = {}
    cells = []
    for arm in cfg.arms():
        sizes = cfg.sizes_of(arm)
        for d in sizes:
            heads = cfg.heads[cfg.sizes.index(d)]
            for i, budget in enumerate(cfg.budgets[cfg.sizes.index(d)]):
                if i > 0:
                    center = best.get((arm.key, d, cfg.budgets[cfg.sizes.index(d)][i - 1]))
                elif d != sizes[0]:
                    smaller = sizes[sizes.index(d) - 1]
                    center = best.get((arm.key, smaller, cfg.budgets[cfg.sizes.index(smaller)][0]))
                elif arm.structure != "mlp":
                    center = best.get((arm.variant, d, budget))
                else:
                    center = 0
                if center is None:
                    break
                steps = steps_for(costs, arm, d, budget)
                done = {k: v for (a, dd, b, k, s), v in val.items() if (a, dd, b, s) == (arm.key, d, budget, 0)}
                ks, k_best = search_ks(center, cfg.rates, cfg.max_widen, done)
                seeds = [(k, 0, "search") for k in ks]
                if k_best is not None:
                    best[(arm.key, d, budget)] = k_best
                    seeds += [(k_best, s, "seed") for s in range(1, cfg.seeds)]
                cells += [{"phase": phase, "arm": arm.key, "variant": arm.variant, "structure": arm.structure,
                           "d_model": d, "heads": heads, "budget": budget, "steps": steps, "k": k,
                           "lr": cfg.lr_center * cfg.lr_step ** k, "seed": s} for k, s, phase in seeds]
                if k_best is None:
                    break
    return cells


# ------------------------------------------------------------------------- the command


def config_dict(cfg: StudyConfig) -> dict:
    from ..harness.reproduce import environment

    return configflags.config_dict(cfg) | {"cpu_count": os.cpu_count(), **environment()}


def run_study(cfg: StudyConfig, out: Path, remeasure: tuple[str, ...] = (), log=print) -> dict:
    """Measure step costs (or reuse ``costs.json``; time the configurations it lacks, or the ``remeasure``
    variants, again beside dense), train every cell the plan asks for (skipping finished ones), write
    ``study.json``; return it."""
    from .cells import run_plan
    from .cost import measure_costs, rescale_to

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.json", json.dumps({"command": "study", **config_dict(cfg)}, indent=2) + "\n")
    cost_file = out / "costs.json"
    configs = [(arm, d, cfg.heads[cfg.sizes.index(d)]) for arm in cfg.arms() for d in cfg.sizes_of(arm)]
    costs = json.loads(cost_file.read_text()) if cost_file.exists() else {}
    todo = [c for c in configs
            if cost_key(c[0], c[1]) not in costs or c[0].key in remeasure or c[0].variant in remeasure]
    if todo and not costs:
        log("step costs (one thread, interleaved)")
        costs = measure_costs(cfg, configs, log)
        write_text_atomic(cost_file, json.dumps(costs, indent=1) + "\n")
    elif todo:  # timed beside dense again, in the recorded dense's scale
        log("step costs of " + ", ".join(sorted({c[0].key for c in todo})) + " (one thread, beside dense)")
        anchors = [(Arm("dense"), d, h) for d, h in sorted({(c[1], c[2]) for c in todo})]
        costs.update(rescale_to(costs, measure_costs(cfg, anchors + [c for c in todo if c[0].key != "dense"], log)))
        write_text_atomic(cost_file, json.dumps(costs, indent=1) + "\n")
    results = run_plan(cfg, lambda done: plan_cells(cfg, costs, done), out / "cells", log)
    study = assemble(cfg, costs, results)
    write_text_atomic(out / "study.json", json.dumps(study) + "\n")
    return study


def assemble(cfg: StudyConfig | dict, costs: dict, results: list[dict]) -> dict:
    """``study.json``: the configuration, the step costs and the cells of the current plan."""
    config = cfg if isinstance(cfg, dict) else config_dict(cfg)
    keep = {cell_name(c) for c in plan_cells(_config_of(config), costs, results)}
    return {"config": config, "costs": costs,
            "cells": sorted((r for r in results if cell_name(r) in keep), key=cell_name)}


def _config_of(config: dict) -> StudyConfig:
    fields = StudyConfig.__dataclass_fields__
    return StudyConfig(**{k: v for k, v in config.items() if k in fields})


def load_folder(folder: Path) -> dict:
    """A study folder (``config.json``, ``costs.json``, ``cells/``), finished or not, as ``study.json``."""
    config = json.loads((folder / "config.json").read_text())
    config.pop("command", None)
    costs = json.loads((folder / "costs.json").read_text())
    results = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]
    return assemble(config, costs, results)
