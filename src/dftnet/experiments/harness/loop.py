"""The training loop that ``dftnet train``, ``dftnet lm`` and a ``dftnet study`` cell share.

A command describes its run as a :class:`Run`: the model, AdamW and schedule, and the few things only it
knows (its batches, its loss, its running metrics, when it evaluates and what its checkpoint holds).
:func:`fit` does the rest, the same way for all three. Read it top to bottom: one step is

1. ``run.next_batch()``: this step's inputs and targets (a function of the seed and the position alone, so a
   resumed run replays it);
2. :func:`train_step`: forward, loss, backward, optional clipping, AdamW, schedule;
3. ``run.record(...)``: the running metrics, from the one host read of the loss;
4. the divergence guard and the stop flag, agreed across DDP ranks: a diverged run stops and writes
   nothing; Ctrl-C or SIGTERM writes ``last.pt`` and stops;
5. an evaluation when ``run.evaluation_due()`` (then ``last.pt``), or a periodic checkpoint.

Around the loop: :func:`maybe_resume` (``--resume`` continues from ``last.pt`` exactly), the DDP wrapper,
and the mapping of a failed write or an allocation failure to its one-line error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import distributed as dist_mod
from . import guard
from .checkpoint import restore_for_resume, save_atomic
from .interrupt import StopFlag
from .writes import WriteError

__all__ = ["Run", "fit", "train_step", "maybe_resume", "save"]


@dataclass
class Run:
    """One model in training and where it stands. Commands subclass it with their metrics and position,
    and implement the methods below; the fields here are what :func:`fit` itself reads and advances."""

    name: str  # the net or variant, in messages
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    total_steps: int
    step: int = 0
    seconds: float = 0.0  # training time so far (evaluations excluded)
    history: list = field(default_factory=list)  # one row of metrics per evaluation
    grad_norm: float = 0.0  # of the last step, before clipping (0 without clipping)

    command: ClassVar[str] = "train"  # the dftnet command, for the messages that tell how to continue
    clip: ClassVar[float | None] = None  # gradient-norm clipping
    classes: ClassVar[int] = 2  # the loss of a uniform guess is ln(classes): the divergence ceiling's unit

    def peak_lr(self) -> float:
        """The schedule's peak rate, for the divergence message."""
        raise NotImplementedError

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's inputs and targets, on the device."""
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def record(self, loss: float, output: torch.Tensor, target: torch.Tensor, seconds: float) -> None:
        """Account one finished step (``self.step`` already advanced)."""

    def evaluation_due(self) -> bool:
        """Whether the position reached wants an evaluation that has not run yet (also right after a resume)."""
        return False

    def evaluate(self) -> str | None:
        """Evaluate, append a row to ``history``, write any extra checkpoint (``best.pt``); the line to show."""
        return None

    def checkpoint_due(self) -> bool:
        """Whether to write ``last.pt`` after this step (beside evaluations and stops)."""
        return False

    def checkpoint(self) -> dict:
        """What ``last.pt`` holds; called on every rank (it may reduce metrics across them)."""
        raise NotImplementedError

    def same_model(self, meta: dict) -> bool:
        """Whether a checkpoint's model record is this run's model (else ``--resume`` refuses it)."""
        raise NotImplementedError

    def restore(self, ck: dict, is_main: bool) -> None:
        """Take position and metrics from a checkpoint (weights, optimizer and schedule are restored)."""

    def postfix(self) -> dict:
        """The progress bar's figures."""
        return {}


