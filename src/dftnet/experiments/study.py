"""``dftnet study``: does a structured MLP give a better GPT for the same compute? A compute-matched grid.

Read top to bottom:

1. **Learning rates** (:func:`plan_cells`): every variant at the smallest size, at every ``--lrs`` rate.
   Each variant's best rate there (lowest final validation bpb) is its rate from then on.
2. **The grid:** every size x variant at the variant's own rate, and at every larger size also at half
   that rate; at the largest size the ``--transfer`` variants at 1/8, 1/4 and twice it too, and then
   lower (:func:`descend_cells`) until their best rate there is not the lowest tried: is the small
   size's best still best? A variant is then judged, at each size, at its best measured rate.
3. **Cells** (:func:`train_cell`) run side by side in ``--jobs`` processes of one thread each. A cell's
   curve (validation bpb every ``--eval-every`` steps) depends on its step alone: the batches come from
   (seed, step), the model from the seed. Each finished cell is written to ``cells/<name>.json``, so
   ``--resume`` skips it.
4. **Step cost** (:func:`.study_cost.measure_costs`): one timing pass, one thread, all configurations
   interleaved round by round (median and quartiles of the rounds), the peak step memory, and FLOPs per
   step from :mod:`.flops`. Compute is steps x the cost of a step.
5. **Report** (:mod:`.study_report`): ``study.json`` (the compact results: curves, costs), the frontier
   plot, the table, and the compute each variant needs to reach dense's final bpb, as a ratio to dense.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from .writes import write_text_atomic

__all__ = ["StudyConfig", "QUICK", "plan_cells", "descend_cells", "train_cell", "run_cells", "best_lrs", "cell_name"]


@dataclass
class StudyConfig:
    sizes: tuple[int, ...] = (128, 256, 512)
    heads: tuple[int, ...] = (4, 4, 8)  # one per size
    variants: tuple[str, ...] = ("dense", "block-4", "block-16", "block-64", "dft", "dft@16", "block-16@16",
                                 "lowrank-4", "monarch-4")
    lrs: tuple[float, ...] = (2e-3, 4e-3, 8e-3)  # swept at the smallest size
    transfer: tuple[str, ...] = ("dense", "dft", "block-16")  # also x1/8, x1/4, x2 at the largest size
    layers: int = 2
    context: int = 64
    batch_size: int = 16
    steps: int = 400
    eval_every: int = 50
    eval_windows: int = 256
    seed: int = 0
    limit: int | None = None  # bytes per corpus stream (tests)
    jobs: int = 2
    timing_rounds: int = 5

    def __post_init__(self):
        self.sizes, self.heads = tuple(int(s) for s in self.sizes), tuple(int(h) for h in self.heads)
        self.variants, self.transfer = tuple(self.variants), tuple(self.transfer)
        self.lrs = tuple(float(x) for x in self.lrs)
        if len(self.heads) != len(self.sizes):
            raise ValueError(f"--heads needs one count per size: {len(self.sizes)} sizes, {len(self.heads)} counts")
        if "dense" not in self.variants:
            raise ValueError("--variants must include dense: every ratio is to dense")
        unknown = set(self.transfer) - set(self.variants)
        if unknown:
            raise ValueError(f"--transfer names variants that are not in --variants: {', '.join(sorted(unknown))}")
        if not self.lrs:
            raise ValueError("--lrs: no learning rate given")
        for d, h in zip(self.sizes, self.heads):
            for v in self.variants:
                self.lm(v, d, h, self.lrs[0])  # ValueError for unknown variants and bad shapes

    def lm(self, variant: str, d_model: int, heads: int, lr: float):
        """The ``dftnet lm`` configuration of one cell."""
        from .lm import LMConfig

        return LMConfig(variants=(variant,), d_model=d_model, heads=heads, layers=self.layers,
                        context=self.context, batch_size=self.batch_size, max_steps=self.steps, lr=lr,
                        eval_every=self.eval_every, eval_windows=self.eval_windows, seed=self.seed,
                        limit=self.limit, quiet=True, device="cpu")


QUICK = dict(sizes=(32, 64), heads=(2, 4), variants=("dense", "block-16", "dft", "lowrank-4", "monarch-4"),
             lrs=(2e-3, 8e-3), transfer=("dense", "dft"), layers=1, context=32, batch_size=8, steps=30,
             eval_every=10, eval_windows=16, timing_rounds=3)


# what a finished cell's curve depends on besides its name: --resume refuses a change of these
CELL_KEYS = ("layers", "context", "batch_size", "steps", "eval_every", "eval_windows", "seed", "limit")


def cell_name(cell: dict) -> str:
    return f"d{cell['d_model']}-{cell['variant'].replace('@', 'x')}-lr{cell['lr']:g}"


# ------------------------------------------------------------------------- 1-2. which cells


def plan_cells(cfg: StudyConfig, best: dict[str, float] | None = None) -> list[dict]:
    """The learning-rate cells (``best`` is None), or the grid and transfer cells given each variant's
    best rate. Cells are dicts: phase, variant, d_model, heads, lr."""
    small, large = cfg.sizes[0], cfg.sizes[-1]
    heads = dict(zip(cfg.sizes, cfg.heads))
    if best is None:
        return [{"phase": "lr", "variant": v, "d_model": small, "heads": heads[small], "lr": lr}
                for v in cfg.variants for lr in cfg.lrs]
    cells = [{"phase": "grid", "variant": v, "d_model": d, "heads": heads[d], "lr": best[v]}
             for d in cfg.sizes[1:] for v in cfg.variants]
    for d in cfg.sizes[1:]:
        cells += [{"phase": "transfer", "variant": v, "d_model": d, "heads": heads[d], "lr": best[v] * f}
                  for v in cfg.variants
                  for f in ((0.125, 0.25, 0.5, 2.0) if v in cfg.transfer and d == large else (0.5,))]
    return cells


def descend_cells(cfg: StudyConfig, best: dict[str, float], results: list[dict], floor: float = 1 / 64) -> list[dict]:
    """At the largest size, a cell at half the lowest rate tried for each ``--transfer`` variant whose
    best final bpb there is at that lowest rate (down to ``floor`` x its small-size rate): so that the
    rate each is judged at is a measured optimum, not the edge of the grid."""
    large = cfg.sizes[-1]
    heads = dict(zip(cfg.sizes, cfg.heads))
    cells = []
    for v in cfg.transfer:
        tried = {r["lr"]: r["final_bpb"] for r in results if r["variant"] == v and r["d_model"] == large}
        if not tried or large == cfg.sizes[0]:
            continue
        lowest = min(tried)
        if min(tried, key=tried.get) == lowest and lowest / 2 >= best[v] * floor * (1 - 1e-9):
            cells.append({"phase": "transfer", "variant": v, "d_model": large, "heads": heads[large],
                          "lr": lowest / 2})
    return cells


def best_lrs(results: list[dict]) -> dict[str, float]:
    """Each variant's rate with the lowest final validation bpb among the learning-rate cells."""
    best: dict[str, tuple[float, float]] = {}
    for r in results:
        if r["phase"] == "lr" and (r["variant"] not in best or r["final_bpb"] < best[r["variant"]][0]):
            best[r["variant"]] = (r["final_bpb"], r["lr"])
    return {v: lr for v, (_, lr) in best.items()}


