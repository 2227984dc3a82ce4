"""The cells of ``dftnet study``: one cell trained in one process, and the runner that keeps ``--jobs``
processes busy with whatever the plan asks for next.

A cell is (arm, size, budget, rate, seed) with its step count fixed by the budget. Its result depends on
those settings alone: the model comes from the seed, the batches from (seed, step), and the process
runs one thread. So cells can run side by side, in any order, on any day, and a finished cell's JSON
file is a unit that can be committed and skipped on ``--resume``.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import torch

from ..harness.writes import write_text_atomic

__all__ = ["train_cell", "run_plan", "EVAL_BATCH"]

EVAL_BATCH = 32  # sequences per evaluation forward (twice this per chunk, see evaluate_bpb)


def train_cell(cfg, cell: dict) -> dict:
    """Train one cell for its ``steps`` (warmup and cosine set for that count) in this process on one
    thread, in the loop every command shares (no checkpoints: a cell is the unit that is redone); return
    it with its final validation bpb (for choices), test bpb (for reports), the route each structured
    layer took and the wall time. A diverged cell scores infinite bpb."""
    from ..harness.distributed import Context
    from ..harness.guard import TrainingDiverged
    from ..harness.loop import fit
    from ..lm import corpus as corpus_mod
    from ..lm.measure import evaluate_bpb
    from ..lm.train import build_variant
    from .flops import layer_routes
    from .plan import Arm

    torch.set_num_threads(1)
    arm = Arm(cell["variant"], cell["structure"])
    lm = cfg.lm(arm, cell["d_model"], cell["heads"], cell["lr"], cell["seed"], cell["steps"])
    corpus = corpus_mod.load_corpus(limit=cfg.limit)
    ctx = Context()
    r = build_variant(cell["variant"], lm, ctx, corpus)
    losses = r.losses = []  # every step's loss, for the tail of the training curve
    t0 = time.perf_counter()
    try:
        fit(r, ctx, None, quiet=True)
        diverged = False
    except TrainingDiverged:
        diverged = True
    wall = time.perf_counter() - t0
    tail = losses[-max(1, len(losses) // 10):]  # the last tenth of the steps
    windows = corpus_mod.eval_windows(corpus.val, cfg.context, cfg.eval_windows)
    val = math.inf if diverged else evaluate_bpb(r.model, windows, EVAL_BATCH, ctx)
    windows = corpus_mod.eval_windows(corpus.test, cfg.context, cfg.test_windows)
    test = math.inf if diverged else evaluate_bpb(r.model, windows, EVAL_BATCH, ctx)
    finite = (lambda v: v if math.isfinite(v) else math.inf)
    return {**cell, "val_bpb": finite(val), "test_bpb": finite(test),
            "train_bpb_tail": finite(sum(tail) / len(tail) / math.log(2)),
            "routes": layer_routes(r.model, cfg.batch_size * cfg.context),
            "parameters": sum(p.numel() for p in r.model.parameters()),
            "mlp_parameters": r.model.mlp_parameters(), "wall_s": wall}


def _worker_init() -> None:
    torch.set_num_threads(1)


def run_plan(cfg, plan, cell_dir: Path, log=print) -> list[dict]:
    """Train what ``plan(finished results)`` asks for until it asks for nothing new: ``cfg.jobs`` cells at
    a time (cheapest first; at equal cost, searches before seeds), re-planning after each finished cell.
    Cells already in ``cell_dir`` are read, not trained. Returns every finished result."""
    from .plan import cell_name

    cell_dir.mkdir(parents=True, exist_ok=True)
    results = {p.stem: json.loads(p.read_text()) for p in sorted(cell_dir.glob("*.json"))}
    running: dict = {}

    def todo() -> list[dict]:
        cells = [c for c in plan(list(results.values())) if cell_name(c) not in results
                 and cell_name(c) not in running.values()]
        return sorted(cells, key=lambda c: (c["steps"] * c["d_model"] ** 2, c["phase"] != "search", cell_name(c)))

    pool = ProcessPoolExecutor(max(1, cfg.jobs), mp_context=get_context("spawn"), initializer=_worker_init)
    try:
        while True:
            for c in todo()[: max(0, cfg.jobs - len(running))]:
                running[pool.submit(train_cell, cfg, c)] = cell_name(c)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                name = running.pop(f)
                result = f.result()
                write_text_atomic(cell_dir / f"{name}.json", json.dumps(result) + "\n")
                results[name] = result
                log(f"  {name:<44} val {result['val_bpb']:.3f}  test {result['test_bpb']:.3f}  "
                    f"({result['wall_s']:.0f} s)")
    finally:
        pool.shutdown(cancel_futures=True)
    return list(results.values())
