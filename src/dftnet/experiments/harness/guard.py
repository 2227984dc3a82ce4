"""Faults a long run meets, each ended with one line and a documented exit status: a diverged run
(non-finite loss or gradient norm, status 3) and memory running out during a step (status 1).

**Divergence.** :func:`diverged` is asked about numbers the loop already reads on the host (the loss
that the progress bar and metrics use; in ``dftnet lm`` also the gradient norm that clipping computes,
read in the same transfer), so it adds no device synchronisation. A loss counts as diverged when it is
not finite, or above :data:`LOSS_CEILING` times the loss of a uniform guess (``ln(classes)``, the loss
at initialisation): such a loss (1e20 at ``--lr 50``) means logits in the hundreds on wrong classes,
and the run never returns from it in practice. Training then stops at that step and writes nothing;
:func:`require_finite` also refuses to write a checkpoint whose weights or optimizer state are not
finite, so the checkpoint a diverged run keeps is the last finite one.

There is deliberately no flag to skip such steps, as mixed-precision loss scaling does. Loss scaling
skips steps because float16 gradients overflow now and then while the weights are fine, and it lowers
the scale until they fit; these runs are float32, where a non-finite loss means the weights or the
learning rate have gone wrong, and every later step would be skipped too. Skipping would also need the
gradient norm on the host before each optimizer step: a new synchronisation per step.

**Out of memory.** :func:`is_out_of_memory` recognises an allocation failure (``torch.OutOfMemoryError``
on CUDA, the CPU allocator's "can't allocate memory"); the loop turns it into :class:`OutOfMemory`. The
last checkpoint is whole (checkpoints are written atomically) and ``--resume`` continues from it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from ..tables import format_bytes

__all__ = ["TrainingDiverged", "OutOfMemory", "EXIT_DIVERGED", "EXIT_OUT_OF_MEMORY", "LOSS_CEILING",
           "diverged", "require_finite", "is_out_of_memory", "out_of_memory", "raise_if_out_of_memory",
           "kept_checkpoint"]

EXIT_DIVERGED = 3
EXIT_OUT_OF_MEMORY = 1
LOSS_CEILING = 100.0  # times ln(classes), the loss of a uniform guess


class TrainingDiverged(Exception):
    """The loss or the gradient norm stopped being finite (or the loss left any sane range): one line,
    exit status :data:`EXIT_DIVERGED`. The run's checkpoints hold finite weights only."""


class OutOfMemory(Exception):
    """A step ran out of memory: one line, exit status 1; the last checkpoint is whole."""


def diverged(loss: float, classes: int, grad_norm: float = 0.0) -> str | None:
    """What is wrong with a step's loss (and gradient norm), or None when nothing is."""
    if not math.isfinite(loss):
        return f"the loss is {loss}"
    if not math.isfinite(grad_norm):
        return f"the gradient norm is {grad_norm}"
    if loss > LOSS_CEILING * math.log(classes):
        return f"the loss is {loss:.3g} (a uniform guess: {math.log(classes):.3g})"
    return None


def kept_checkpoint(path: Path) -> str:
    if Path(path).exists():
        return f"the last finite checkpoint is kept ({path})"
    return "no checkpoint had been written yet"


def diverged_line(net: str, step: int, what: str, lr: float, peak_lr: float, path: Path, restart: str) -> str:
    return (f"{net} diverged at step {step}: {what} (lr {lr:.3g}, peak {peak_lr:.3g}); {kept_checkpoint(path)}; "
            f"try a lower --lr, e.g. --lr {peak_lr / 10:.2g}, and start again with {restart}")


def _all_finite(tensors) -> bool:
    flags = [torch.isfinite(t).all() for t in tensors if torch.is_tensor(t) and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def require_finite(model: torch.nn.Module, opt: torch.optim.Optimizer, error) -> None:
    """Raise ``error(what)`` (a :class:`TrainingDiverged`) unless every parameter, buffer and optimizer state
    tensor is finite. Called where a checkpoint is written, which copies every tensor to the host anyway."""
    states = [v for s in opt.state.values() for v in s.values()]
    if not _all_finite([*model.state_dict().values(), *states]):
        raise error("the weights are not finite")


def is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text
                                             or "cannot allocate memory" in text)


def raise_if_out_of_memory(e: BaseException, net: str, step: int, path: Path, command: str, out) -> None:
    """In a loop's ``except``: an allocation failure becomes :class:`OutOfMemory` (one line); else nothing."""
    if is_out_of_memory(e):
        raise out_of_memory(e, net, step, path, command, out) from None


def out_of_memory(e: BaseException, net: str, step: int, path: Path, command: str, out) -> OutOfMemory:
    """The one line for an allocation failure in a step of ``net``."""
    text = str(e)
    cpu = re.search(r"allocate (\d+) bytes", text)  # DefaultCPUAllocator
    cuda = re.search(r"Tried to allocate [\d.]+ \w+", text)  # torch.OutOfMemoryError
    first = (text.strip().splitlines() or [type(e).__name__])[0]
    cause = (f"could not allocate {format_bytes(int(cpu.group(1)))}" if cpu else cuda.group(0) if cuda
             else first if len(first) <= 120 else first[:117] + "...")
    kept = f"its last checkpoint is whole ({path})" if Path(path).exists() else "no checkpoint had been written yet"
    return OutOfMemory(f"out of memory in step {step + 1} of {net} ({cause}); {kept}: free memory and continue "
                       f"with dftnet {command} --resume --out {out}, or start again with a smaller --batch-size")
