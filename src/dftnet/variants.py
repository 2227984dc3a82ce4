"""Layer variants as objects: the one place that maps a variant to the layer it builds.

A variant is a small frozen config, in the style of torchao's ``quantize_(model, config)``:

    DFT()                      -> DFTLinear            name "dft"
    DFT(sign_flip=True)        -> DFTLinear(sign_flip) name "dft-sign"
    BlockDFT(16)               -> BlockDFTLinear(k=16) name "block-16"
    BlockDFT(16, sign_flip=True)                       name "block-16-sign"
    Dense()                    -> nn.Linear            name "dense"

``parse_variant("block-16-sign")`` gives the object for a name (the command line's form), and
``variant.build(in_features, out_features)`` the layer; :func:`dftnet.convert` takes either form.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .layers import BlockDFTLinear, DFTLinear

__all__ = ["Dense", "DFT", "BlockDFT", "Variant", "parse_variant"]


@dataclass(frozen=True)
class Dense:
    """``nn.Linear``: the reference every structured variant is measured against."""

    @property
    def name(self) -> str:
        return "dense"

    def build(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> nn.Module:
        return nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)


@dataclass(frozen=True)
class DFT:
    """:class:`~dftnet.DFTLinear`: one circulant of length max(p, q)."""

    sign_flip: bool = False
    diagonal: bool = True

    @property
    def name(self) -> str:
        return "dft-sign" if self.sign_flip else "dft"

    def build(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
              **kwargs) -> DFTLinear:
        return DFTLinear(in_features, out_features, bias=bias, device=device, dtype=dtype, sign_flip=self.sign_flip,
                         diagonal=self.diagonal, **kwargs)


@dataclass(frozen=True)
class BlockDFT:
    """:class:`~dftnet.BlockDFTLinear`: ``block_size`` x ``block_size`` circulant blocks."""

    block_size: int
    sign_flip: bool = False
    diagonal: bool = False

    def __post_init__(self):
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"BlockDFT: block_size must be a positive integer, got {self.block_size!r}")

    @property
    def name(self) -> str:
        return f"block-{self.block_size}" + ("-sign" if self.sign_flip else "")

    def build(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
              **kwargs) -> BlockDFTLinear:
        return BlockDFTLinear(in_features, out_features, self.block_size, bias=bias, device=device, dtype=dtype,
                              sign_flip=self.sign_flip, diagonal=self.diagonal, **kwargs)


Variant = Dense | DFT | BlockDFT


def parse_variant(spec: str | Variant) -> Variant:
    """A variant from its name (``dft``, ``dense``, ``dft-sign``, ``block-K``, ``block-K-sign``), or itself."""
    if isinstance(spec, (Dense, DFT, BlockDFT)):
        return spec
    parts = str(spec).lower().split("-")
    sign = parts[-1] == "sign" and parts[0] != "dense"
    if sign:
        parts = parts[:-1]
    if parts == ["dense"]:
        return Dense()
    if parts == ["dft"]:
        return DFT(sign_flip=sign)
    if len(parts) == 2 and parts[0] == "block" and parts[1].isdigit() and int(parts[1]) > 0:
        return BlockDFT(int(parts[1]), sign_flip=sign)
    raise ValueError(f"unknown layer variant {spec!r}: expected dft, dense, dft-sign, block-K or block-K-sign")
