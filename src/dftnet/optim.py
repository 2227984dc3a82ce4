"""Optimizer parameter groups that treat every linear map alike, dense or structured.

The common rule (nanoGPT's) decays parameters with ``dim >= 2`` and exempts the rest. It silently
exempts a :class:`~dftnet.DFTLinear`'s weight, whose parameter is a 1-D spectrum, while it decays a
:class:`~dftnet.BlockDFTLinear`'s (2-D). :func:`param_groups` states the rule by role instead.
"""

from __future__ import annotations

from torch import nn

from .layers import BlockDFTLinear, DFTLinear

__all__ = ["param_groups"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups for ``torch.optim.AdamW(param_groups(model, wd), lr=...)``:

    * ``weight_decay``: the weights of linear maps: the spectrum of ``DFTLinear`` and ``BlockDFTLinear``
      (decaying a spectrum decays the weight: the spectral map is orthogonal up to one scale), and every
      other parameter with ``dim >= 2`` (``nn.Linear``, embeddings, convolutions, the peers' factors);
    * ``0``: biases, normalisation gains, the DFT layers' learned input diagonal, and every other
      1-D or scalar parameter.

    Only parameters that require gradients are included; a shared (tied) parameter appears once.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        structured = isinstance(module, (DFTLinear, BlockDFTLinear))
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            (decay if (name == "spectrum" if structured else p.dim() >= 2) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
