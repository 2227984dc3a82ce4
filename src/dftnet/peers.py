"""The structured layers DFTnet is measured against: low-rank and Monarch (variants ``lowrank-K``, ``monarch-B``).

Both are written from their definitions in plain PyTorch (batched matmuls), with ``to_dense()`` for tests:

* :class:`LowRankLinear`: ``y = V (U x) + b`` with ``U`` (r, p) and ``V`` (q, r): two thin dense layers.
* :class:`MonarchLinear` (Dao et al., ICML 2022): ``y = P2 R P1 L x + b`` with ``L`` and ``R`` block
  diagonal with B blocks each and ``P`` the stride permutation that makes every output block see every
  input block. With p = B·a inputs, q = B·c outputs and m = B·s in between (s = min(p, q) / B), ``L`` has
  blocks (s, a) and ``R`` blocks (c, s): B·s·(a + c) weights instead of p·q.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LowRankLinear", "MonarchLinear"]


def _uniform_fan_in_(t: torch.Tensor, fan_in: int) -> None:
    """nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(fan_in)
    nn.init.uniform_(t, -bound, bound)


class LowRankLinear(nn.Module):
    """``(*, in_features) -> (*, out_features)`` through a rank-``rank`` product ``V U``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in 1..{min(in_features, out_features)}, got {rank}")
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.u = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.v = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_fan_in_(self.u, self.in_features)
        _uniform_fan_in_(self.v, self.rank)
        if self.bias is not None:
            _uniform_fan_in_(self.bias, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(nn.functional.linear(x, self.u), self.v, self.bias)

    def to_dense(self) -> torch.Tensor:
        return self.v @ self.u

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, " \
               f"bias={self.bias is not None}"


class MonarchLinear(nn.Module):
    """``(*, in_features) -> (*, out_features)`` through two block-diagonal factors of ``nblocks`` blocks."""

    def __init__(self, in_features: int, out_features: int, nblocks: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if in_features % nblocks or out_features % nblocks:
            raise ValueError(f"nblocks {nblocks} must divide in_features {in_features} and out_features "
                             f"{out_features}")
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.nblocks = in_features, out_features, nblocks
        a, c, s = in_features // nblocks, out_features // nblocks, min(in_features, out_features) // nblocks
        self.left = nn.Parameter(torch.empty(nblocks, s, a, **kw))  # L: block k maps x[k*a:(k+1)*a] to s values
        self.right = nn.Parameter(torch.empty(nblocks, c, s, **kw))  # R: block l maps s permuted values to c outputs
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_fan_in_(self.left, self.left.shape[-1])
        _uniform_fan_in_(self.right, self.right.shape[-1])
        if self.bias is not None:
            _uniform_fan_in_(self.bias, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, B = x.shape[:-1], self.nblocks
        s = self.left.shape[1]
        h = x.reshape(-1, B, x.shape[-1] // B).transpose(0, 1)  # (B, N, a)
        h = torch.bmm(h, self.left.transpose(1, 2))  # (B, N, s): block k's outputs, mid index k*s + j
        # the stride permutation: mid index f goes to block f % B, position f // B
        h = h.transpose(0, 1).reshape(-1, s, B).transpose(0, 2)  # (B, s, N) indexed [f % B, f // B]
        h = torch.bmm(h.transpose(1, 2), self.right.transpose(1, 2))  # (B, N, c)
        y = h.transpose(0, 1).reshape(*lead, self.out_features)
        return y + self.bias if self.bias is not None else y

    def to_dense(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=self.left.dtype, device=self.left.device)
        y = self.forward(eye)
        if self.bias is not None:
            y = y - self.bias
        return y.T

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.nblocks}, " \
               f"bias={self.bias is not None}"
