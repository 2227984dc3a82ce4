"""The fixed random sign flip of circulant projections (Cheng et al., ICCV 2015): ``x -> D x``, D = diag(+-1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def random_signs(n: int, *, device=None, dtype=None, generator: torch.Generator | None = None) -> Tensor:
    """A vector of n independent, equiprobable ``+1`` / ``-1`` in ``dtype`` (exact in every float type)."""
    bits = torch.randint(0, 2, (n,), device=device, generator=generator)
    return (bits * 2 - 1).to(dtype or torch.get_default_dtype())


def register_sign_buffer(module: nn.Module, in_features: int, enabled: bool, *, device=None, dtype=None) -> None:
    """Give ``module`` a buffer ``sign``: ``(in_features,)`` random signs if ``enabled``, else None.

    The buffer is persistent (in the state_dict, so a saved model keeps its projection) and follows
    ``module.to(device, dtype)``.
    """
    module.register_buffer("sign", random_signs(in_features, device=device, dtype=dtype) if enabled else None)


@torch.no_grad()
def reset_signs(module: nn.Module) -> None:
    """Re-draw ``module.sign`` in place (nothing if the module has no signs)."""
    sign = module.get_buffer("sign") if getattr(module, "sign", None) is not None else None
    if sign is not None:
        sign.copy_(random_signs(sign.shape[0], device=sign.device, dtype=sign.dtype))


def apply_signs(input: Tensor, sign: Tensor | None) -> Tensor:
    """``D x``: the input with its last dimension multiplied by the signs (unchanged if ``sign`` is None)."""
    if sign is None or not isinstance(input, Tensor) or not input.is_floating_point():
        return input  # leave non-float inputs to the layer's type check
    return input * sign.to(input.dtype)  # +-1 is exact in every float type
