"""Regularisation for ``dftnet train``: random shifts of the images (made on the batch, on its device) and
hidden-layer dropout, both reproducible and replayed exactly by ``--resume``.

An MLP sees an image as 784 unrelated numbers, so a digit moved by a pixel is a new input to it; shifting
the training images by a few pixels (the classic MNIST augmentation) teaches the nets that it is not.

The shifts are a function of ``(seed, epoch, example)`` alone (:func:`epoch_shifts`): the same for any
number of processes, and replayed exactly by ``--resume``, mid-epoch too. Applying them
(:func:`shift_images`) is one gather on the batch, on whatever device it is.
"""

from __future__ import annotations

import torch

__all__ = ["epoch_shifts", "shift_images", "HiddenDropout", "IMAGE_SIDE"]

IMAGE_SIDE = 28

# Keeps the generators of (seed, epoch) apart from those of other seeds and from the split's and the
# epoch order's (which use the bare seed).
_STREAM = 0x5EED5


def epoch_shifts(n: int, max_shift: int, seed: int, epoch: int) -> torch.Tensor:
    """``(n, 2)`` int64 shifts ``(dy, dx)``, each uniform in ``[-max_shift, max_shift]``, of epoch
    ``epoch``'s examples, by their index in the training split."""
    g = torch.Generator().manual_seed(_STREAM * 1_000_003 + seed * 10_007 + epoch)
    return torch.randint(-max_shift, max_shift + 1, (n, 2), generator=g)


def shift_images(x: torch.Tensor, shifts: torch.Tensor, fill: float, side: int = IMAGE_SIDE) -> torch.Tensor:
    """Shift each flattened ``side x side`` image of ``x`` (``(B, side*side)``) by its ``(dy, dx)`` in
    ``shifts`` (``(B, 2)`` integers): pixel ``(i, j)`` of the result is pixel ``(i - dy, j - dx)`` of the
    input, and ``fill`` (the value of a blank pixel) where that lies outside. Returns a new tensor."""
    if x.dim() != 2 or x.shape[1] != side * side:
        raise ValueError(f"expected flattened {side}x{side} images, shape (B, {side * side}); got {tuple(x.shape)}")
    if shifts.shape != (x.shape[0], 2):
        raise ValueError(f"expected one (dy, dx) per image, shape ({x.shape[0]}, 2); got {tuple(shifts.shape)}")
    if x.shape[0] == 0:
        return x.clone()
    shifts = shifts.to(device=x.device, dtype=torch.long)
    k = int(shifts.abs().max())
    if k == 0:
        return x.clone()
    b = x.shape[0]
    padded = torch.nn.functional.pad(x.view(b, side, side), (k, k, k, k), value=fill)
    ar = torch.arange(side, device=x.device)
    rows = (k - shifts[:, 0:1]) + ar  # (B, side): row of the padded image that lands on row i
    cols = (k - shifts[:, 1:2]) + ar
    flat = rows[:, :, None] * (side + 2 * k) + cols[:, None, :]  # (B, side, side)
    return padded.reshape(b, -1).gather(1, flat.reshape(b, -1))


class HiddenDropout:
    """Dropout on every hidden layer's output (after each ReLU of an :class:`~.models.MLP`), with masks that
    are a function of ``(seed, step)`` alone, so that ``--resume`` replays them exactly.

    It works by forward hooks, so the model and its checkpoints are unchanged (no Dropout modules that
    would shift the layers' names), and nothing happens in ``eval()`` mode. Call :meth:`reseed` before
    each training step.
    """

    def __init__(self, model: torch.nn.Module, p: float, device=None) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.gen = torch.Generator(device=device or "cpu")
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, torch.nn.ReLU)]

    def reseed(self, seed: int, step: int) -> None:
        self.gen.manual_seed((_STREAM + 1) * 1_000_003 + seed * 100_000_007 + step)

    def _hook(self, module, inputs, out):
        if not module.training or self.p == 0.0:
            return None
        keep = torch.rand(out.shape, generator=self.gen, device=out.device, dtype=out.dtype) >= self.p
        return out * keep / (1.0 - self.p)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
