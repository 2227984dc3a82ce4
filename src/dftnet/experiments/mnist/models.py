"""Models built from DFT layers: the original note's MLP classifier and its dense twin."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dftnet import BlockDFTLinear, DFTLinear
from dftnet.variants import DFT, BlockDFT, Dense, parse_variant

__all__ = ["MLP", "SEED_WIDTHS", "LAYER_KINDS", "parse_widths", "parse_layer_spec", "model_from_spec", "build_model"]

SEED_WIDTHS = (784, 4096, 1024, 256, 64, 10)
LAYER_KINDS = ("dft", "dense", "block")


def parse_layer_spec(spec: str) -> tuple[str, dict]:
    """A model variant by name: ``dft``, ``dense``, ``dft-sign`` (sign flips), ``block-32`` (block-circulant,
    32 x 32 blocks), ``block-32-sign`` (:func:`dftnet.variants.parse_variant`). Returns ``(layer kind, layer
    kwargs)`` for :class:`MLP`."""
    variant = parse_variant(spec)
    if not isinstance(variant, (Dense, DFT, BlockDFT)) or variant.ratio is not None:
        raise ValueError(f"unknown layer variant {spec!r} for an MLP of DFT layers: expected dft, dense, dft-sign, "
                         "block-K or block-K-sign")
    if isinstance(variant, Dense):
        return "dense", {}
    kwargs = {"sign_flip": True} if variant.sign_flip else {}
    if isinstance(variant, BlockDFT):
        return "block", {**kwargs, "block_size": variant.block_size}
    return "dft", kwargs


def parse_widths(text: str) -> tuple[int, ...]:
    """``"784,4096,10"`` -> ``(784, 4096, 10)``; ValueError naming the bad part."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    widths = []
    for part in parts:
        try:
            w = int(part)
        except ValueError:
            raise ValueError(f"widths must be comma-separated positive integers, got {text!r}") from None
        if w < 1:
            raise ValueError(f"widths must be positive, got {w} in {text!r}")
        widths.append(w)
    if len(widths) < 2:
        raise ValueError(f"widths needs at least an input and an output size, got {text!r}")
    return tuple(widths)


class MLP(nn.Sequential):
    """``widths[0] -> widths[1] -> ... -> widths[-1]``: DFT or dense layers with ReLU between, none after the last.

    Args:
        widths: layer sizes, input first; the default is the original note's 784-4096-1024-256-64-10.
        layer: "dft" (:class:`~dftnet.DFTLinear`), "dense" (:class:`torch.nn.Linear`) or "block"
            (:class:`~dftnet.BlockDFTLinear`, give ``block_size``).
        bias: every layer has a bias (the note's 785th "bias unit", per layer).
        **layer_kwargs: passed to each layer (e.g. ``recompute_spectrum=True`` for DFT layers).
    """

    def __init__(
        self,
        widths: Sequence[int] = SEED_WIDTHS,
        layer: str = "dft",
        bias: bool = True,
        device=None,
        dtype=None,
        **layer_kwargs,
    ) -> None:
        if layer not in LAYER_KINDS:
            raise ValueError(f"layer must be one of {LAYER_KINDS}, got {layer!r}")
        widths = tuple(widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs at least an input and an output size, got {widths}")
        cls = {"dft": DFTLinear, "dense": nn.Linear, "block": BlockDFTLinear}[layer]
        modules: list[nn.Module] = []
        for i, (p, q) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                modules.append(nn.ReLU())
            kwargs = dict(layer_kwargs)
            if layer == "block":  # a layer narrower than the block size is a single circulant block
                kwargs["block_size"] = min(kwargs["block_size"], max(p, q))
            modules.append(cls(p, q, bias=bias, device=device, dtype=dtype, **kwargs))
        super().__init__(*modules)
        self.widths = widths
        self.layer = layer
        self.spec = layer

    @classmethod
    def from_spec(cls, spec: str, widths: Sequence[int] = SEED_WIDTHS, device=None, **layer_kwargs) -> MLP:
        """``MLP.from_spec("block-32", widths)``; see :func:`parse_layer_spec`."""
        kind, kwargs = parse_layer_spec(spec)
        model = cls(widths, layer=kind, device=device, **kwargs, **layer_kwargs)
        model.spec = spec
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1) if x.dim() > 2 else x)

    def extra_repr(self) -> str:
        return f"widths={'-'.join(map(str, self.widths))}, layer={self.spec!r}"


def model_from_spec(spec: str, widths=SEED_WIDTHS, device=None, **layer_kwargs) -> MLP:
    return MLP.from_spec(spec, widths, device=device, **layer_kwargs)


def build_model(spec: str, widths, recompute_spectrum: bool = False, device=None) -> MLP:
    """The MLP of a variant name (``dft``, ``dense``, ``dft-sign``, ``block-32``; see ``parse_layer_spec``)."""
    kwargs = {"recompute_spectrum": True} if (spec.startswith("dft") and recompute_spectrum) else {}
    return MLP.from_spec(spec, widths, device=device, **kwargs)
