"""Train an MLP classifier, DFT and dense side by side: the original note's MNIST experiment.

Read top to bottom. For each net (:func:`train_net`):

1. :func:`build_net_run`: seed, model, AdamW, one-cycle schedule, as a :class:`NetRun`: what the shared
   loop (:func:`.harness.loop.fit`) asks of a command: this epoch's batches, the loss, the running
   metrics, validation at each epoch's end (``best.pt``), and what a checkpoint holds;
2. :func:`.harness.loop.maybe_resume`: continue from ``last.pt`` (mid-epoch too);
3. :func:`.harness.loop.fit`: the steps, with ``last.pt`` at each epoch's end, every
   ``--checkpoint-every`` steps and on Ctrl-C;
4. :func:`test_best`: the test set, once, with the epoch that validation chose.

The job (:func:`run`) then writes the summary table, ``metrics.csv``, ``summary.json`` and the curves.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from ..configflags import config_dict
from ..harness import distributed as dist_mod
from ..harness import preflight
from ..harness.checkpoint import FORMAT, load_checkpoint, save_safetensors
from ..harness.device import resolve_device
from ..harness.interrupt import TrainingInterrupted
from ..harness.loop import Run, fit, maybe_resume, save
from ..harness.memory import peak_step_memory
from ..harness.reproduce import changed_environment, environment
from ..harness.runfolder import refuse_changed_config
from ..harness.writes import atomic_path, write_text_atomic
from ..tables import write_csv
from . import augment
from . import data as data_mod
from .config import TrainConfig
from .evaluate import evaluate
from .models import build_model
from .recipe import DEFAULT_LR, default_lr, param_groups
from .report import plot_curves, train_table

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


@dataclass(kw_only=True)
class NetRun(Run):
    """One net in training: epochs of shuffled batches, validated at each epoch's end."""

    cfg: TrainConfig
    splits: data_mod.Splits
    ctx: dist_mod.Context
    net_dir: Path
    local_batch: int  # this process's share of the global batch
    steps_per_epoch: int
    epoch: int = 0  # position: where training continues
    batch: int = 0
    best: dict = field(default_factory=lambda: {"val_acc": -1.0, "epoch": -1})
    accum: dict = field(default_factory=_new_accum)  # running train metrics of the current epoch
    dropout: augment.HiddenDropout | None = None
    _order: tuple = (None, None, None)  # (epoch, order, shifts) of the epoch in progress


    def peak_lr(self) -> float:
        return self.cfg.lr if self.cfg.lr is not None else default_lr(self.name)

    @property
    def classes(self) -> int:  # type: ignore[override]  # the dataset's
        return self.splits.info.num_classes

    def epoch_steps(self) -> int:
        """The steps of the epoch in progress (the last one may be cut by ``--max-steps``)."""
        return min(self.steps_per_epoch, self.batch + self.total_steps - self.step)

    def next_batch(self):
        cfg, splits = self.cfg, self.splits
        if self._order[0] != self.epoch:
            n = len(splits.train_x)
            self._order = (self.epoch, _epoch_order(n, cfg.seed, self.epoch, self.ctx),
                           augment.epoch_shifts(n, cfg.shift, cfg.seed, self.epoch) if cfg.shift else None)
        _, order, shifts = self._order
        idx = order[self.batch * self.local_batch : (self.batch + 1) * self.local_batch]
        xb, yb = splits.train_x[idx].to(self.ctx.device), splits.train_y[idx].to(self.ctx.device)
        if shifts is not None:
            xb = augment.shift_images(xb, shifts[idx], fill=-splits.mean / splits.std)
        if self.dropout is not None:
            self.dropout.reseed(cfg.seed, self.step)
        return xb, yb

    def loss(self, output, target):
        return F.cross_entropy(output, target, label_smoothing=self.cfg.label_smoothing)

    def record(self, loss, output, target, seconds):
        self.batch += 1
        a = self.accum
        a["loss_sum"] += loss * len(target)
        a["correct"] += (output.argmax(1) == target).sum().item()
        a["seen"] += len(target)
        a["seconds"] += seconds

    def postfix(self) -> dict:
        a = self.accum
        rate = a["seen"] * self.ctx.world_size / max(a["seconds"], 1e-9)
        return {"epoch": f"{self.epoch + 1}/{self.cfg.epochs}", "loss": f"{a['loss_sum'] / max(a['seen'], 1):.4f}",
                "acc": f"{a['correct'] / max(a['seen'], 1):.2%}", "ex_s": f"{rate:,.0f}"}

    def evaluation_due(self) -> bool:
        return self.batch > 0 and self.batch == self.epoch_steps()

    def checkpoint_due(self) -> bool:
        return bool(self.cfg.checkpoint_every) and self.step % self.cfg.checkpoint_every == 0

    def evaluate(self) -> str:
        """Validate, record the epoch's metrics, move to the next epoch, write ``best.pt``."""
        cfg, ctx = self.cfg, self.ctx
        n_steps = self.batch
        val_loss, val_acc, _ = evaluate(self.model, self.splits.val_x, self.splits.val_y, cfg.eval_batch_size,
                                        ctx=ctx)
        loss_sum, correct, seen = dist_mod.all_reduce_sum(
            ctx, [self.accum["loss_sum"], self.accum["correct"], self.accum["seen"]])
        seconds = self.accum["seconds"]
        row = {
            "layer": self.name, "epoch": self.epoch + 1, "steps": self.step,
            "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "val_loss": val_loss, "val_acc": val_acc,
            "seconds": seconds, "examples_per_s": seen / seconds,
            "epoch_fraction": n_steps / self.steps_per_epoch, "lr": self.sched.get_last_lr()[0],
        }
        self.history.append(row)
        self.epoch, self.batch, self.accum = self.epoch + 1, 0, _new_accum()
        if val_acc > self.best["val_acc"]:
            self.best = {"val_acc": val_acc, "val_loss": val_loss, "epoch": self.epoch}
            save(self, ctx, self.net_dir / "best.pt")
        return (f"{self.name:>5} epoch {row['epoch']:>2}/{cfg.epochs}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.2%}  val loss {val_loss:.4f} acc {val_acc:.2%}  "
                f"{seconds:.1f} s  {row['examples_per_s']:,.0f} ex/s")

    def checkpoint(self) -> dict:
        """Rank 0 holds the global running sums (reduced here), other ranks zero."""
        keys = ("loss_sum", "correct", "seen")
        total = dist_mod.all_reduce_sum(self.ctx, [self.accum[k] for k in keys])
        for k, v in zip(keys, total):
            self.accum[k] = v if self.ctx.is_main else 0
        cfg = self.cfg
        return {
            "format": FORMAT,
            "model": {"kind": self.name, "widths": list(cfg.widths), "recompute_spectrum": cfg.recompute_spectrum},
            "dataset": cfg.dataset,
            "state_dict": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "position": {"epoch": self.epoch, "batch": self.batch},  # where training continues
            "step": self.step,
            "accum": self.accum,  # running train metrics of the current epoch
            "history": self.history,
            "best": self.best,
            "config": config_dict(cfg),
        }

    def same_model(self, meta: dict) -> bool:
        return meta["kind"] == self.name and tuple(meta["widths"]) == tuple(self.cfg.widths)

    def restore(self, ck: dict, is_main: bool) -> None:
        self.epoch, self.batch = ck["position"]["epoch"], ck["position"]["batch"]
        self.step, self.history, self.best = ck["step"], ck["history"], ck["best"]
        self.accum = ck["accum"] if is_main else {**_new_accum(), "seconds": ck["accum"]["seconds"]}


def build_net_run(kind: str, cfg: TrainConfig, splits, ctx: dist_mod.Context, net_dir: Path) -> NetRun:
    """Seed, model, AdamW, one-cycle schedule. ``cfg.batch_size`` is the global batch: under DDP each of
    the world_size processes takes its share."""
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
    return NetRun(kind, model, opt, sched, total_steps, cfg=cfg, splits=splits, ctx=ctx, net_dir=net_dir,
                  local_batch=local_batch, steps_per_epoch=steps_per_epoch, dropout=dropout)


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
