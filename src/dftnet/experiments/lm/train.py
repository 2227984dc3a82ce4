"""``dftnet lm``: dense, block-circulant and circulant MLPs in a small byte-level GPT, trained offline on
the standard library's source (:mod:`.corpus`, :mod:`.gpt`).

Read top to bottom. For each variant (:func:`train_variant`), one after another:

1. :func:`build_variant`: the model (same seed, so the same embeddings and attention), AdamW (one
   parameter group: the layers' spectral parametrisation makes one lr right at every width), linear
   warmup then cosine decay to a tenth of the peak, gradient clipping at 1;
2. :func:`maybe_resume`: continue from ``<variant>/last.pt`` (exactly: the batch of a step depends on
   (seed, step) alone, so every variant sees the same data in the same order, and so does a resumed run);
3. the steps, with validation bits per byte every ``--eval-every`` steps (and a checkpoint there);
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

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..configflags import config_dict
from ..harness import distributed as dist_mod
from ..harness import guard, preflight
from ..harness.checkpoint import FORMAT, load_checkpoint, restore_for_resume, save_atomic
from ..harness.device import resolve_device
from ..harness.interrupt import StopFlag, TrainingInterrupted
from ..harness.reproduce import changed_environment, environment
from ..harness.runfolder import refuse_changed_config
from ..harness.writes import WriteError, atomic_path, write_text_atomic
from ..mnist.recipe import param_groups
from ..reports import lm_table, plot_lm, write_csv
from . import corpus as corpus_mod
from .config import DEFAULT_VARIANTS, LMConfig
from .gpt import GPT, VOCAB
from .measure import bpb_at, evaluate_bpb, finish_variant

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


@dataclass
class VariantRun:
    """One variant in training: its modules, and where training stands (what a checkpoint records)."""

    variant: str
    model: GPT
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    local_batch: int
    step: int = 0
    seconds: float = 0.0  # training time so far (validation excluded)
    history: list = field(default_factory=list)  # one row per validation
    accum: dict = field(default_factory=_new_accum)  # training loss since the last validation
    grad_norm: float = 0.0  # of the last step, before clipping (read with its loss)


# ------------------------------------------------------------------------- 1. model, optimizer, schedule


def build_variant(variant: str, cfg: LMConfig, ctx: dist_mod.Context) -> VariantRun:
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of the number of processes "
                         f"({ctx.world_size})")
    model = GPT(cfg.gpt(variant), seed=cfg.seed).to(ctx.device)
    opt = torch.optim.AdamW(param_groups(model, cfg.lr), lr=cfg.lr, betas=(0.9, 0.95),
                            weight_decay=cfg.weight_decay)
    warmup, total = cfg.warmup, cfg.max_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total))
    return VariantRun(variant, model, opt, sched, cfg.batch_size // ctx.world_size)


# ------------------------------------------------------------------------- 2. resume, checkpoints


def maybe_resume(r: VariantRun, cfg: LMConfig, var_dir: Path, ctx: dist_mod.Context, log) -> None:
    if not cfg.resume:
        return
    expected = {"variant": r.variant, **asdict(cfg.gpt(r.variant))}
    ck = restore_for_resume(var_dir, ctx.device, ctx.is_main, r.model, r.opt, r.sched, lambda m: m == expected)
    if ck is None:
        return
    r.step, r.seconds, r.history = ck["step"], ck["seconds"], ck["history"]
    r.accum = ck["accum"] if ctx.is_main else _new_accum()
    log(f"{r.variant}: resumed from {var_dir / 'last.pt'} at step {r.step}")


def save(r: VariantRun, cfg: LMConfig, ctx: dist_mod.Context, path: Path) -> None:
    """Rank 0 holds the global running loss (reduced first), writes atomically; every rank waits."""
    total = dist_mod.all_reduce_sum(ctx, [r.accum["loss_sum"], r.accum["count"]])
    r.accum = {"loss_sum": total[0], "count": int(total[1])} if ctx.is_main else _new_accum()
    ck = {
        "format": FORMAT, "kind": "lm",
        "model": {"variant": r.variant, **asdict(cfg.gpt(r.variant))},
        "state_dict": r.model.state_dict(), "optimizer": r.opt.state_dict(), "scheduler": r.sched.state_dict(),
        "step": r.step, "seconds": r.seconds, "history": r.history, "accum": r.accum,
        "config": config_dict(cfg),
    }
    def write():  # weights or optimizer state that are not finite are never written
        guard.require_finite(r.model, r.opt, lambda what: _diverged(r, cfg, path, what))
        save_atomic(ck, path)
    dist_mod.on_main(ctx, write)


def _diverged(r: VariantRun, cfg: LMConfig, last: Path, what: str) -> guard.TrainingDiverged:
    return guard.TrainingDiverged(guard.diverged_line(r.variant, r.step, what, r.sched.get_last_lr()[0], cfg.lr,
                                                      last, f"dftnet lm --overwrite --out {last.parent.parent}"))


# ------------------------------------------------------------------------- 3. steps and validation


def train_step(net, r: VariantRun, x: torch.Tensor, y: torch.Tensor) -> float:
    """Forward, loss, backward, clipping, AdamW step, schedule step; returns the loss (nats per byte)."""
    logits = net(x)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    r.opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(r.model.parameters(), 1.0)
    r.opt.step()
    r.sched.step()
    loss_value, r.grad_norm = torch.stack([loss.detach(), norm.to(loss.dtype)]).tolist()  # one transfer
    return loss_value


def validate(r: VariantRun, cfg: LMConfig, windows: torch.Tensor, ctx: dist_mod.Context) -> dict:
    """Validation bits per byte now, and the training loss since the last validation: one metrics row."""
    bpb = evaluate_bpb(r.model, windows, cfg.batch_size, ctx)
    loss_sum, count = dist_mod.all_reduce_sum(ctx, [r.accum["loss_sum"], r.accum["count"]])
    row = {"variant": r.variant, "step": r.step, "tokens": r.step * cfg.batch_size * cfg.context,
           "seconds": r.seconds, "train_bpb": loss_sum / count / math.log(2) if count else math.nan,
           "val_bpb": bpb, "lr": r.sched.get_last_lr()[0]}
    r.history.append(row)
    r.accum = _new_accum()
    return row


def train_variant(variant: str, cfg: LMConfig, corpus, windows, out_dir: Path, ctx, log=print) -> dict:
    """Train one variant to ``max_steps`` (or continue it), then measure it; returns its results."""
    var_dir = out_dir / variant
    r = build_variant(variant, cfg, ctx)
    maybe_resume(r, cfg, var_dir, ctx, log)
    net = DistributedDataParallel(r.model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None) \
        if ctx.distributed else r.model
    last = var_dir / "last.pt"
    say = (lambda line: tqdm.write(line)) if not cfg.quiet and ctx.is_main else log
    if not r.history:
        row = validate(r, cfg, windows, ctx)
        say(f"{variant:>9} step {r.step:>5}  val bpb {row['val_bpb']:.3f}")
    bar = tqdm(total=cfg.max_steps, initial=r.step, desc=f"{variant:>9}", unit="step", leave=False,
               dynamic_ncols=True, disable=cfg.quiet or not ctx.is_main)
    r.model.train()
    try:
        with StopFlag() as stop:
            session_s, session_tokens, recent = 0.0, 0, []  # this process's steps, for tokens/s
            while r.step < cfg.max_steps:
                t0 = time.perf_counter()
                starts = corpus_mod.batch_indices(len(corpus.train), cfg.context, cfg.batch_size, cfg.seed, r.step)
                mine = starts[ctx.rank * r.local_batch:(ctx.rank + 1) * r.local_batch]
                x, y = corpus_mod.get_batch(corpus.train, mine, cfg.context, ctx.device)
                loss = train_step(net, r, x, y)
                dt = time.perf_counter() - t0
                r.step += 1
                r.seconds += dt
                r.accum["loss_sum"] += loss
                r.accum["count"] += 1
                session_s, session_tokens = session_s + dt, session_tokens + cfg.batch_size * cfg.context
                recent = (recent + [loss])[-20:]
                if not bar.disable:
                    bar.update()
                    bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}", tok_s=f"{session_tokens / session_s:,.0f}")
                problem = guard.diverged(loss, VOCAB, r.grad_norm)
                stopping, bad = dist_mod.any_rank(ctx, stop.check(), problem is not None)
                if bad:  # nothing is written: the last checkpoint is the last finite one
                    raise _diverged(r, cfg, last, problem or "the loss is not finite in another process")
                if r.step % cfg.eval_every == 0 or r.step == cfg.max_steps:
                    row = validate(r, cfg, windows, ctx)
                    say(f"{variant:>9} step {r.step:>5}  train bpb {row['train_bpb']:.3f}  val bpb "
                        f"{row['val_bpb']:.3f}  {r.seconds:.1f} s")
                    save(r, cfg, ctx, last)
                elif stopping:
                    save(r, cfg, ctx, last)
                if stopping and r.step < cfg.max_steps:
                    raise stop.interrupted(last)
            if dist_mod.any_rank(ctx, stop.set)[0]:  # a signal in the last validation or checkpoint write
                raise stop.interrupted(last)
    except WriteError as e:  # stop at this step; the previous checkpoint is intact
        raise WriteError(f"{e}; {variant} stopped at step {r.step}, its last good checkpoint is kept: once "
                         f"fixed, continue with dftnet lm --resume --out {out_dir}", e.path) from e
    except (RuntimeError, MemoryError) as e:
        guard.raise_if_out_of_memory(e, variant, r.step, last, "lm", out_dir)
        raise
    finally:
        bar.close()
    return finish_variant(r, cfg, corpus, ctx, PROMPT, log)


# ------------------------------------------------------------------------- a time budget


def step_seconds(variant: str, cfg: LMConfig, corpus, ctx: dist_mod.Context, steps: int = 5) -> float:
    """The median time of one training step of ``variant`` on this machine, from a throwaway model
    (2 warm-up steps, then ``steps`` timed ones), averaged over the processes so every rank agrees."""
    r = build_variant(variant, cfg, ctx)
    starts = corpus_mod.batch_indices(len(corpus.train), cfg.context, cfg.batch_size, cfg.seed, 0)
    x, y = corpus_mod.get_batch(corpus.train, starts[:r.local_batch], cfg.context, ctx.device)
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
        dist_mod.on_main(ctx, partial(preflight.check_lm, variant, cfg, ctx, max(1, cfg.batch_size // ctx.world_size)))
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
