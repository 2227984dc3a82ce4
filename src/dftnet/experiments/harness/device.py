"""Which device a run uses: the one place that turns ``--device`` into a ``torch.device``."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available) -> torch.device; ValueError otherwise."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"bad device {device!r}: expected cpu, cuda or auto")
    d = device.strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d == "cpu":
        return torch.device("cpu")
    if d == "cuda" or d.startswith("cuda:"):
        try:
            dev = torch.device(d)
        except RuntimeError:
            raise ValueError(f"bad device {device!r}: expected cpu, cuda, cuda:N or auto") from None
        if not torch.cuda.is_available():
            raise ValueError(f"bad device {device!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"bad device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise ValueError(f"bad device {device!r}: expected cpu, cuda, cuda:N or auto")
