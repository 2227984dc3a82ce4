"""Train an MLP classifier, DFT and dense side by side: the original note's MNIST experiment.

Read top to bottom: config -> data -> for each net: model, optimizer, schedule -> epochs of steps ->
validation, checkpoints -> test with the best epoch -> summary table, CSV, JSON, curves.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from . import data as data_mod
from . import distributed as dist_mod
from .checkpoint import (FORMAT, CheckpointError, load_checkpoint, remove_stale_temporaries, save_atomic,
                         save_safetensors)
from .memory import peak_step_memory
from .models import MLP, SEED_WIDTHS, parse_layer_spec

__all__ = ["TrainConfig", "run", "train_net", "evaluate", "build_model", "DEFAULT_LR"]

# Measured on MNIST, seed widths, 10 epochs, batch 128, AdamW (weight decay 1e-4) + one-cycle + label
# smoothing 0.1 (README, "Training recipe"). DFT nets diverge (dead ReLUs) from lr 1e-2 up.
DEFAULT_LR = {"dft": 3e-3, "dense": 1e-3, "block": 1e-3}


def default_lr(spec: str) -> float:
    return DEFAULT_LR[parse_layer_spec(spec)[0]]


@dataclass
class TrainConfig:
    dataset: str = "mnist"
    data_dir: str | None = None
    layer: str = "both"  # dft | dense | both
    widths: tuple[int, ...] = SEED_WIDTHS
    epochs: int = 7  # the default run (both nets) fits in 6 minutes on 2 CPU cores
    batch_size: int = 128
    lr: float | None = None  # None: DEFAULT_LR of each layer kind
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    resume: bool = False
    max_steps: int | None = None
    quiet: bool = False
    limit: int | None = None  # use at most this many training images (demos, tests)
    val_size: int = 5000
    recompute_spectrum: bool = False
    eval_batch_size: int = 0  # 0: 1000, fewer for very wide nets (2^27 activations per batch at most)
    checkpoint_every: int = 0  # also checkpoint every N steps (0: at epoch ends only)
    kinds: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self):
        if not self.eval_batch_size:
            self.eval_batch_size = max(16, min(1000, 2**27 // max(self.widths)))
        self.kinds = ("dft", "dense") if self.layer == "both" else (self.layer,)
        for kind in self.kinds:
            parse_layer_spec(kind)  # ValueError for unknown variants
        self.widths = tuple(self.widths)


# Every weight of a circulant layer touches every output, and Adam's early, sign-like steps move the
# whole spectrum together: the gain at DC changes by up to n * lr per step. lr 3e-3 trains the seed
# net (n <= 4096) but a 784-16384-16384-10 DFT net diverged with it (11% test accuracy), so wider
# DFT layers get lr * 4096 / n.
_DFT_LR_WIDTH = 4096


def param_groups(model: torch.nn.Module, lr: float) -> list[dict]:
    """AdamW parameter groups: DFT weights wider than 4096 get a proportionally smaller lr."""
    from dftnet import DFTLinear

    scaled, seen = {}, set()
    for m in model.modules():
        if isinstance(m, DFTLinear) and m.n > _DFT_LR_WIDTH:
            scaled.setdefault(_DFT_LR_WIDTH / m.n, []).append(m.weight)
            seen.add(id(m.weight))
    rest = [p for p in model.parameters() if id(p) not in seen]
    return [{"params": rest, "lr": lr}] + [{"params": ps, "lr": lr * f} for f, ps in sorted(scaled.items())]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


def build_model(spec: str, widths, recompute_spectrum: bool = False, device=None) -> MLP:
    """The MLP of a variant name (``dft``, ``dense``, ``dft-sign``, ``block-32``; see ``parse_layer_spec``)."""
    kwargs = {"recompute_spectrum": True} if (spec.startswith("dft") and recompute_spectrum) else {}
    return MLP.from_spec(spec, widths, device=device, **kwargs)


@torch.no_grad()
def evaluate(model, x, y, batch_size=1000, num_classes=None, ctx: dist_mod.Context | None = None):
    """Mean loss, accuracy and (optionally) the confusion matrix [true, predicted] over (x, y).

    Under DDP each rank evaluates every world_size-th example and the sums are reduced.
    """
    if ctx is not None and ctx.distributed:
        loss_sum, correct, _ = evaluate(model, x[ctx.rank :: ctx.world_size], y[ctx.rank :: ctx.world_size],
                                        batch_size)
        n_local = len(x[ctx.rank :: ctx.world_size])
        loss_sum, correct = dist_mod.all_reduce_sum(ctx, [loss_sum * n_local, correct * n_local])
        return loss_sum / max(len(x), 1), correct / max(len(x), 1), None
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct = 0.0, 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long) if num_classes else None
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        logits = model(xb)
        total_loss += F.cross_entropy(logits, yb, reduction="sum").item()
        pred = logits.argmax(1)
        correct += (pred == yb).sum().item()
        if confusion is not None:
            confusion += torch.bincount(
                (yb * num_classes + pred).cpu(), minlength=num_classes * num_classes
            ).reshape(num_classes, num_classes)
    model.train()
    n = max(len(x), 1)
    return total_loss / n, correct / n, confusion


def _epoch_order(n: int, seed: int, epoch: int, ctx: dist_mod.Context) -> torch.Tensor:
    """This rank's examples of epoch ``epoch``, in order: a function of (seed, epoch) alone, so resuming
    replays it. ``DistributedSampler`` deals rank r every world_size-th example of one shuffle, so the
    k-th global batch is the same set of examples for any number of processes.
    """
    sampler = DistributedSampler(range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(iter(sampler)), dtype=torch.long)


class TrainingInterrupted(Exception):
    """Ctrl-C: training stopped after a step, with a resumable checkpoint at ``path``."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


