"""Train an MLP classifier, DFT and dense side by side: the original note's MNIST experiment.

Read top to bottom. For each net (:func:`train_net`):

1. :func:`.net_run.build_net_run`: seed, model, AdamW, one-cycle schedule, as a
   :class:`.net_run.NetRun`: what the shared loop (:func:`.harness.loop.fit`) asks of a command: this
   epoch's batches, the loss, the running metrics, validation at each epoch's end (``best.pt``), and
   what a checkpoint holds;
2. :func:`.harness.loop.maybe_resume`: continue from ``last.pt`` (mid-epoch too);
3. :func:`.harness.loop.fit`: the steps, with ``last.pt`` at each epoch's end, every
   ``--checkpoint-every`` steps and on Ctrl-C;
4. :func:`test_best`: the test set, once, with the epoch that validation chose.

The job (:func:`run`) then writes the summary table, ``metrics.csv``, ``summary.json`` and the curves.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import torch

from ..configflags import config_dict
from ..harness import distributed as dist_mod
from ..harness import preflight
from ..harness.checkpoint import load_checkpoint, save_safetensors
from ..harness.device import resolve_device
from ..harness.interrupt import TrainingInterrupted
from ..harness.loop import fit, maybe_resume
from ..harness.memory import peak_step_memory
from ..harness.reproduce import changed_environment, environment
from ..harness.runfolder import refuse_changed_config
from ..harness.writes import atomic_path, write_text_atomic
from ..tables import write_csv
from . import data as data_mod
from .config import TrainConfig
from .evaluate import evaluate
from .models import build_model
from .net_run import NetRun, build_net_run
from .recipe import DEFAULT_LR
from .report import plot_curves, train_table

__all__ = ["TrainConfig", "TrainingInterrupted", "run", "train_net", "evaluate", "build_model", "DEFAULT_LR"]


# ------------------------------------------------------------------------- 5. test the best epoch


def test_best(r: NetRun, cfg: TrainConfig, splits, ctx: dist_mod.Context, net_dir: Path) -> dict:
    """The test set is evaluated once, with the epoch that validation chose; returns the net's results."""
    model, device = r.model, ctx.device
    if (net_dir / "best.pt").exists():
        model.load_state_dict(load_checkpoint(net_dir / "best.pt", map_location=device)["state_dict"])
    if ctx.is_main:
        save_safetensors(model.state_dict(), net_dir / "model.safetensors", {
            "kind": r.name, "widths": ",".join(map(str, cfg.widths)), "dataset": cfg.dataset,
            "best_epoch": str(r.best["epoch"])})
    test_loss, test_acc, _ = evaluate(model, splits.test_x, splits.test_y, cfg.eval_batch_size, ctx=ctx)
    full = [row for row in r.history if row["epoch_fraction"] == 1.0] or r.history
    memory = math.nan
    if ctx.is_main:
        # clone: a slice would keep (and be charged for) the whole training set's storage
        memory = peak_step_memory(model, splits.train_x[:r.local_batch].to(device).clone(),
                                  splits.train_y[:r.local_batch].to(device).clone())
    return {
        "layer": r.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "test_acc": test_acc, "test_loss": test_loss,
        "best_epoch": r.best["epoch"], "best_val_acc": r.best["val_acc"],
        "seconds_per_epoch": (sum(row["seconds"] / row["epoch_fraction"] for row in full) / len(full))
        if full else math.nan,
        "examples_per_s": (sum(row["examples_per_s"] for row in full) / len(full)) if full else math.nan,
        "peak_memory_bytes": memory,
        "epochs_run": len(r.history), "steps": r.step, "processes": ctx.world_size,
    }


# ------------------------------------------------------------------------- one net, then the job


def train_net(kind: str, cfg: TrainConfig, splits, out_dir: Path, ctx: dist_mod.Context, log=print) -> dict:
    """Train one net, checkpointing each epoch; return its results (test metrics of the best epoch)."""
    r = build_net_run(kind, cfg, splits, ctx, out_dir / kind)
    if cfg.resume:
        maybe_resume(r, r.net_dir, ctx, log)
    fit(r, ctx, r.net_dir, quiet=cfg.quiet, log=log)
    return test_best(r, cfg, splits, ctx, r.net_dir)


