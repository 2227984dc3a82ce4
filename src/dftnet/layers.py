"""The DFT (circulant) dense layer as an ``nn.Module``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import functional as F
from ._signs import apply_signs, register_sign_buffer, reset_signs

__all__ = ["DFTLinear", "circulant_kaiming_"]


@torch.no_grad()
def circulant_kaiming_(weight: Tensor, in_features: int, out_features: int) -> Tensor:
    r"""He-style init for a circulant weight: flat magnitude spectrum, random phases, zero mean.

    I.i.d. weights give every frequency k a random gain ``|rfft(w)[k]|^2`` (exponentially distributed),
    and through a deep stack these gains multiply per frequency: activations vanish or explode (seen
    for 19 of 20 seeds in a 10-layer i.i.d. He-initialised DFT+ReLU stack). Instead every non-zero
    frequency gets the same magnitude and a uniform random phase, so a square layer is a scaled
    orthogonal matrix; the DC gain is 0 (``sum(w) = 0``), so outputs are zero-mean and a ReLU keeps
    half their energy. With p inputs of mean-square ``E[a^2] = v + mu^2`` (post-ReLU: ``mu^2 =
    E[a^2] / pi``), ``E[z_i^2] = g (v + mu^2 (1 - p/n))`` for ``Var(w) = g/p``, so
    ``g = 2 / (1 - p / (n pi))`` keeps ``E[relu(z)^2] = E[a^2]`` layer after layer (``g = 2``, He's,
    when p << n). Layers with n <= 2 fall back to He-uniform.
    """
    n = weight.shape[-1]
    p = in_features
    if n <= 2:
        bound = math.sqrt(6.0 / p)
        return nn.init.uniform_(weight, -bound, bound)
    gain = 2.0 / (1.0 - p / (n * math.pi))
    magnitude = math.sqrt(n * gain / p)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    phase = torch.rand(n // 2 + 1, device=weight.device, dtype=dtype) * (2 * math.pi)
    spectrum = torch.polar(torch.full_like(phase, magnitude), phase)
    spectrum[0] = 0
    if n % 2 == 0:  # the Nyquist bin of a real signal is real: a random sign
        spectrum[-1] = magnitude * (1.0 if torch.rand(()).item() < 0.5 else -1.0)
    return weight.copy_(torch.fft.irfft(spectrum, n))


def register_bias_and_signs(module: nn.Module, bias: bool, sign_flip: bool, *, device=None, dtype=None) -> None:
    """Give a layer with ``in_features`` and ``out_features`` its parameter ``bias`` ``(out_features,)``
    (or None) and its buffer ``sign`` (see :func:`dftnet._signs.register_sign_buffer`)."""
    if bias:
        module.bias = nn.Parameter(torch.empty(module.out_features, device=device, dtype=dtype))
    else:
        module.register_parameter("bias", None)
    register_sign_buffer(module, module.in_features, sign_flip, device=device, dtype=dtype)


def reset_bias(module: nn.Module) -> None:
    """``nn.Linear``'s bias init: ``U(-1/sqrt(in_features), 1/sqrt(in_features))`` (nothing if no bias)."""
    if module.bias is not None:
        b = 1.0 / math.sqrt(module.in_features)
        nn.init.uniform_(module.bias, -b, b)


def _check_features(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class DFTLinear(nn.Module):
    r"""A dense layer whose q x p weight matrix is circulant: ``W[i, j] = weight[(i + j) % n]``.

    Drop-in for :class:`torch.nn.Linear`: ``y = x W^T + b`` for input ``(*, in_features)``, computed as
    a circular correlation by real FFTs in O(n log n) per example, with n = max(in_features,
    out_features) parameters instead of in_features * out_features.

    Args:
        in_features: p, size of each input sample.
        out_features: q, size of each output sample.
        bias: learn an additive bias of shape ``(out_features,)``.
        fft_size, method, recompute_spectrum: see :func:`dftnet.functional.dft_linear`.
        sign_flip: multiply the input by a fixed random +-1 diagonal first, ``y = W D x + b``
            (Cheng et al., ICCV 2015); D is the buffer ``sign`` and is saved in the state_dict.

    Attributes:
        weight: ``(n,)``, initialised by :func:`circulant_kaiming_`: ``Var(w) ~ 2/p`` like He's init
            (each output is a sum of p distinct weights times p inputs), but with a flat magnitude
            spectrum and zero mean, so that deep DFT+ReLU stacks neither explode nor vanish.
        bias: ``(out_features,)``, initialised ``U(-1/sqrt(p), 1/sqrt(p))`` like ``nn.Linear``.
    """

    __constants__ = ["in_features", "out_features", "fft_size", "method", "recompute_spectrum"]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        fft_size: int | None = None,
        method: str = "auto",
        recompute_spectrum: bool = False,
        sign_flip: bool = False,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.in_features = _check_features("in_features", in_features)
        self.out_features = _check_features("out_features", out_features)
        if method not in ("auto", "fft", "dense"):
            raise ValueError(f"method must be 'auto', 'fft' or 'dense', got {method!r}")
        self.fft_size = fft_size
        self.method = method
        self.recompute_spectrum = recompute_spectrum
        n = max(in_features, out_features)
        if fft_size is not None:
            from .plan import make_plan

            make_plan(in_features, out_features, fft_size)  # validates
        self.weight = nn.Parameter(torch.empty(n, **factory_kwargs))
        register_bias_and_signs(self, bias, sign_flip, **factory_kwargs)
        self.reset_parameters()

    @property
    def n(self) -> int:
        return self.weight.shape[0]

    def reset_parameters(self) -> None:
        circulant_kaiming_(self.weight, self.in_features, self.out_features)
        reset_signs(self)
        reset_bias(self)

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, Tensor) and (input.dim() == 0 or input.shape[-1] != self.in_features):
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (*, {self.in_features}), "
                f"got {tuple(input.shape)}"
            )
        return F.dft_linear(
            apply_signs(input, self.sign), self.weight, self.bias, self.out_features,
            fft_size=self.fft_size, method=self.method, recompute_spectrum=self.recompute_spectrum,
        )

    def to_dense(self) -> Tensor:
        """The explicit ``(out_features, in_features)`` weight matrix (differentiable)."""
        W = F.dft_matrix(self.weight, self.in_features, self.out_features)
        return W if self.sign is None else W * self.sign

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        if self.fft_size is not None:
            s += f", fft_size={self.fft_size}"
        if self.method != "auto":
            s += f", method={self.method!r}"
        if self.recompute_spectrum:
            s += ", recompute_spectrum=True"
        if self.sign is not None:
            s += ", sign_flip=True"
        return s