# Test hook: when > 0, the stop flag rises after this many steps of this process, a deterministic
# stand-in for Ctrl-C. The tests set it (in a subprocess, through a small wrapper, under torchrun too).
STOP_AFTER_STEPS = 0


class _StopFlag:
    """Turns the first SIGINT into a flag the loop checks between steps (so no step is cut in half)."""

    def __init__(self):
        self.set = False
        self.steps = 0
        self.stop_after = STOP_AFTER_STEPS
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.set:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.set = True

    def check(self) -> bool:
        self.steps += 1
        return self.set or (self.stop_after > 0 and self.steps >= self.stop_after)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _checkpoint(model, opt, sched, cfg, kind, position, step, history, best, accum) -> dict:
    return {
        "format": FORMAT,
        "model": {"kind": kind, "widths": list(cfg.widths), "recompute_spectrum": cfg.recompute_spectrum},
        "dataset": cfg.dataset,
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "position": {"epoch": position[0], "batch": position[1]},  # where training continues
        "step": step,
        "accum": accum,  # running train metrics of the current epoch
        "history": history,
        "best": best,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }


def _new_accum() -> dict:
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


def train_net(kind: str, cfg: TrainConfig, splits, out_dir: Path, ctx: dist_mod.Context, log=print) -> dict:
    """Train one net, checkpointing each epoch; return its results (test metrics of the best epoch).

    ``cfg.batch_size`` is the global batch: under DDP each of the world_size processes takes its share.
    """
    device, net_dir, last = ctx.device, out_dir / kind, out_dir / kind / "last.pt"
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of the number of processes "
                         f"({ctx.world_size})")
    local_batch = cfg.batch_size // ctx.world_size
    torch.manual_seed(cfg.seed)
    model = build_model(kind, cfg.widths, cfg.recompute_spectrum, device)
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
    epoch, batch, step, history, accum = 0, 0, 0, [], _new_accum()
    best = {"val_acc": -1.0, "epoch": -1}

    if cfg.resume and ctx.is_main and net_dir.exists():
        remove_stale_temporaries(net_dir)
    if cfg.resume and last.exists():
        ck = load_checkpoint(last, map_location=device)
        if ck["model"]["kind"] != kind or tuple(ck["model"]["widths"]) != tuple(cfg.widths):
            raise CheckpointError(f"checkpoint {last} is for a different model: {ck['model']}")
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        epoch, batch = ck["position"]["epoch"], ck["position"]["batch"]
        step, history, best = ck["step"], ck["history"], ck["best"]
        accum = ck["accum"] if ctx.is_main else {**_new_accum(), "seconds": ck["accum"]["seconds"]}
        log(f"{kind}: resumed from {last} at epoch {epoch + 1}, batch {batch} (step {step})")
    net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if ctx.distributed else model

    def reduce_accum():
        """Make rank 0 hold the global running sums (what a checkpoint stores), other ranks zero."""
        keys = ("loss_sum", "correct", "seen")
        total = dist_mod.all_reduce_sum(ctx, [accum[k] for k in keys])
        for k, v in zip(keys, total):
            accum[k] = v if ctx.is_main else 0

    def save(path, position):
        if ctx.is_main:
            save_atomic(_checkpoint(model, opt, sched, cfg, kind, position, step, history, best, accum), path)
        dist_mod.barrier(ctx)

    model.train()
    with _StopFlag() as stop:
        while epoch < cfg.epochs and step < total_steps:
            order = _epoch_order(len(splits.train_x), cfg.seed, epoch, ctx)
            n_steps = min(steps_per_epoch, batch + total_steps - step)
            bar = tqdm(total=n_steps, initial=batch, desc=f"{kind:>5} {epoch + 1}/{cfg.epochs}",
                       disable=cfg.quiet or not ctx.is_main, leave=False, dynamic_ncols=True, unit="step")
            t0 = time.perf_counter()
            while batch < n_steps:
                idx = order[batch * local_batch : (batch + 1) * local_batch]
                xb, yb = splits.train_x[idx].to(device), splits.train_y[idx].to(device)
                logits = net(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                batch += 1
                accum["loss_sum"] += loss.item() * len(idx)
                accum["correct"] += (logits.argmax(1) == yb).sum().item()
                accum["seen"] += len(idx)
                if not bar.disable:
                    bar.update()
                    if batch % 10 == 0 or batch == n_steps:
                        rate = accum["seen"] * ctx.world_size / max(accum["seconds"] + time.perf_counter() - t0, 1e-9)
                        bar.set_postfix(loss=f"{accum['loss_sum'] / max(accum['seen'], 1):.4f}",
                                        acc=f"{accum['correct'] / max(accum['seen'], 1):.2%}", ex_s=f"{rate:,.0f}")
                stopping = dist_mod.broadcast_flag(ctx, stop.check())
                if stopping or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and batch < n_steps):
                    accum["seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    reduce_accum()
                    save(last, (epoch, batch))
                    if stopping:
                        bar.close()
                        raise TrainingInterrupted(last)
            accum["seconds"] += time.perf_counter() - t0
            bar.close()
            val_loss, val_acc, _ = evaluate(model, splits.val_x, splits.val_y, cfg.eval_batch_size, ctx=ctx)
            loss_sum, correct, seen = dist_mod.all_reduce_sum(
                ctx, [accum["loss_sum"], accum["correct"], accum["seen"]])
            seconds = accum["seconds"]
            row = {
                "layer": kind, "epoch": epoch + 1, "steps": step,
                "train_loss": loss_sum / seen, "train_acc": correct / seen,
                "val_loss": val_loss, "val_acc": val_acc,
                "seconds": seconds, "examples_per_s": seen / seconds,
                "epoch_fraction": n_steps / steps_per_epoch, "lr": sched.get_last_lr()[0],
            }
            history.append(row)
            log(f"{kind:>5} epoch {epoch + 1:>2}/{cfg.epochs}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.2%}  val loss {val_loss:.4f} acc {val_acc:.2%}  "
                f"{seconds:.1f} s  {row['examples_per_s']:,.0f} ex/s")
            epoch, batch, accum = epoch + 1, 0, _new_accum()
            if val_acc > best["val_acc"]:
                best = {"val_acc": val_acc, "val_loss": val_loss, "epoch": epoch}
                save(net_dir / "best.pt", (epoch, 0))
            save(last, (epoch, 0))

    # The test set is evaluated once, with the epoch that validation chose.
    if (net_dir / "best.pt").exists():
        model.load_state_dict(load_checkpoint(net_dir / "best.pt", map_location=device)["state_dict"])
    if ctx.is_main:
        save_safetensors(model.state_dict(), net_dir / "model.safetensors", {
            "kind": kind, "widths": ",".join(map(str, cfg.widths)), "dataset": cfg.dataset,
            "best_epoch": str(best["epoch"])})
    test_loss, test_acc, _ = evaluate(model, splits.test_x, splits.test_y, cfg.eval_batch_size, ctx=ctx)
    full = [r for r in history if r["epoch_fraction"] == 1.0] or history
    memory = math.nan
    if ctx.is_main:
        # clone: a slice would keep (and be charged for) the whole training set's storage
        memory = peak_step_memory(model, splits.train_x[:local_batch].to(device).clone(),
                                  splits.train_y[:local_batch].to(device).clone())
    return {
        "layer": kind,
        "parameters": sum(p.numel() for p in model.parameters()),
        "test_acc": test_acc, "test_loss": test_loss,
        "best_epoch": best["epoch"], "best_val_acc": best["val_acc"],
        "seconds_per_epoch": (sum(r["seconds"] / r["epoch_fraction"] for r in full) / len(full))
        if full else math.nan,
        "examples_per_s": (sum(r["examples_per_s"] for r in full) / len(full)) if full else math.nan,
        "peak_memory_bytes": memory,
        "epochs_run": len(history), "steps": step, "processes": ctx.world_size,
    }


# ----------------------------------------------------------------------------------- reporting


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(b) < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


def format_table(results: list[dict]) -> str:
    """The side-by-side table, with a DFT/dense ratio row when both nets ran."""
    cols = ["net", "parameters", "test acc", "s/epoch", "examples/s", "peak memory"]
    rows = [[r["layer"], f"{r['parameters']:,}", f"{r['test_acc']:.2%}", f"{r['seconds_per_epoch']:.1f}",
             f"{r['examples_per_s']:,.0f}", _fmt_bytes(r["peak_memory_bytes"])] for r in results]
    by = {r["layer"]: r for r in results}
    if "dft" in by and "dense" in by:
        d, e = by["dft"], by["dense"]
        rows.append(["dft/dense", f"1/{e['parameters'] / d['parameters']:.0f}",
                     f"{d['test_acc'] - e['test_acc']:+.2%} pts",
                     f"1/{e['seconds_per_epoch'] / d['seconds_per_epoch']:.1f}",
                     f"{d['examples_per_s'] / e['examples_per_s']:.1f}x",
                     f"1/{e['peak_memory_bytes'] / max(d['peak_memory_bytes'], 1):.1f}"])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    kinds = list(dict.fromkeys(r["layer"] for r in history))  # in order of appearance
    colors = {"dft": "tab:blue", "dense": "tab:orange"}
    for i, kind in enumerate(kinds):
        color = colors.get(kind, f"C{i + 2}")
        rows = [r for r in history if r["layer"] == kind]
        ep = [r["epoch"] for r in rows]
        ax_loss.plot(ep, [r["train_loss"] for r in rows], "--", color=color, label=f"{kind} train")
        ax_loss.plot(ep, [r["val_loss"] for r in rows], "-o", color=color, ms=3, label=f"{kind} val")
        ax_acc.plot(ep, [100 * r["train_acc"] for r in rows], "--", color=color, label=f"{kind} train")
        ax_acc.plot(ep, [100 * r["val_acc"] for r in rows], "-o", color=color, ms=3, label=f"{kind} val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_out_dir(dataset: str) -> Path:
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{dataset}"


def _resolve_out_dir(cfg: TrainConfig, ctx: dist_mod.Context) -> Path:
    out = cfg.out or str(default_out_dir(cfg.dataset))
    if ctx.distributed:  # every rank must use rank 0's folder (timestamps differ)
        box = [out]
        torch.distributed.broadcast_object_list(box, src=0)
        out = box[0]
    return Path(out)


def run(cfg: TrainConfig, log=print) -> dict:
    """The whole job; returns the summary that is also written to ``summary.json``.

    Under ``torchrun`` it trains data-parallel (DDP); only rank 0 prints and writes files.
    """
    ctx = dist_mod.setup(resolve_device(cfg.device))
    try:
        return _run(cfg, ctx, log if ctx.is_main else (lambda *a, **k: None))
    finally:
        dist_mod.teardown(ctx)


def _run(cfg: TrainConfig, ctx: dist_mod.Context, log) -> dict:
    out_dir = _resolve_out_dir(cfg, ctx)
    if cfg.resume and not out_dir.exists():
        raise ValueError(f"--resume: output folder {out_dir} does not exist (give the --out of the run to resume)")
    if ctx.is_main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PermissionError(f"cannot create output folder {out_dir}: {e.strerror}") from None
        if not os.access(out_dir, os.W_OK):
            raise PermissionError(f"output folder {out_dir} is not writable")
    dist_mod.barrier(ctx)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    config.update(out=str(out_dir), resolved_device=str(ctx.device), processes=ctx.world_size,
                  torch=torch.__version__, threads=torch.get_num_threads())

    splits = data_mod.load_splits(cfg.dataset, cfg.data_dir, val_size=cfg.val_size, seed=cfg.seed,
                                  limit=cfg.limit)
    info = splits.info
    if cfg.widths[0] != info.input_size or cfg.widths[-1] != info.num_classes:
        raise ValueError(f"--widths must start with {info.input_size} (the input size of {info.name}) and "
                         f"end with {info.num_classes} (its classes), got {','.join(map(str, cfg.widths))}")
    if ctx.is_main:
        (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    log(f"data: {splits.source}: {len(splits.train_x)} train / {len(splits.val_x)} val / "
        f"{len(splits.test_x)} test;  device {ctx.device}"
        + (f" x {ctx.world_size} processes" if ctx.distributed else "") + f";  out {out_dir}")

    results, history = [], []
    for kind in cfg.kinds:
        results.append(train_net(kind, cfg, splits, out_dir, ctx, log))
        history += load_checkpoint(out_dir / kind / "last.pt")["history"]

    table = format_table(results)
    summary = {"config": config, "data_source": splits.source, "results": results, "table": table}
    if ctx.is_main:
        with open(out_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0].keys()) if history else ["layer"])
            writer.writeheader()
            writer.writerows(history)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if history:
            plot_curves(history, out_dir / "curves.png")
    log("\n" + table + "\n")
    log(f"wrote {out_dir}/: config.json metrics.csv summary.json curves.png "
        + " ".join(f"{k}/best.pt {k}/last.pt {k}/model.safetensors" for k in cfg.kinds))
    return summary
