"""The training recipe's learning rates: the peak lr of each layer kind."""

from __future__ import annotations

from .models import parse_layer_spec

__all__ = ["DEFAULT_LR", "default_lr"]

# Peak one-cycle lr per layer kind, with AdamW (weight decay 0.01), label smoothing 0.1 and random shifts of
# 1 pixel (docs/training.md, "Training recipe"); DFT and block layers store their spectra (dftnet.spectral),
# so these hold at any width. DFT: 6e-3 (with 1-pixel shifts and 10 epochs; docs/training.md has the lever table).
DEFAULT_LR = {"dft": 6e-3, "dense": 1e-3, "block": 1e-3}


def default_lr(spec: str) -> float:
    return DEFAULT_LR[parse_layer_spec(spec)[0]]

