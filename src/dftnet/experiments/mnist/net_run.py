"""One MNIST-family net in training, as the shared loop (:func:`.harness.loop.fit`) asks for it: epochs
of shuffled batches (a function of the seed and the epoch alone, so a resumed run replays them), the
label-smoothed loss, running metrics, validation at each epoch's end with ``best.pt``, and what a
checkpoint holds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from ..configflags import config_dict
from ..harness import distributed as dist_mod
from ..harness.checkpoint import FORMAT
from ..harness.loop import Run, save
from . import augment
from . import data as data_mod
from .config import TrainConfig
from .evaluate import evaluate
from .models import build_model
from .recipe import default_lr

__all__ = ["NetRun", "build_net_run"]


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
    # one group: the layers' spectral parametrisation (dftnet.spectral) makes the same lr right at every width
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    n_local = len(_epoch_order(len(splits.train_x), cfg.seed, 0, ctx))
    steps_per_epoch = math.ceil(n_local / local_batch)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr,
                                                total_steps=max(total_steps, 1))
    dropout = augment.HiddenDropout(model, cfg.dropout, ctx.device) if cfg.dropout else None
    return NetRun(kind, model, opt, sched, total_steps, cfg=cfg, splits=splits, ctx=ctx, net_dir=net_dir,
                  local_batch=local_batch, steps_per_epoch=steps_per_epoch, dropout=dropout)
