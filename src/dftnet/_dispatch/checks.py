"""The argument checks of the layers and their functional forms, in one place: each raises a one-line
``TypeError`` or ``ValueError`` naming the argument. A leaf module (torch alone), imported by
the layers (:mod:`dftnet.layers._structured`) and :mod:`dftnet.functional`."""

from __future__ import annotations

from torch import Tensor

__all__ = ["METHODS", "check_positive_int", "check_block_size", "check_method", "check_input", "check_parameters",
           "check_bias_and_devices"]

METHODS = ("auto", "fft", "dense")


def check_positive_int(what: str, value) -> int:
    """``value`` if it is a positive int (not a bool), else ValueError "``what`` must be a positive integer"."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def check_block_size(block_size, in_features: int, out_features: int) -> int:
    """A block size k of a q x p layer: a positive integer, at most max(p, q)."""
    check_positive_int("block_size", block_size)
    if block_size > max(in_features, out_features):
        raise ValueError(
            f"block_size must be at most max(in_features, out_features) = "
            f"{max(in_features, out_features)}, got {block_size}"
        )
    return block_size


def check_method(method, fn: str | None = None) -> str:
    """``method`` if it is one of :data:`METHODS`; ``fn`` names the functional form (None: a layer)."""
    if method not in METHODS:
        if fn is None:
            raise ValueError(f"method must be 'auto', 'fft' or 'dense', got {method!r}")
        raise ValueError(f"{fn}: method must be one of {METHODS}, got {method!r}")
    return method


def check_input(fn: str, input, in_features: int | None = None, device=None) -> None:
    """The input check of every call, a layer's and a functional form's, made once: a real floating-point
    tensor of at least one dimension; of last size ``in_features`` and on ``device`` where given (a layer's;
    a functional form checks its weight and bias against the input's device instead)."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}: expected input to be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():  # complex dtypes are not floating-point
        raise TypeError(f"{fn}: expected a real floating-point input, got dtype {input.dtype}")
    if input.dim() == 0:
        raise ValueError(f"{fn}: expected input of shape (*, {in_features or 'in_features'}), got a 0-d tensor")
    if in_features is not None and input.shape[-1] != in_features:
        raise ValueError(f"{fn}: expected input of shape (*, {in_features}), got {tuple(input.shape)}")
    if device is not None and input.device != device:
        raise ValueError(f"{fn}: expected input on the parameters' device {device}, got {input.device}")


def check_parameters(fn: str, weight, bias) -> None:
    """TypeError unless weight is a tensor and weight and bias (None allowed) are real floating-point."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"{fn}: expected weight to be a torch.Tensor, got {type(weight).__name__}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{fn}: expected a real floating-point {name}, got dtype {t.dtype}")


def check_bias_and_devices(fn: str, input: Tensor, bias: Tensor | None, q: int, weight: Tensor, method: str) -> None:
    """What both functional forms check last: the bias's shape, weight and bias on the input's device, the
    method."""
    if bias is not None and tuple(bias.shape) != (q,):
        raise ValueError(f"{fn}: expected bias of shape ({q},), got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != input.device:
            raise ValueError(f"{fn}: expected {name} on the input's device {input.device}, got {t.device}")
    check_method(method, fn)
