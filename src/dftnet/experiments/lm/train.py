"""``dftnet lm``: dense, block-circulant and circulant MLPs in a small byte-level GPT, trained offline on
the standard library's source (:mod:`.corpus`, :mod:`.gpt`).

Read top to bottom. For each variant (:func:`train_variant`), one after another:

1. :func:`build_variant`: the model (same seed, so the same embeddings and attention), AdamW (one
   parameter group: the layers' spectral parametrisation makes one lr right at every width), linear
   warmup then cosine decay to a tenth of the peak, gradient clipping at 1;
2. :func:`.harness.loop.maybe_resume`: continue from ``<variant>/last.pt`` (exactly: the batch of a step
   depends on (seed, step) alone, so every variant sees the same data in the same order, and so does a
   resumed run);
3. :func:`.harness.loop.fit`, the loop every command shares, asking :class:`VariantRun` for the batches,
   the loss and validation bits per byte every ``--eval-every`` steps (and a checkpoint there);
4. :func:`.measure.finish_variant`: a larger final validation, peak step memory, where a step's time
   goes (MLP, attention, the rest) and a text sample from a fixed prompt.

The job (:func:`run`) then writes the table, ``metrics.csv``, ``summary.json`` and ``lm.png``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..configflags import config_dict
from ..harness import distributed as dist_mod
from ..harness import preflight
from ..harness.checkpoint import FORMAT, load_checkpoint
from ..harness.device import resolve_device
from ..harness.interrupt import TrainingInterrupted
from ..harness.loop import Run, fit, maybe_resume, train_step
from ..harness.reproduce import changed_environment, environment
from ..harness.runfolder import refuse_changed_config
from ..harness.writes import atomic_path, write_text_atomic
from ..tables import write_csv
from . import corpus as corpus_mod
from .config import DEFAULT_VARIANTS, LMConfig
from .gpt import GPT, VOCAB
from .measure import _FlatLogits, bpb_at, evaluate_bpb, finish_variant
from .report import lm_table, plot_lm

__all__ = ["LMConfig", "TrainingInterrupted", "run", "train_variant", "DEFAULT_VARIANTS", "PROMPT"]

PROMPT = b"def read_config(path):\n    "


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine decay to 0.1 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def _new_accum() -> dict:
    return {"loss_sum": 0.0, "count": 0}


@dataclass(kw_only=True)
class VariantRun(Run):
    """One variant in training: batches drawn by (seed, step), validation bits per byte every
    ``eval_every`` steps (none when ``windows`` is None: a study cell measures at its end)."""

    cfg: LMConfig
    ctx: dist_mod.Context
    local_batch: int
    corpus: Any = None  # :class:`.corpus.Corpus`, set by the caller before training
    windows: torch.Tensor | None = None  # validation windows
    var_dir: Path | None = None
    accum: dict = field(default_factory=_new_accum)  # training loss since the last validation
    recent: list = field(default_factory=list)  # the last 20 losses, for the progress bar
    losses: list | None = None  # every step's loss, when a list is given

    command = "lm"
    clip = 1.0
    classes = VOCAB

    def peak_lr(self) -> float:
        return self.cfg.lr

    def next_batch(self):
        cfg = self.cfg
        starts = corpus_mod.batch_indices(len(self.corpus.train), cfg.context, cfg.batch_size, cfg.seed, self.step)
        mine = starts[self.ctx.rank * self.local_batch:(self.ctx.rank + 1) * self.local_batch]
        return corpus_mod.get_batch(self.corpus.train, mine, cfg.context, self.ctx.device)

    def loss(self, output, target):
        return torch.nn.functional.cross_entropy(output.flatten(0, 1), target.flatten())

    def record(self, loss, output, target, seconds):
        self.accum["loss_sum"] += loss
        self.accum["count"] += 1
        self.recent = (self.recent + [loss])[-20:]
        if self.losses is not None:
            self.losses.append(loss)

    def postfix(self) -> dict:
        tokens = self.cfg.batch_size * self.cfg.context
        return {"loss": f"{sum(self.recent) / len(self.recent):.3f}",
                "tok_s": f"{tokens * self.step / max(self.seconds, 1e-9):,.0f}"}

    def evaluation_due(self) -> bool:
        if self.windows is None or (self.history and self.history[-1]["step"] == self.step):
            return False
        return self.step % self.cfg.eval_every == 0 or self.step == self.total_steps

    def evaluate(self) -> str:
        """Validation bits per byte now, and the training loss since the last validation: one metrics row."""
        cfg = self.cfg
        bpb = evaluate_bpb(self.model, self.windows, cfg.batch_size, self.ctx)
        loss_sum, count = dist_mod.all_reduce_sum(self.ctx, [self.accum["loss_sum"], self.accum["count"]])
        row = {"variant": self.name, "step": self.step, "tokens": self.step * cfg.batch_size * cfg.context,
               "seconds": self.seconds, "train_bpb": loss_sum / count / math.log(2) if count else math.nan,
               "val_bpb": bpb, "lr": self.sched.get_last_lr()[0]}
        self.history.append(row)
        self.accum = _new_accum()
        if not count:
            return f"{self.name:>9} step {self.step:>5}  val bpb {bpb:.3f}"
        return (f"{self.name:>9} step {self.step:>5}  train bpb {row['train_bpb']:.3f}  val bpb {bpb:.3f}  "
                f"{self.seconds:.1f} s")

    def checkpoint(self) -> dict:
        """Rank 0 holds the global running loss (reduced here)."""
        total = dist_mod.all_reduce_sum(self.ctx, [self.accum["loss_sum"], self.accum["count"]])
        self.accum = {"loss_sum": total[0], "count": int(total[1])} if self.ctx.is_main else _new_accum()
        return {
            "format": FORMAT, "kind": "lm",
            "model": {"variant": self.name, **asdict(self.cfg.gpt(self.name))},
            "state_dict": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "step": self.step, "seconds": self.seconds,
            "history": self.history, "accum": self.accum, "config": config_dict(self.cfg),
        }

    def same_model(self, meta: dict) -> bool:
        return meta == {"variant": self.name, **asdict(self.cfg.gpt(self.name))}

    def restore(self, ck: dict, is_main: bool) -> None:
        self.step, self.seconds, self.history = ck["step"], ck["seconds"], ck["history"]
        self.accum = ck["accum"] if is_main else _new_accum()


# ------------------------------------------------------------------------- model, optimizer, schedule


def build_variant(variant: str, cfg: LMConfig, ctx: dist_mod.Context, corpus=None) -> VariantRun:
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of the number of processes "
                         f"({ctx.world_size})")
    model = GPT(cfg.gpt(variant), seed=cfg.seed).to(ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95),
                            weight_decay=cfg.weight_decay)
    warmup, total = cfg.warmup, cfg.max_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total))
    return VariantRun(variant, model, opt, sched, cfg.max_steps, cfg=cfg, ctx=ctx,
                      local_batch=cfg.batch_size // ctx.world_size, corpus=corpus)


def train_variant(variant: str, cfg: LMConfig, corpus, windows, out_dir: Path, ctx, log=print) -> dict:
    """Train one variant to ``max_steps`` (or continue it), then measure it; returns its results."""
    r = build_variant(variant, cfg, ctx, corpus)
    r.windows, r.var_dir = windows, out_dir / variant
    if cfg.resume:
        maybe_resume(r, r.var_dir, ctx, log)
    fit(r, ctx, r.var_dir, quiet=cfg.quiet, log=log)
    return finish_variant(r, cfg, corpus, ctx, PROMPT, log)


# ------------------------------------------------------------------------- a time budget


def step_seconds(variant: str, cfg: LMConfig, corpus, ctx: dist_mod.Context, steps: int = 5) -> float:
    """The median time of one training step of ``variant`` on this machine, from a throwaway model
    (2 warm-up steps, then ``steps`` timed ones), averaged over the processes so every rank agrees."""
    r = build_variant(variant, cfg, ctx, corpus)
    x, y = r.next_batch()
    times = []
    for _ in range(2 + steps):
        t0 = time.perf_counter()
        train_step(r.model, r, x, y)
        times.append(time.perf_counter() - t0)
    median = sorted(times[2:])[steps // 2]
    return dist_mod.all_reduce_sum(ctx, [median])[0] / ctx.world_size


def budget_steps(cfg: LMConfig, corpus, ctx: dist_mod.Context, log) -> dict[str, int]:
    """Each variant's step count for ``cfg.budget`` seconds of training: budget / its measured step time."""
    steps = {}
    for variant in cfg.variants:
        seconds = step_seconds(variant, cfg, corpus, ctx)
        steps[variant] = max(1, int(cfg.budget / seconds))
        log(f"{variant}: {1e3 * seconds:.1f} ms a step -> {steps[variant]} steps in {cfg.budget:g} s")
    return steps


