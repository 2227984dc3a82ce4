"""The training recipe's learning rates: the peak lr of each layer kind, and the rule that scales it
down for wide DFT layers (AdamW parameter groups). Kept apart so that the rule can be replaced alone."""

from __future__ import annotations

import torch

from dftnet import DFTLinear

from .models import parse_layer_spec

__all__ = ["DEFAULT_LR", "default_lr", "param_groups"]

# Measured on MNIST, seed widths, 10 epochs, batch 128, AdamW (weight decay 1e-4) + one-cycle + label
# smoothing 0.1 (README, "Training recipe"). DFT nets diverge (dead ReLUs) from lr 1e-2 up.
DEFAULT_LR = {"dft": 3e-3, "dense": 1e-3, "block": 1e-3}


def default_lr(spec: str) -> float:
    return DEFAULT_LR[parse_layer_spec(spec)[0]]


# Every weight of a circulant layer touches every output, and Adam's early, sign-like steps move the
# whole spectrum together: the gain at DC changes by up to n * lr per step. lr 3e-3 trains the seed
# net (n <= 4096) but a 784-16384-16384-10 DFT net diverged with it (11% test accuracy), so wider
# DFT layers get lr * 4096 / n.
_DFT_LR_WIDTH = 4096


def param_groups(model: torch.nn.Module, lr: float) -> list[dict]:
    """AdamW parameter groups: DFT weights wider than 4096 get a proportionally smaller lr."""
    scaled, seen = {}, set()
    for m in model.modules():
        n = max(m.in_features, m.out_features) if isinstance(m, DFTLinear) else 0  # the weight's length
        if n > _DFT_LR_WIDTH:
            scaled.setdefault(_DFT_LR_WIDTH / n, []).append(m.weight)
            seen.add(id(m.weight))
    rest = [p for p in model.parameters() if id(p) not in seen]
    return [{"params": rest, "lr": lr}] + [{"params": ps, "lr": lr * f} for f, ps in sorted(scaled.items())]