def train_step(net, run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Forward, loss, backward, clipping (if ``run.clip``), AdamW step, schedule step; returns the loss
    (read once, with the gradient norm in the same transfer) and the output."""
    output = net(x)
    loss = run.loss(output, y)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if run.clip is None:
        run.opt.step()
        run.sched.step()
        return loss.item(), output
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.clip)
    run.opt.step()
    run.sched.step()
    loss_value, run.grad_norm = torch.stack([loss.detach(), norm.to(loss.dtype)]).tolist()
    return loss_value, output


def maybe_resume(run: Run, folder: Path, ctx: dist_mod.Context, log) -> None:
    """``--resume``: continue from ``folder/last.pt`` (weights, optimizer, schedule, position, metrics)."""
    ck = restore_for_resume(folder, ctx.device, ctx.is_main, run.model, run.opt, run.sched, run.same_model)
    if ck is not None:
        run.restore(ck, ctx.is_main)
        log(f"{run.name}: resumed from {folder / 'last.pt'} at step {run.step}")


def save(run: Run, ctx: dist_mod.Context, path: Path) -> None:
    """Rank 0 writes the checkpoint atomically, never with non-finite weights; every rank waits for it."""
    ck = run.checkpoint()

    def write():
        guard.require_finite(run.model, run.opt, lambda what: _diverged(run, path.parent / "last.pt", what))
        save_atomic(ck, path)

    dist_mod.on_main(ctx, write)


def _diverged(run: Run, last: Path | None, what: str) -> guard.TrainingDiverged:
    restart = f"dftnet {run.command} --overwrite --out {last.parent.parent}" if last else "a lower rate"
    return guard.TrainingDiverged(guard.diverged_line(run.name, run.step, what, run.sched.get_last_lr()[0],
                                                      run.peak_lr(), last or Path("-"), restart))


def fit(run: Run, ctx: dist_mod.Context, folder: Path | None, *, quiet: bool = False, log=print) -> None:
    """Train ``run`` to ``run.total_steps``. ``folder`` holds its checkpoints (None: none are written, and
    a signal is not caught). Raises :class:`.guard.TrainingDiverged`, :class:`.interrupt.TrainingInterrupted`,
    :class:`.guard.OutOfMemory` or :class:`.writes.WriteError` (with how to continue)."""
    last = folder / "last.pt" if folder is not None else None
    net = DistributedDataParallel(run.model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None) \
        if ctx.distributed else run.model
    bar = tqdm(total=run.total_steps, initial=run.step, desc=f"{run.name:>9}", unit="step", leave=False,
               dynamic_ncols=True, disable=quiet or not ctx.is_main)
    say = tqdm.write if not bar.disable else log
    run.model.train()
    try:
        with StopFlag() if last is not None else _NoStop() as stop:
            while True:
                if run.evaluation_due():
                    line = run.evaluate()
                    if line:
                        say(line)
                    if last is not None and run.step > 0:
                        save(run, ctx, last)
                if run.step >= run.total_steps:
                    break
                t0 = time.perf_counter()
                x, y = run.next_batch()
                loss, output = train_step(net, run, x, y)
                seconds = time.perf_counter() - t0
                run.step += 1
                run.seconds += seconds
                run.record(loss, output, y, seconds)
                if not bar.disable:
                    bar.update()
                    bar.set_postfix(run.postfix(), refresh=False)  # drawn at the bar's own pace
                problem = guard.diverged(loss, run.classes, run.grad_norm)
                stopping, bad = dist_mod.any_rank(ctx, stop.check(), problem is not None)
                if bad:  # nothing is written: the last checkpoint is the last finite one
                    raise _diverged(run, last, problem or "the loss is not finite in another process")
                if last is not None and (stopping or (run.checkpoint_due() and not run.evaluation_due())):
                    save(run, ctx, last)
                if stopping:
                    raise stop.interrupted(last)
            if dist_mod.any_rank(ctx, stop.set)[0]:  # a signal in the last evaluation or checkpoint write
                raise stop.interrupted(last)
    except WriteError as e:  # stop at this step; the previous checkpoint is intact
        raise WriteError(f"{e}; {run.name} stopped at step {run.step}, its last good checkpoint is kept: once "
                         f"fixed, continue with dftnet {run.command} --resume --out {folder.parent}", e.path) from e
    except (RuntimeError, MemoryError) as e:
        if last is not None:
            guard.raise_if_out_of_memory(e, run.name, run.step, last, run.command, folder.parent)
        raise
    finally:
        bar.close()


class _NoStop:
    """The stop flag of a run without checkpoints: signals keep their default meaning."""

    set = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def check(self) -> bool:
        return False

    def interrupted(self, path: Any):  # pragma: no cover - never stops
        raise AssertionError
