"""Evaluation: loss, accuracy and confusion matrix of a model on a data split (the validation and
test passes of training, under DDP too), and ``dftnet eval`` of a saved checkpoint."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..harness import distributed as dist_mod
from ..harness.checkpoint import CheckpointError, load_checkpoint, load_safetensors
from ..harness.device import resolve_device
from . import data as data_mod
from .models import build_model

__all__ = ["evaluate", "evaluate_checkpoint", "load_model", "format_confusion"]


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


def load_model(path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a checkpoint (``.pt``, loaded with ``weights_only=True``) or a ``.safetensors``
    export describes, and load its weights."""
    if str(path).endswith(".safetensors"):
        tensors, meta = load_safetensors(path, device)
        try:
            widths = [int(w) for w in meta.get("widths", "").split(",")]
        except ValueError:
            raise CheckpointError(f"weights file {path}: bad widths in metadata: {meta.get('widths')!r}") from None
        ck = {"model": {"kind": meta.get("kind"), "widths": widths}, "state_dict": tensors,
              "dataset": meta.get("dataset", "mnist")}
    else:
        ck = load_checkpoint(path, map_location=device)
    spec = ck.get("model")
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str) or not spec.get("widths"):
        raise CheckpointError(f"checkpoint {path} does not describe a DFTnet MLP (model entry: {spec!r})")
    try:
        model = build_model(spec["kind"], spec["widths"], spec.get("recompute_spectrum", False), device)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} describes a model DFTnet cannot build: {e}") from None
    try:
        model.load_state_dict(ck["state_dict"])
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path}: weights do not fit the {spec['kind']} MLP "
                              f"{'-'.join(map(str, spec['widths']))}: {first}") from None
    return model, ck


def evaluate_checkpoint(path, dataset=None, data_dir=None, device="auto", limit=None) -> dict:
    dev = resolve_device(device)
    model, ck = load_model(path, dev)
    dataset = dataset or ck.get("dataset", "mnist")
    splits = data_mod.load_splits(dataset, data_dir, limit=limit)
    info = splits.info
    if model.widths[0] != info.input_size or model.widths[-1] != info.num_classes:
        raise ValueError(f"checkpoint {path} has widths {model.widths}, which do not fit {info.name} "
                         f"({info.input_size} inputs, {info.num_classes} classes)")
    loss, acc, confusion = evaluate(model, splits.test_x, splits.test_y, num_classes=info.num_classes)
    return {
        "checkpoint": str(path), "dataset": info.name, "model": f"{model.spec} MLP "
        + "-".join(map(str, model.widths)), "examples": len(splits.test_x), "accuracy": acc, "loss": loss,
        "confusion": confusion, "class_names": info.class_names,
    }


def format_confusion(confusion: torch.Tensor, class_names) -> str:
    """Rows: true class; columns: predicted class."""
    names = [str(c)[:7] for c in class_names]
    w = max(5, max(len(n) for n in names), len(str(int(confusion.max()))) if confusion.numel() else 1)
    head = "true \\ pred".ljust(12) + " ".join(n.rjust(w) for n in names)
    lines = [head]
    for name, row in zip(names, confusion.tolist()):
        lines.append(name.ljust(12) + " ".join(str(v).rjust(w) for v in row))
    return "\n".join(lines)