# ------------------------------------------------------------------------- 3. one cell


def train_cell(cfg: StudyConfig, cell: dict) -> dict:
    """Train one cell in this process (one thread) and return its curve; deterministic in the step."""
    from . import corpus as corpus_mod
    from .distributed import Context
    from .lm import build_variant, train_step, validate

    torch.set_num_threads(1)
    lm = cfg.lm(cell["variant"], cell["d_model"], cell["heads"], cell["lr"])
    corpus = corpus_mod.load_corpus(limit=cfg.limit)
    windows = corpus_mod.eval_windows(corpus.val, cfg.context, cfg.eval_windows)
    ctx = Context()
    r = build_variant(cell["variant"], lm, ctx)
    r.model.train()
    curve = [(0, validate(r, lm, windows, ctx)["val_bpb"])]
    t0 = time.perf_counter()
    while r.step < cfg.steps:
        starts = corpus_mod.batch_indices(len(corpus.train), cfg.context, cfg.batch_size, cfg.seed, r.step)
        x, y = corpus_mod.get_batch(corpus.train, starts, cfg.context, ctx.device)
        loss = float(train_step(r.model, r, x, y))
        r.step += 1
        r.accum["loss_sum"] += loss
        r.accum["count"] += 1
        if r.step % cfg.eval_every == 0 or r.step == cfg.steps:
            curve.append((r.step, validate(r, lm, windows, ctx)["val_bpb"]))
    final = curve[-1][1]
    return {**cell, "curve": curve, "final_bpb": final if math.isfinite(final) else math.inf,
            "parameters": sum(p.numel() for p in r.model.parameters()),
            "mlp_parameters": r.model.mlp_parameters(), "wall_s": time.perf_counter() - t0}


