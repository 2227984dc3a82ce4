"""Rows in chunks for the block kernels' autograd Functions: a call's rows split into chunks (views), where
each chunk's kernel writes its rows of the result, and the backward in the chunks of its forward."""

from __future__ import annotations

import torch
from torch import Tensor

from .._compat import batched_grad

__all__ = ["row_chunks", "chunk_outputs", "backward_chunks"]


def row_chunks(t: Tensor, rows: int | None) -> tuple[Tensor, ...]:
    """``t`` split into chunks of ``rows`` rows (views), or ``(t,)``: without ``rows`` or up to that many."""
    return (t,) if rows is None or t.shape[0] <= rows else t.split(rows)


def chunk_outputs(out: Tensor | None, rows: int | None, chunks: int) -> tuple:
    """Where each of the ``chunks`` chunks' kernel writes its rows: the chunks of ``out``, or None for each
    (the kernel's own result: one chunk, or a result not wanted)."""
    return (None,) * chunks if out is None else row_chunks(out, rows)


def backward_chunks(grad_out: Tensor, saved: list[Tensor], rows: int | None, in_features: int, need_x: bool
                    ) -> tuple[tuple[Tensor, ...], list, int | None, Tensor | None, tuple]:
    """A block kernel's backward in the chunks of its forward: ``(grad_out's chunks, each chunk's saved input
    spectrum (None where none was saved), rows (None: one chunk), grad_input (B, p) that the chunks write or
    None, where each chunk's grad_input goes)``. Under the autograd engine's vmap (batched gradients): all
    rows at once, and no ``out=``."""
    if batched_grad(grad_out):
        saved, rows = [torch.cat(saved, 1)] if len(saved) > 1 else saved, None
    chunks = row_chunks(grad_out, rows)
    out = grad_out.new_empty(grad_out.shape[0], in_features) if need_x and len(chunks) > 1 else None
    return chunks, saved or [None] * len(chunks), rows, out, chunk_outputs(out, rows, len(chunks))
