"""Data-parallel training under ``torchrun``: process group set-up and the few collectives training needs.

Without torchrun (no ``WORLD_SIZE`` in the environment) everything here is a no-op for one process.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist

from .runfolder import claim

__all__ = ["Context", "launched_rank", "setup", "teardown", "all_reduce_sum", "barrier", "broadcast_flag", "any_rank",
           "on_main"]


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_rank() -> int:
    """This process's rank in the job torchrun launched (0 outside torchrun): the one place it is read, so
    only rank 0 speaks, before and after the job's :class:`Context` exists."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def setup(device: torch.device) -> Context:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(device=device)
    rank, local_rank = launched_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(rank=rank, world_size=world, local_rank=local_rank, device=device)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: Context, values: list[float]) -> list[float]:
    """Sum a few Python numbers over all ranks (float64, so counts stay exact)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_flag(ctx: Context, flag: bool) -> bool:
    """True on every rank if it is True on any rank (e.g. Ctrl-C seen by one process)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def any_rank(ctx: Context, *flags: bool) -> list[bool]:
    """Each flag True on every rank if it is True on any rank, in one collective (none for one process)."""
    if not ctx.distributed:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def on_main(ctx: Context, fn):
    """Run ``fn`` on rank 0 only; every rank returns its result or raises its exception (so a refusal
    on rank 0 ends all ranks, rather than leaving them waiting at the next collective)."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - handed to every rank
            error = e
    if ctx.distributed:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise error
    return result


@contextmanager
def job(device: torch.device, out: str | None, kind: str, *, default_name: str, resume: bool, overwrite: bool,
        log=print) -> Iterator[tuple[Context, Path, object]]:
    """The start and end that ``dftnet train`` and ``dftnet lm`` share: set up the process group on
    ``device``; agree on the output folder (``out``, else ``runs/<timestamp>-<default_name>``; rank 0's,
    since timestamps differ); refuse ``resume`` of a missing folder; hold the folder's lock on rank 0
    (:func:`.runfolder.claim`). Yields ``(ctx, out_dir, log)`` with ``log`` silent off rank 0; on exit
    releases the lock and tears the process group down. When the job ended normally, every rank first frees
    what still holds the group (DDP wrappers in reference cycles) and the last collective is a barrier. Why:
    gloo's worker threads (which outlive ``destroy_process_group``) free each finished collective's work,
    and the tensors it holds may be owned by Python objects (``broadcast_object_list``, ``all_reduce`` of a
    Python-made tensor); if the interpreter is finalising by then, the thread cannot take the GIL and the
    process aborts ("terminate called without an active exception", seen in gdb). After a barrier's round
    trip the earlier work is freed, and the barrier's own work holds no Python objects."""
    ctx, lock = setup(device), None
    try:
        log = log if ctx.is_main else (lambda *a, **k: None)
        out = out or str(Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{default_name}")
        if ctx.distributed:
            box = [out]
            dist.broadcast_object_list(box, src=0)
            out = box[0]
        out_dir = Path(out)
        if resume and not out_dir.exists():
            raise ValueError(f"--resume: output folder {out_dir} does not exist (give the --out of the run to resume)")
        lock = on_main(ctx, lambda: claim(out_dir, kind, resume=resume, overwrite=overwrite,
                                          command=f"dftnet {kind}", log=log))
        yield ctx, out_dir, log
        if ctx.distributed:
            gc.collect()
            barrier(ctx)
    finally:
        if lock is not None:
            lock.release()
        teardown(ctx)
