"""The block-circulant layer as an ``nn.Module``: :class:`BlockDFTLinear` (k x k circulant blocks)."""

from __future__ import annotations

from torch import Tensor

from .._dispatch.checks import check_block_size, check_positive_int
from .._dispatch.routes import BlockCirculant
from ..init import block_circulant_kaiming_, block_magnitude
from ..kernels.block import block_matrix
from ..kernels.taps import ParamKind
from ..plan import BlockShape
from ._structured import _StructuredLinear

__all__ = ["BlockDFTLinear"]


class BlockDFTLinear(_StructuredLinear):
    r"""A dense layer whose q x p weight matrix is tiled by k x k circulant blocks.

    Drop-in for :class:`torch.nn.Linear`: ``y = x W^T + b`` for input ``(*, in_features)``, with
    ``W[i, j] = weight[i // k, j // k, (i + j) % k]`` (see :mod:`dftnet.kernels.block`), computed by
    batched FFTs in O((p + q) log k + p q / k) per example, with ``ceil(q/k) ceil(p/k) k`` weights instead
    of p q. ``block_size=1`` is ``nn.Linear``; ``block_size=max(p, q)`` is :class:`DFTLinear`.

    Args:
        in_features: p, size of each input sample.
        out_features: q, size of each output sample.
        block_size: k, between 1 and max(p, q).
        bias: learn an additive bias of shape ``(out_features,)``.
        sign_flip: multiply the input by a fixed random +-1 diagonal D first, ``y = W (D x) + b``.
        diagonal: learn a diagonal scaling of the input (see :class:`DFTLinear`); off by default here
            (blocks are expressive enough; not measured to help).
        method, exact_extremes: see :func:`dftnet.functional.block_dft_linear`.

    Attributes:
        spectrum: the parameter, ``(ceil(q/k), ceil(p/k), k)``: each block's Hartley spectrum over
            ``spectral_scale`` (:mod:`dftnet.spectral`).
        weight: same shape, computed from ``spectrum``; initialised by
            :func:`dftnet.init.block_circulant_kaiming_`.
        bias: ``(out_features,)``, initialised ``U(-1/sqrt(p), 1/sqrt(p))`` like ``nn.Linear``.
        sign: buffer ``(in_features,)`` of +-1 if ``sign_flip``, else None.
    """

    __constants__ = ["in_features", "out_features", "block_size", "method"]
    _default_diagonal = False

    def __init__(self, in_features: int, out_features: int, block_size: int, bias: bool = True, device=None,
                 dtype=None, *, sign_flip: bool = False, diagonal: bool = False, method: str = "auto",
                 exact_extremes: bool = False) -> None:
        super().__init__()
        p = check_positive_int("in_features", in_features)
        q = check_positive_int("out_features", out_features)
        self.block_size = check_block_size(block_size, p, q)
        shape = BlockShape(p, q, block_size)
        self._setup(p, q, (shape.out_blocks, shape.in_blocks, block_size), bias, sign_flip, diagonal, method,
                    block_magnitude(p, q, block_size), exact_extremes, {"device": device, "dtype": dtype})

    def _init_weight(self, weight: Tensor) -> None:
        block_circulant_kaiming_(weight, self.in_features, self.out_features)

    def _matrix(self, weight: Tensor) -> Tensor:
        return block_matrix(weight, self.in_features, self.out_features)

    def _structure_settings(self) -> tuple:
        return (self.block_size, self.spectral_scale)

    def _make_structure(self, kind: ParamKind) -> BlockCirculant:
        return BlockCirculant(BlockShape(self.in_features, self.out_features, self.block_size), kind, memo=True)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"block_size={self.block_size}" + self._repr_tail())
