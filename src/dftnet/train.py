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
from tqdm import tqdm

from . import data as data_mod
from .checkpoint import FORMAT, CheckpointError, load_checkpoint, save_atomic
from .memory import peak_step_memory
from .models import MLP, SEED_WIDTHS

__all__ = ["TrainConfig", "run", "train_net", "evaluate", "build_model", "DEFAULT_LR"]

# Measured on MNIST, seed widths, 10 epochs, batch 128, Adam + one-cycle (README, "Training recipe").
DEFAULT_LR = {"dft": 3e-3, "dense": 1e-3}


@dataclass
class TrainConfig:
    dataset: str = "mnist"
    data_dir: str | None = None
    layer: str = "both"  # dft | dense | both
    widths: tuple[int, ...] = SEED_WIDTHS
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None  # None: DEFAULT_LR of each layer kind
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    resume: bool = False
    max_steps: int | None = None
    quiet: bool = False
    limit: int | None = None  # use at most this many training images (demos, tests)
    val_size: int = 5000
    recompute_spectrum: bool = False
    eval_batch_size: int = 1000
    checkpoint_every: int = 0  # also checkpoint every N steps (0: at epoch ends only)
    kinds: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self):
        self.kinds = ("dft", "dense") if self.layer == "both" else (self.layer,)
        self.widths = tuple(self.widths)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


def build_model(kind: str, widths, recompute_spectrum: bool = False, device=None) -> MLP:
    kwargs = {"recompute_spectrum": True} if (kind == "dft" and recompute_spectrum) else {}
    return MLP(widths, layer=kind, device=device, **kwargs)


@torch.no_grad()
def evaluate(model, x, y, batch_size=1000, num_classes=None):
    """Mean loss, accuracy and (optionally) the confusion matrix [true, predicted] over (x, y)."""
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


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of epoch ``epoch``: a function of (seed, epoch) alone, so resuming replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class TrainingInterrupted(Exception):
    """Ctrl-C: training stopped after a step, with a resumable checkpoint at ``path``."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


class _StopFlag:
    """Turns the first SIGINT into a flag the loop checks between steps (so no step is cut in half)."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.set:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.set = True

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