def _worker_init() -> None:
    torch.set_num_threads(1)


def run_cells(cfg: StudyConfig, cells: list[dict], cell_dir: Path, log=print) -> list[dict]:
    """Every cell not already in ``cell_dir``, largest first, in ``cfg.jobs`` processes; all results."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    done, todo = [], []
    for c in cells:
        path = cell_dir / f"{cell_name(c)}.json"
        (done.append(json.loads(path.read_text())) if path.exists() else todo.append(c))
    todo.sort(key=lambda c: -c["d_model"] * (4 if "@" in c["variant"] else 1))
    if todo:
        log(f"{len(todo)} cells to train ({len(done)} already done), {cfg.jobs} at a time")
    if cfg.jobs <= 1:
        results = (train_cell(cfg, c) for c in todo)
        for r in results:
            done.append(_keep(r, cell_dir, log))
        return done
    with ProcessPoolExecutor(cfg.jobs, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
        futures = [pool.submit(train_cell, cfg, c) for c in todo]
        for f in as_completed(futures):
            done.append(_keep(f.result(), cell_dir, log))
    return done


def _keep(result: dict, cell_dir: Path, log) -> dict:
    write_text_atomic(cell_dir / f"{cell_name(result)}.json", json.dumps(result) + "\n")
    log(f"  {cell_name(result):<32} final bpb {result['final_bpb']:.3f}  ({result['wall_s']:.0f} s)")
    return result


def config_dict(cfg: StudyConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()} | {
        "torch": torch.__version__, "cpu_count": os.cpu_count()}


# ------------------------------------------------------------------------- the command


def configure_parser(p) -> None:
    from .argtypes import comma_list, mlp_variant, positive_float, positive_int

    d = StudyConfig()
    p.add_argument("--quick", action="store_true",
                   help="a small grid through the same code (about a minute on 2 cores; the tests use it)")
    p.add_argument("--sizes", type=comma_list(positive_int, "size"), metavar="128,256,512",
                   help=f"model widths d (default {','.join(map(str, d.sizes))})")
    p.add_argument("--heads", type=comma_list(positive_int, "head count"), metavar="4,4,8",
                   help=f"attention heads, one per size (default {','.join(map(str, d.heads))})")
    p.add_argument("--variants", type=comma_list(mlp_variant, "variant"), metavar="dense,dft,...",
                   help=f"MLP variants, as in dftnet lm (default {','.join(d.variants)})")
    p.add_argument("--lrs", type=comma_list(positive_float, "learning rate"), metavar="1e-3,2e-3,...",
                   help=f"rates swept at the smallest size (default {','.join(f'{x:g}' for x in d.lrs)})")
    p.add_argument("--transfer", type=comma_list(mlp_variant, "variant"), metavar="dense,dft",
                   help=f"variants also tried at x1/8, x1/4 and x2 their rate at the largest size (default {','.join(d.transfer)})")
    p.add_argument("--steps", type=positive_int, help=f"training steps per cell (default {d.steps})")
    p.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1,
                   help="cells trained side by side, one thread each (default: the CPU count)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/<timestamp>-study)")
    p.add_argument("--resume", action="store_true", help="keep the finished cells in --out and train the rest")
    p.add_argument("--remeasure", action="store_true", help="with --resume: time the steps again")
    p.add_argument("--overwrite", action="store_true", help="replace the study that --out holds")
    p.add_argument("--report", metavar="STUDY_JSON",
                   help="only redraw the tables and plot from a study.json (into --out, default its folder)")
    p.add_argument("--limit", type=positive_int, default=None, help=argparse_suppress())


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def run(args) -> int:
    from datetime import datetime

    from .runfolder import claim, refuse_changed_config

    if args.report:
        return _redraw(Path(args.report), Path(args.out) if args.out else None)
    overrides = {k: tuple(getattr(args, k)) if isinstance(getattr(args, k), list) else getattr(args, k)
                 for k in ("sizes", "heads", "variants", "lrs", "transfer", "steps", "limit")
                 if getattr(args, k) is not None}
    if args.sizes is not None and args.heads is None:
        overrides["heads"] = tuple(max(1, d // 64) for d in args.sizes)
    cfg = StudyConfig(**{**(QUICK if args.quick else {}), **overrides, "jobs": args.jobs})
    out = Path(args.out or Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-study")
    with claim(out, "study", resume=args.resume, overwrite=args.overwrite, command="dftnet study", log=print):
        if args.resume:  # finished cells are kept by name (size, variant, rate): the rest must match
            refuse_changed_config(out, {"command": "study", **config_dict(cfg)}, CELL_KEYS)
        study = run_study(cfg, out, remeasure=args.remeasure)
    print("\n" + _write_report(study, out) + " (and study.json, cells/)")
    return 0


def run_study(cfg: StudyConfig, out: Path, remeasure: bool = False, log=print) -> dict:
    """Train every cell (skipping finished ones), measure step costs, write ``study.json``; return it."""
    from .study_cost import measure_costs

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.json", json.dumps({"command": "study", **config_dict(cfg)}, indent=2) + "\n")
    log(f"learning rates at d = {cfg.sizes[0]}")
    results = run_cells(cfg, plan_cells(cfg), out / "cells", log)
    best = best_lrs(results)
    log("best rates: " + ", ".join(f"{v} {lr:g}" for v, lr in best.items()) + "\nthe grid")
    results += run_cells(cfg, plan_cells(cfg, best), out / "cells", log)
    while lower := descend_cells(cfg, best, results):
        log("lower rates at the largest size: " + ", ".join(f"{c['variant']} {c['lr']:g}" for c in lower))
        results += run_cells(cfg, lower, out / "cells", log)
    cost_file = out / "costs.json"
    if cost_file.exists() and not remeasure:
        costs = json.loads(cost_file.read_text())
    else:
        log("step costs (one thread, interleaved)")
        heads = dict(zip(cfg.sizes, cfg.heads))
        costs = measure_costs(cfg, [(v, d, heads[d]) for d in cfg.sizes for v in cfg.variants], log)
        write_text_atomic(cost_file, json.dumps(costs, indent=1) + "\n")
    study = {"config": config_dict(cfg), "best_lrs": best, "cells": results, "costs": costs}
    write_text_atomic(out / "study.json", json.dumps(study) + "\n")
    return study


def _write_report(study: dict, out: Path) -> str:
    from .writes import atomic_path
    from .study_report import plot_study, report_text

    text = report_text(study)
    write_text_atomic(out / "study.md", text)
    with atomic_path(out / "frontier.png") as tmp:
        plot_study(study, tmp)
    return text + f"\nwrote {out}/: study.md frontier.png"


def _redraw(path: Path, out: Path | None) -> int:
    if not path.is_file():
        raise FileNotFoundError(f"--report: no study file at {path}")
    study = json.loads(path.read_text())
    print(_write_report(study, out or path.parent))
    return 0
