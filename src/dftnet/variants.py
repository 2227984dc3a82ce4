"""Layer variants as objects: the one place that maps a variant to the layer it builds.

A variant is a small frozen config, in the style of torchao's ``quantize_(model, config)``:

    DFT()                      -> DFTLinear            name "dft"
    DFT(sign_flip=True)        -> DFTLinear(sign_flip) name "dft-sign"
    BlockDFT(16)               -> BlockDFTLinear(k=16) name "block-16"
    BlockDFT(16, sign_flip=True)                       name "block-16-sign"
    Dense()                    -> nn.Linear            name "dense"
    LowRank(4)                 -> peers.LowRankLinear  name "lowrank-4" (rank min(p, q) // 4)
    Monarch(4)                 -> peers.MonarchLinear  name "monarch-4" (4 blocks)

Any name may end in ``@R``: the variant of an MLP R times as wide as its input (``dft@16``; the
``ratio`` field, which a model that has an MLP reads and a single layer ignores).

``parse_variant("block-16-sign")`` gives the object for a name (the command line's form, the one
grammar every part of DFTnet uses), and ``variant.build(in_features, out_features)`` the layer;
:func:`dftnet.convert` takes either form.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .layers import BlockDFTLinear, DFTLinear
from .peers import LowRankLinear, MonarchLinear

__all__ = ["Dense", "DFT", "BlockDFT", "LowRank", "Monarch", "Variant", "parse_variant"]


def _with_ratio(name: str, ratio: int | None) -> str:
    return name if ratio is None else f"{name}@{ratio}"


def _positive(what: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Dense:
    """``nn.Linear``: the reference every structured variant is measured against."""

    ratio: int | None = None

    def __post_init__(self):
        _positive("ratio", self.ratio)

    @property
    def name(self) -> str:
        return _with_ratio("dense", self.ratio)

    def build(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> nn.Module:
        return nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)


@dataclass(frozen=True)
class DFT:
    """:class:`~dftnet.DFTLinear`: one circulant of length max(p, q)."""

    sign_flip: bool = False
    diagonal: bool = True
    ratio: int | None = None

    def __post_init__(self):
        _positive("ratio", self.ratio)

    @property
    def name(self) -> str:
        return _with_ratio("dft-sign" if self.sign_flip else "dft", self.ratio)

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
    ratio: int | None = None

    def __post_init__(self):
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"BlockDFT: block_size must be a positive integer, got {self.block_size!r}")
        _positive("ratio", self.ratio)

    @property
    def name(self) -> str:
        return _with_ratio(f"block-{self.block_size}" + ("-sign" if self.sign_flip else ""), self.ratio)

    def build(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
              **kwargs) -> BlockDFTLinear:
        return BlockDFTLinear(in_features, out_features, self.block_size, bias=bias, device=device, dtype=dtype,
                              sign_flip=self.sign_flip, diagonal=self.diagonal, **kwargs)


@dataclass(frozen=True)
class LowRank:
    """:class:`~dftnet.peers.LowRankLinear` of rank ``min(p, q) // k`` (at least 1): two thin dense layers."""

    k: int
    ratio: int | None = None

    def __post_init__(self):
        _positive("LowRank: k", self.k)
        _positive("ratio", self.ratio)

    @property
    def name(self) -> str:
        return _with_ratio(f"lowrank-{self.k}", self.ratio)

    def build(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> LowRankLinear:
        return LowRankLinear(in_features, out_features, max(1, min(in_features, out_features) // self.k), bias=bias,
                             device=device, dtype=dtype)


@dataclass(frozen=True)
class Monarch:
    """:class:`~dftnet.peers.MonarchLinear` with ``nblocks`` blocks (which must divide both sides)."""

    nblocks: int
    ratio: int | None = None

    def __post_init__(self):
        _positive("Monarch: nblocks", self.nblocks)
        _positive("ratio", self.ratio)

    @property
    def name(self) -> str:
        return _with_ratio(f"monarch-{self.nblocks}", self.ratio)

    def build(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> MonarchLinear:
        return MonarchLinear(in_features, out_features, self.nblocks, bias=bias, device=device, dtype=dtype)


Variant = Dense | DFT | BlockDFT | LowRank | Monarch
VARIANT_TYPES = (Dense, DFT, BlockDFT, LowRank, Monarch)
NAMES = "dense, dft, dft-sign, block-K, block-K-sign, lowrank-K, monarch-B, each optionally @R"


def parse_variant(spec: str | Variant) -> Variant:
    """A variant from its name (``dense``, ``dft``, ``dft-sign``, ``block-K``, ``block-K-sign``, ``lowrank-K``,
    ``monarch-B``, each optionally ending in ``@R``), or itself."""
    if isinstance(spec, VARIANT_TYPES):
        return spec
    text = str(spec).strip().lower()
    name, at, r = text.partition("@")
    if at and not (r.isdigit() and int(r) > 0):
        raise ValueError(f"variant {spec!r}: the MLP ratio after @ must be a positive integer")
    ratio = int(r) if at else None
    parts = name.split("-")
    sign = parts[-1] == "sign" and parts[0] in ("dft", "block")
    if sign:
        parts = parts[:-1]
    number = len(parts) == 2 and parts[1].isdigit() and int(parts[1]) > 0
    if parts == ["dense"]:
        return Dense(ratio=ratio)
    if parts == ["dft"]:
        return DFT(sign_flip=sign, ratio=ratio)
    if number and parts[0] == "block":
        return BlockDFT(int(parts[1]), sign_flip=sign, ratio=ratio)
    if number and parts[0] == "lowrank" and not sign:
        return LowRank(int(parts[1]), ratio=ratio)
    if number and parts[0] == "monarch" and not sign:
        return Monarch(int(parts[1]), ratio=ratio)
    raise ValueError(f"unknown layer variant {spec!r}: expected {NAMES}")