def train_net(kind: str, cfg: TrainConfig, splits, out_dir: Path, device: torch.device, log=print) -> dict:
    """Train one net, checkpointing each epoch; return its results (test metrics of the best epoch)."""
    net_dir = out_dir / kind
    torch.manual_seed(cfg.seed)
    model = build_model(kind, cfg.widths, cfg.recompute_spectrum, device)
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[kind]
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    n_train = len(splits.train_x)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total_steps, 1))
    epoch, batch, step, history, accum = 0, 0, 0, [], _new_accum()
    best = {"val_acc": -1.0, "epoch": -1}

    last = net_dir / "last.pt"
    if cfg.resume and last.exists():
        ck = load_checkpoint(last, map_location=device)
        if ck["model"]["kind"] != kind or tuple(ck["model"]["widths"]) != tuple(cfg.widths):
            raise CheckpointError(f"checkpoint {last} is for a different model: {ck['model']}")
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        epoch, batch = ck["position"]["epoch"], ck["position"]["batch"]
        step, history, best, accum = ck["step"], ck["history"], ck["best"], ck["accum"]
        log(f"{kind}: resumed from {last} at epoch {epoch + 1}, batch {batch} (step {step})")

    def save_last():
        save_atomic(_checkpoint(model, opt, sched, cfg, kind, (epoch, batch), step, history, best, accum), last)

    model.train()
    with _StopFlag() as stop:
        while epoch < cfg.epochs and step < total_steps:
            order = _epoch_order(n_train, cfg.seed, epoch)
            n_steps = min(steps_per_epoch, batch + total_steps - step)
            bar = tqdm(total=n_steps, initial=batch, desc=f"{kind:>5} {epoch + 1}/{cfg.epochs}",
                       disable=cfg.quiet, leave=False, dynamic_ncols=True, unit="step")
            t0 = time.perf_counter()
            while batch < n_steps:
                idx = order[batch * cfg.batch_size : (batch + 1) * cfg.batch_size]
                xb, yb = splits.train_x[idx].to(device), splits.train_y[idx].to(device)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                batch += 1
                accum["loss_sum"] += loss.item() * len(idx)
                accum["correct"] += (logits.argmax(1) == yb).sum().item()
                accum["seen"] += len(idx)
                if not cfg.quiet:
                    bar.update()
                    if batch % 10 == 0 or batch == n_steps:
                        elapsed = accum["seconds"] + time.perf_counter() - t0
                        bar.set_postfix(loss=f"{accum['loss_sum'] / accum['seen']:.4f}",
                                        acc=f"{accum['correct'] / accum['seen']:.2%}",
                                        ex_s=f"{accum['seen'] / max(elapsed, 1e-9):,.0f}")
                if stop.set or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    accum["seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    save_last()
                    if stop.set:
                        bar.close()
                        raise TrainingInterrupted(last)
            accum["seconds"] += time.perf_counter() - t0
            bar.close()
            val_loss, val_acc, _ = evaluate(model, splits.val_x, splits.val_y, cfg.eval_batch_size)
            seen, seconds = accum["seen"], accum["seconds"]
            row = {
                "layer": kind, "epoch": epoch + 1, "steps": step,
                "train_loss": accum["loss_sum"] / seen, "train_acc": accum["correct"] / seen,
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
                save_atomic(_checkpoint(model, opt, sched, cfg, kind, (epoch, 0), step, history, best, accum),
                            net_dir / "best.pt")
            save_last()

    # The test set is evaluated once, with the epoch that validation chose.
    if (net_dir / "best.pt").exists():
        model.load_state_dict(load_checkpoint(net_dir / "best.pt", map_location=device)["state_dict"])
    test_loss, test_acc, _ = evaluate(model, splits.test_x, splits.test_y, cfg.eval_batch_size)
    full = [r for r in history if r["epoch_fraction"] == 1.0] or history
    seconds_per_epoch = (sum(r["seconds"] / r["epoch_fraction"] for r in full) / len(full)) if full else math.nan
    memory = peak_step_memory(model, splits.train_x[: cfg.batch_size].to(device),
                              splits.train_y[: cfg.batch_size].to(device))
    return {
        "layer": kind,
        "parameters": sum(p.numel() for p in model.parameters()),
        "test_acc": test_acc, "test_loss": test_loss,
        "best_epoch": best["epoch"], "best_val_acc": best["val_acc"],
        "seconds_per_epoch": seconds_per_epoch,
        "examples_per_s": (sum(r["examples_per_s"] for r in full) / len(full)) if full else math.nan,
        "peak_memory_bytes": memory,
        "epochs_run": len(history), "steps": step,
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
    for kind, color in (("dft", "tab:blue"), ("dense", "tab:orange")):
        rows = [r for r in history if r["layer"] == kind]
        if not rows:
            continue
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


def run(cfg: TrainConfig, log=print) -> dict:
    """The whole job; returns the summary that is also written to ``summary.json``."""
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.out) if cfg.out else default_out_dir(cfg.dataset)
    if cfg.resume and not out_dir.exists():
        raise ValueError(f"--resume: output folder {out_dir} does not exist (give the --out of the run to resume)")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"output folder {out_dir} is not writable")
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    config.update(out=str(out_dir), resolved_device=str(device), torch=torch.__version__,
                  threads=torch.get_num_threads())
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    splits = data_mod.load_splits(cfg.dataset, cfg.data_dir, val_size=cfg.val_size, seed=cfg.seed,
                                  limit=cfg.limit)
    info = splits.info
    if cfg.widths[0] != info.input_size or cfg.widths[-1] != info.num_classes:
        raise ValueError(f"--widths must start with {info.input_size} (the input size of {info.name}) and "
                         f"end with {info.num_classes} (its classes), got {','.join(map(str, cfg.widths))}")
    log(f"data: {splits.source}: {len(splits.train_x)} train / {len(splits.val_x)} val / "
        f"{len(splits.test_x)} test;  device {device};  out {out_dir}")

    results, history = [], []
    for kind in cfg.kinds:
        res = train_net(kind, cfg, splits, out_dir, device, log)
        results.append(res)
        ck = load_checkpoint(out_dir / kind / "last.pt")
        history += ck["history"]

    with open(out_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0].keys()) if history else ["layer"])
        writer.writeheader()
        writer.writerows(history)
    table = format_table(results)
    summary = {"config": config, "data_source": splits.source, "results": results, "table": table}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if history:
        plot_curves(history, out_dir / "curves.png")
    log("\n" + table + "\n")
    log(f"wrote {out_dir}/: config.json metrics.csv summary.json curves.png "
        + " ".join(f"{k}/best.pt {k}/last.pt" for k in cfg.kinds))
    return summary