# ------------------------------------------------------------------------- the job


RESUME_KEYS = ("variants", "d_model", "layers", "heads", "mlp_ratio", "context", "batch_size", "max_steps", "lr",
               "weight_decay", "warmup_steps", "seed", "limit", "corpus_sha256", "structure", "budget")


def run(cfg: LMConfig, log=print) -> dict:
    """The whole job; returns the summary that is also written to ``summary.json``. Under ``torchrun`` it
    trains data-parallel; only rank 0 prints, writes files and holds the folder's lock."""
    with dist_mod.job(resolve_device(cfg.device), cfg.out, "lm", default_name="lm", resume=cfg.resume,
                      overwrite=cfg.overwrite, log=log) as (ctx, out_dir, log):
        return _run(cfg, ctx, out_dir, log)


def _run(cfg: LMConfig, ctx: dist_mod.Context, out_dir: Path, log) -> dict:
    corpus = corpus_mod.load_corpus(limit=cfg.limit)
    info = corpus.info
    config = {"command": "lm", **config_dict(cfg),
              "corpus_sha256": info["sha256"], "corpus": info, "out": str(out_dir),
              "resolved_device": str(ctx.device), "processes": ctx.world_size, **environment(ctx.device),
              "prompt": PROMPT.decode()}
    if cfg.resume:  # the models, the data and its order must be the run's
        dist_mod.on_main(ctx, lambda: refuse_changed_config(out_dir, config, RESUME_KEYS))
        note = changed_environment(out_dir, config) if ctx.is_main else None
        if note:
            log(note)
    for variant in cfg.variants if cfg.memory_check else ():  # before anything is allocated or written
        dist_mod.on_main(ctx, partial(check_memory, variant, cfg, ctx, max(1, cfg.batch_size // ctx.world_size)))
    steps = {v: cfg.max_steps for v in cfg.variants}
    if cfg.budget is not None:  # measured once; a resumed run keeps the step counts it started with
        recorded = json.loads((out_dir / "config.json").read_text()).get("steps_by_variant") if cfg.resume and \
            (out_dir / "config.json").is_file() else None
        steps = recorded or budget_steps(cfg, corpus, ctx, log)
    config["steps_by_variant"] = steps
    dist_mod.on_main(ctx, lambda: write_text_atomic(out_dir / "config.json", json.dumps(config, indent=2) + "\n"))
    windows = corpus_mod.eval_windows(corpus.val, cfg.context, cfg.eval_windows)
    log(f"corpus: {info['files']} files of {info['root']} ({info['bytes'] / 1e6:.1f} MB, sha256 "
        f"{info['sha256'][:12]}): {len(corpus.train):,} train / {len(corpus.val):,} val bytes;  device "
        f"{ctx.device}" + (f" x {ctx.world_size} processes" if ctx.distributed else "") + f";  out {out_dir}")

    results, history = [], []
    for variant in cfg.variants:
        results.append(train_variant(variant, replace(cfg, max_steps=steps[variant]), corpus, windows, out_dir,
                                     ctx, log))
        history += load_checkpoint(out_dir / variant / "last.pt")["history"] if ctx.is_main else []

    equal_s = min(r["seconds"] for r in results)  # the fastest variant's training time
    for r in results:
        r["equal_time_s"], r["val_bpb_at_equal_time"] = equal_s, bpb_at(r["curve"], equal_s)
    table = lm_table(results)
    samples = "\n".join(f"--- {r['variant']}: {PROMPT.decode()!r} ->\n{PROMPT.decode()}{r['sample']}\n"
                        for r in results)
    summary = {"config": config, "results": results, "table": table}
    if ctx.is_main:
        with atomic_path(out_dir / "metrics.csv") as tmp:
            write_csv(tmp, history, list(history[0].keys()))
        write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        with atomic_path(out_dir / "lm.png") as tmp:
            plot_lm(history, tmp)
    log("\n" + table + "\n\n" + samples)
    log(f"wrote {out_dir}/: config.json metrics.csv summary.json lm.png "
        + " ".join(f"{v}/last.pt" for v in cfg.variants))
    return summary


def check_memory(variant: str, cfg: LMConfig, ctx, local_batch: int) -> None:
    """Refuse, before anything is allocated, a variant whose training step would not fit
    (:mod:`..harness.preflight`)."""
    def batch(n):
        return (torch.zeros(n, cfg.context, dtype=torch.long, device=ctx.device),
                torch.zeros(n * cfg.context, dtype=torch.long, device=ctx.device))

    est = preflight.estimate(lambda: preflight.moved(_FlatLogits(GPT(cfg.gpt(variant), seed=cfg.seed)), ctx.device),
                             batch, local_batch, 2 * cfg.batch_size)
    preflight.refuse_if_too_big(variant, est, ctx.device, cfg.batch_size, ctx.distributed,
                                "--batch-size, --context, --d-model or --layers")
