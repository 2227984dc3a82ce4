"""Train an MLP classifier, DFT and dense side by side: the original note's MNIST experiment.

Read top to bottom, like nanoGPT's train.py. For each net (:func:`train_net`):

1. :func:`build_net_run`: seed, model, AdamW, one-cycle schedule;
2. :func:`maybe_resume`: continue from ``last.pt`` (mid-epoch too);
3. :func:`train_epoch`, made of :func:`train_step`: one pass over this epoch's batches, with a
   checkpoint every ``--checkpoint-every`` steps and on Ctrl-C;
4. :func:`end_epoch`: validation, the epoch's row of metrics, ``best.pt`` and ``last.pt``;
5. :func:`test_best`: the test set, once, with the epoch that validation chose.

The job (:func:`run`) then writes the summary table, ``metrics.csv``, ``summary.json`` and the curves.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from ..configflags import config_dict
from ..harness import distributed as dist_mod
from ..harness import guard, preflight
from ..harness.checkpoint import FORMAT, load_checkpoint, restore_for_resume, save_atomic, save_safetensors
from ..harness.device import resolve_device
from ..harness.interrupt import StopFlag, TrainingInterrupted
from ..harness.memory import peak_step_memory
from ..harness.reproduce import changed_environment, environment
from ..harness.runfolder import refuse_changed_config
from ..harness.writes import WriteError, atomic_path, write_text_atomic
from ..reports import plot_curves, train_table, write_csv
from . import augment
from . import data as data_mod
from .config import TrainConfig
from .evaluate import evaluate
from .models import build_model
from .recipe import DEFAULT_LR, default_lr, param_groups

__all__ = ["TrainConfig", "TrainingInterrupted", "run", "train_net", "evaluate", "build_model", "DEFAULT_LR"]

def _epoch_order(n: int, seed: int, epoch: int, ctx: dist_mod.Context) -> torch.Tensor:
    """This rank's examples of epoch ``epoch``, in order: a function of (seed, epoch) alone, so resuming
    replays it. ``DistributedSampler`` deals rank r every world_size-th example of one shuffle, so the
    k-th global batch is the same set of examples for any number of processes.
    """
    sampler = DistributedSampler(range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(iter(sampler)), dtype=torch.long)


def _new_accum() -> dict:
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


@dataclass
class NetRun:
    """One net in training: its modules, and where training stands (what a checkpoint records)."""

    kind: str
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    local_batch: int  # this process's share of the global batch
    steps_per_epoch: int
    total_steps: int
    epoch: int = 0  # position: where training continues
    batch: int = 0
    step: int = 0
    history: list = field(default_factory=list)  # one row of metrics per epoch
    best: dict = field(default_factory=lambda: {"val_acc": -1.0, "epoch": -1})
    accum: dict = field(default_factory=_new_accum)  # running train metrics of the current epoch
    dropout: augment.HiddenDropout | None = None


# ------------------------------------------------------------------------- 1. model, optimizer, schedule


def build_net_run(kind: str, cfg: TrainConfig, splits, ctx: dist_mod.Context) -> NetRun:
    """``cfg.batch_size`` is the global batch: under DDP each of the world_size processes takes its share."""
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of the number of processes "
                         f"({ctx.world_size})")
    local_batch = cfg.batch_size // ctx.world_size
    torch.manual_seed(cfg.seed)
    model = build_model(kind, cfg.widths, cfg.recompute_spectrum, ctx.device)
    lr = cfg.lr if cfg.lr is not None else default_lr(kind)
    groups = param_groups(model, lr)
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
    n_local = len(_epoch_order(len(splits.train_x), cfg.seed, 0, ctx))
    steps_per_epoch = math.ceil(n_local / local_batch)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups],
                                                total_steps=max(total_steps, 1))
    dropout = augment.HiddenDropout(model, cfg.dropout, ctx.device) if cfg.dropout else None
    return NetRun(kind, model, opt, sched, local_batch, steps_per_epoch, total_steps, dropout=dropout)


# ------------------------------------------------------------------------- 2. resume, checkpoints


def maybe_resume(r: NetRun, cfg: TrainConfig, net_dir: Path, ctx: dist_mod.Context, log) -> None:
    """With ``--resume``, continue from ``last.pt``: weights, optimizer, schedule, position, metrics."""
    if not cfg.resume:
        return
    ck = restore_for_resume(net_dir, ctx.device, ctx.is_main, r.model, r.opt, r.sched,
                            lambda m: m["kind"] == r.kind and tuple(m["widths"]) == tuple(cfg.widths))
    if ck is None:
        return
    r.epoch, r.batch = ck["position"]["epoch"], ck["position"]["batch"]
    r.step, r.history, r.best = ck["step"], ck["history"], ck["best"]
    r.accum = ck["accum"] if ctx.is_main else {**_new_accum(), "seconds": ck["accum"]["seconds"]}
    log(f"{r.kind}: resumed from {net_dir / 'last.pt'} at epoch {r.epoch + 1}, batch {r.batch} (step {r.step})")


def _checkpoint(r: NetRun, cfg: TrainConfig, position: tuple[int, int]) -> dict:
    return {
        "format": FORMAT,
        "model": {"kind": r.kind, "widths": list(cfg.widths), "recompute_spectrum": cfg.recompute_spectrum},
        "dataset": cfg.dataset,
        "state_dict": r.model.state_dict(),
        "optimizer": r.opt.state_dict(),
        "scheduler": r.sched.state_dict(),
        "position": {"epoch": position[0], "batch": position[1]},  # where training continues
        "step": r.step,
        "accum": r.accum,  # running train metrics of the current epoch
        "history": r.history,
        "best": r.best,
        "config": config_dict(cfg),
    }


def save(r: NetRun, cfg: TrainConfig, ctx: dist_mod.Context, path: Path, position: tuple[int, int]) -> None:
    """Rank 0 writes the checkpoint (atomically, never with non-finite weights); every rank waits for it,
    and all stop if it failed."""
    def write():
        guard.require_finite(r.model, r.opt, lambda what: _diverged(r, cfg, path.parent / "last.pt", what))
        save_atomic(_checkpoint(r, cfg, position), path)
    dist_mod.on_main(ctx, write)


def _diverged(r: NetRun, cfg: TrainConfig, last: Path, what: str) -> guard.TrainingDiverged:
    peak = cfg.lr if cfg.lr is not None else default_lr(r.kind)
    return guard.TrainingDiverged(guard.diverged_line(r.kind, r.step, what, r.sched.get_last_lr()[0], peak, last,
                                                      f"dftnet train --overwrite --out {last.parent.parent}"))


def _reduce_accum(r: NetRun, ctx: dist_mod.Context) -> None:
    """Make rank 0 hold the global running sums (what a checkpoint stores), other ranks zero."""
    keys = ("loss_sum", "correct", "seen")
    total = dist_mod.all_reduce_sum(ctx, [r.accum[k] for k in keys])
    for k, v in zip(keys, total):
        r.accum[k] = v if ctx.is_main else 0


# ------------------------------------------------------------------------- 3. one step, one epoch


def train_step(net, r: NetRun, xb: torch.Tensor, yb: torch.Tensor, label_smoothing: float):
    """Forward, loss, backward, AdamW step, schedule step; returns (loss, logits)."""
    logits = net(xb)
    loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
    r.opt.zero_grad(set_to_none=True)
    loss.backward()
    r.opt.step()
    r.sched.step()
    return loss, logits


def train_epoch(net, r: NetRun, cfg: TrainConfig, splits, ctx: dist_mod.Context, stop: StopFlag,
                last: Path) -> int:
    """Train from ``r.batch`` to the end of epoch ``r.epoch`` (or to ``total_steps``); returns the
    epoch's number of steps. On Ctrl-C: checkpoint, then :class:`TrainingInterrupted`."""
    order = _epoch_order(len(splits.train_x), cfg.seed, r.epoch, ctx)
    shifts = augment.epoch_shifts(len(splits.train_x), cfg.shift, cfg.seed, r.epoch) if cfg.shift else None
    n_steps = min(r.steps_per_epoch, r.batch + r.total_steps - r.step)
    bar = tqdm(total=n_steps, initial=r.batch, desc=f"{r.kind:>5} {r.epoch + 1}/{cfg.epochs}",
               disable=cfg.quiet or not ctx.is_main, leave=False, dynamic_ncols=True, unit="step")
    t0 = time.perf_counter()
    while r.batch < n_steps:
        idx = order[r.batch * r.local_batch : (r.batch + 1) * r.local_batch]
        xb, yb = splits.train_x[idx].to(ctx.device), splits.train_y[idx].to(ctx.device)
        if shifts is not None:
            xb = augment.shift_images(xb, shifts[idx], fill=-splits.mean / splits.std)
        if r.dropout is not None:
            r.dropout.reseed(cfg.seed, r.step)
        loss, logits = train_step(net, r, xb, yb, cfg.label_smoothing)
        r.step += 1
        r.batch += 1
        loss_value = loss.item()  # the one read of the loss (metrics, progress bar, divergence)
        r.accum["loss_sum"] += loss_value * len(idx)
        r.accum["correct"] += (logits.argmax(1) == yb).sum().item()
        r.accum["seen"] += len(idx)
        if not bar.disable:
            _show_progress(bar, r, ctx, time.perf_counter() - t0, n_steps)
        problem = guard.diverged(loss_value, splits.info.num_classes)
        stopping, bad = dist_mod.any_rank(ctx, stop.check(), problem is not None)
        if bad:  # nothing is written: the last checkpoint is the last finite one
            bar.close()
            raise _diverged(r, cfg, last, problem or "the loss is not finite in another process")
        if stopping or (cfg.checkpoint_every and r.step % cfg.checkpoint_every == 0 and r.batch < n_steps):
            r.accum["seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            _reduce_accum(r, ctx)
            save(r, cfg, ctx, last, (r.epoch, r.batch))
            if stopping:
                bar.close()
                raise stop.interrupted(last)
    r.accum["seconds"] += time.perf_counter() - t0
    bar.close()
    return n_steps


def _show_progress(bar, r: NetRun, ctx: dist_mod.Context, elapsed: float, n_steps: int) -> None:
    bar.update()
    if r.batch % 10 == 0 or r.batch == n_steps:
        a = r.accum
        rate = a["seen"] * ctx.world_size / max(a["seconds"] + elapsed, 1e-9)
        bar.set_postfix(loss=f"{a['loss_sum'] / max(a['seen'], 1):.4f}",
                        acc=f"{a['correct'] / max(a['seen'], 1):.2%}", ex_s=f"{rate:,.0f}")


# ------------------------------------------------------------------------- 4. end of an epoch


def end_epoch(r: NetRun, cfg: TrainConfig, splits, ctx: dist_mod.Context, net_dir: Path, n_steps: int,
              log) -> None:
    """Validate, record the epoch's metrics, move to the next epoch, write best.pt and last.pt."""
    val_loss, val_acc, _ = evaluate(r.model, splits.val_x, splits.val_y, cfg.eval_batch_size, ctx=ctx)
    loss_sum, correct, seen = dist_mod.all_reduce_sum(
        ctx, [r.accum["loss_sum"], r.accum["correct"], r.accum["seen"]])
    seconds = r.accum["seconds"]
    row = {
        "layer": r.kind, "epoch": r.epoch + 1, "steps": r.step,
        "train_loss": loss_sum / seen, "train_acc": correct / seen,
        "val_loss": val_loss, "val_acc": val_acc,
        "seconds": seconds, "examples_per_s": seen / seconds,
        "epoch_fraction": n_steps / r.steps_per_epoch, "lr": r.sched.get_last_lr()[0],
    }
    r.history.append(row)
    log(f"{r.kind:>5} epoch {r.epoch + 1:>2}/{cfg.epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.2%}  val loss {val_loss:.4f} acc {val_acc:.2%}  "
        f"{seconds:.1f} s  {row['examples_per_s']:,.0f} ex/s")
    r.epoch, r.batch, r.accum = r.epoch + 1, 0, _new_accum()
    if val_acc > r.best["val_acc"]:
        r.best = {"val_acc": val_acc, "val_loss": val_loss, "epoch": r.epoch}
        save(r, cfg, ctx, net_dir / "best.pt", (r.epoch, 0))
    save(r, cfg, ctx, net_dir / "last.pt", (r.epoch, 0))


# ------------------------------------------------------------------------- 5. test the best epoch


def test_best(r: NetRun, cfg: TrainConfig, splits, ctx: dist_mod.Context, net_dir: Path) -> dict:
    """The test set is evaluated once, with the epoch that validation chose; returns the net's results."""
    model, device = r.model, ctx.device
    if (net_dir / "best.pt").exists():
        model.load_state_dict(load_checkpoint(net_dir / "best.pt", map_location=device)["state_dict"])
    if ctx.is_main:
        save_safetensors(model.state_dict(), net_dir / "model.safetensors", {
            "kind": r.kind, "widths": ",".join(map(str, cfg.widths)), "dataset": cfg.dataset,
            "best_epoch": str(r.best["epoch"])})
    test_loss, test_acc, _ = evaluate(model, splits.test_x, splits.test_y, cfg.eval_batch_size, ctx=ctx)
    full = [row for row in r.history if row["epoch_fraction"] == 1.0] or r.history
    memory = math.nan
    if ctx.is_main:
        # clone: a slice would keep (and be charged for) the whole training set's storage
        memory = peak_step_memory(model, splits.train_x[:r.local_batch].to(device).clone(),
                                  splits.train_y[:r.local_batch].to(device).clone())
    return {
        "layer": r.kind,
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
    net_dir = out_dir / kind
    r = build_net_run(kind, cfg, splits, ctx)
    maybe_resume(r, cfg, net_dir, ctx, log)
    net = DistributedDataParallel(r.model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None) \
        if ctx.distributed else r.model
    r.model.train()
    with StopFlag() as stop:
        # r.batch > 0 at the last step: an epoch whose steps are done, stopped before its validation
        while r.epoch < cfg.epochs and (r.step < r.total_steps or r.batch > 0):
            try:
                n_steps = train_epoch(net, r, cfg, splits, ctx, stop, net_dir / "last.pt")
                end_epoch(r, cfg, splits, ctx, net_dir, n_steps, log)
            except WriteError as e:  # stop at this step; the previous checkpoint is intact
                raise WriteError(f"{e}; {r.kind} stopped at step {r.step}, its last good checkpoint is kept: "
                                 f"once fixed, continue with dftnet train --resume --out {out_dir}", e.path) from e
            except (RuntimeError, MemoryError) as e:
                guard.raise_if_out_of_memory(e, r.kind, r.step, net_dir / "last.pt", "train", out_dir)
                raise
        if dist_mod.any_rank(ctx, stop.set)[0]:  # a signal in the last validation or checkpoint: last.pt is whole
            raise stop.interrupted(net_dir / "last.pt")
    return test_best(r, cfg, splits, ctx, net_dir)


RESUME_KEYS = ("layer", "widths", "dataset", "seed", "limit", "val_size", "batch_size")


def run(cfg: TrainConfig, log=print) -> dict:
    """The whole job; returns the summary that is also written to ``summary.json``.

    Under ``torchrun`` it trains data-parallel (DDP); only rank 0 prints and writes files, and holds
    the folder's lock (:func:`..harness.distributed.job`) for the whole run.
    """
    with dist_mod.job(resolve_device(cfg.device), cfg.out, "train", default_name=cfg.dataset, resume=cfg.resume,
                      overwrite=cfg.overwrite, log=log) as (ctx, out_dir, log):
        if cfg.resume:  # the model and the examples (and their order) must be the run's
            dist_mod.on_main(ctx, lambda: refuse_changed_config(out_dir, asdict(cfg), RESUME_KEYS))
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
        dist_mod.on_main(ctx, partial(preflight.check_train, kind, cfg, ctx, local_batch))
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