RESUME_KEYS = ("layer", "widths", "dataset", "seed", "limit", "val_size", "batch_size")


def run(cfg: TrainConfig, log=print) -> dict:
    """The whole job; returns the summary that is also written to ``summary.json``.

    Under ``torchrun`` it trains data-parallel (DDP); only rank 0 prints and writes files, and holds
    the folder's lock (:func:`..harness.distributed.job`) for the whole run.
    """
    with dist_mod.job(resolve_device(cfg.device), cfg.out, "train", default_name=cfg.dataset, resume=cfg.resume,
                      overwrite=cfg.overwrite, log=log) as (ctx, out_dir, log):
        if cfg.resume:  # the model and the examples (and their order) must be the run's
            dist_mod.on_main(ctx, lambda: refuse_changed_config(out_dir, config_dict(cfg), RESUME_KEYS))
        return _run(cfg, ctx, out_dir, log)


def _run(cfg: TrainConfig, ctx: dist_mod.Context, out_dir: Path, log) -> dict:
    config = config_dict(cfg)
    config.update(out=str(out_dir), resolved_device=str(ctx.device), processes=ctx.world_size,
                  **environment(ctx.device))  # what reproducing the run needs: threads, MKL's mode, torch, CPU
    note = changed_environment(out_dir, config) if cfg.resume and ctx.is_main else None
    if note:
        log(note)

    splits = data_mod.load_splits(cfg.dataset, cfg.data_dir, val_size=cfg.val_size, seed=cfg.seed,
                                  limit=cfg.limit)
    info = splits.info
    if cfg.widths[0] != info.input_size or cfg.widths[-1] != info.num_classes:
        raise ValueError(f"--widths must start with {info.input_size} (the input size of {info.name}) and "
                         f"end with {info.num_classes} (its classes), got {','.join(map(str, cfg.widths))}")
    for kind in cfg.kinds if cfg.memory_check else ():  # before anything is allocated or written
        local_batch = max(1, cfg.batch_size // ctx.world_size)
        dist_mod.on_main(ctx, partial(check_memory, kind, cfg, ctx, local_batch))
    if ctx.is_main:
        write_text_atomic(out_dir / "config.json", json.dumps(config, indent=2) + "\n")
    log(f"data: {splits.source}: {len(splits.train_x)} train / {len(splits.val_x)} val / "
        f"{len(splits.test_x)} test;  device {ctx.device}"
        + (f" x {ctx.world_size} processes" if ctx.distributed else "") + f";  out {out_dir}")

    results, history = [], []
    for kind in cfg.kinds:
        results.append(train_net(kind, cfg, splits, out_dir, ctx, log))
        history += load_checkpoint(out_dir / kind / "last.pt")["history"]

    table = train_table(results)
    summary = {"config": config, "data_source": splits.source, "results": results, "table": table}
    if ctx.is_main:
        with atomic_path(out_dir / "metrics.csv") as tmp:
            write_csv(tmp, history, list(history[0].keys()) if history else ["layer"])
        write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        if history:
            with atomic_path(out_dir / "curves.png") as tmp:
                plot_curves(history, tmp)
    log("\n" + table + "\n")
    log(f"wrote {out_dir}/: config.json metrics.csv summary.json curves.png "
        + " ".join(f"{k}/best.pt {k}/last.pt {k}/model.safetensors" for k in cfg.kinds))
    return summary


def check_memory(kind: str, cfg: TrainConfig, ctx, local_batch: int) -> None:
    """Refuse, before anything is allocated, a net whose training step would not fit
    (:mod:`..harness.preflight`; rank 0 runs it, the refusal reaches every rank)."""
    widths = tuple(cfg.widths)
    est = preflight.estimate(lambda: build_model(kind, widths, cfg.recompute_spectrum, ctx.device),
                             lambda n: (torch.empty(n, widths[0], device=ctx.device),
                                        torch.zeros(n, dtype=torch.long, device=ctx.device)),
                             local_batch, cfg.eval_batch_size)
    lower = "--batch-size or --widths" + (", add --recompute-spectrum" if kind.startswith("dft") else "")
    preflight.refuse_if_too_big(kind, est, ctx.device, cfg.batch_size, ctx.distributed, lower)
