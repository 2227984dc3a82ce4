"""Command-line values, checked where argparse reads them: the ``type=`` functions that ``dftnet
train``/``eval``, ``sweep`` and ``bench`` share, and the parser that reports a mistake in one line.

Each type takes the text of one flag and returns its value, or raises :class:`ArgumentValueError`,
whose message names what was expected and what was given. It is also a ``ValueError``, so the Python
API of the benchmark and the sweep checks its arguments with the same functions.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable

__all__ = ["ArgumentValueError", "UsageError", "Parser", "number", "positive_int", "nonneg_int",
           "positive_float", "nonneg_float", "comma_list", "one_of", "mlp_widths", "layer_spec",
           "train_layer", "device"]


class ArgumentValueError(argparse.ArgumentTypeError, ValueError):
    """A bad flag value: argparse reports the message as it is; Python callers get a ValueError."""


class UsageError(Exception):
    """A user mistake: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (a :class:`UsageError`) instead of usage + message."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def number(cast, positive: bool) -> Callable[[str], int | float]:
    """A finite ``cast`` (int or float) that is > 0 (``positive``) or >= 0."""
    what = f"a {'positive' if positive else 'non-negative'} {'integer' if cast is int else 'number'}"

    def parse(text):
        if isinstance(text, bool):
            raise ArgumentValueError(f"expected {what}, got {text!r}")
        try:
            value = cast(text.strip() if isinstance(text, str) else text)
        except (TypeError, ValueError):
            raise ArgumentValueError(f"expected {what}, got {text!r}") from None
        if not (value > 0 if positive else value >= 0) or value == float("inf"):  # also rejects nan
            raise ArgumentValueError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what.replace(" ", "_")
    return parse


positive_int = number(int, positive=True)
nonneg_int = number(int, positive=False)
positive_float = number(float, positive=True)
nonneg_float = number(float, positive=False)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"10m"`` or ``"1.5h"``: a positive, finite duration."""
    raw = str(text).strip().lower()
    scale = _UNITS.get(raw[-1:], None)
    try:
        value = float(raw[:-1] if scale else raw) * (scale or 1.0)
    except ValueError:
        raise ArgumentValueError(f"expected a duration such as 90s, 10m or 1.5h, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise ArgumentValueError(f"expected a positive duration such as 90s, 10m or 1.5h, got {text!r}")
    return value


def comma_list(item: Callable[[str], object], what: str = "value") -> Callable[[str | Iterable], list]:
    """``"a,b,c"`` -> ``[item("a"), item("b"), item("c")]``; a sequence (Python callers) item by item."""

    def parse(values) -> list:
        if isinstance(values, str):
            items = [v for v in values.split(",") if v.strip()]
        elif isinstance(values, (int, float)):
            items = [values]
        else:
            items = list(values)
        if not items:
            raise ArgumentValueError(f"no {what} given")
        return [item(v) for v in items]

    return parse


def one_of(choices: Iterable[str]) -> Callable[[str], str]:
    """One of ``choices`` (case-insensitive), returned in lower case."""
    choices = tuple(choices)

    def parse(text) -> str:
        value = str(text).strip().lower()
        if value not in choices:
            raise ArgumentValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


def mlp_widths(text: str) -> tuple[int, ...]:
    """``784,4096,10``: the layer widths of an MLP, input first."""
    from .mnist.models import parse_widths

    try:
        return parse_widths(text)
    except ValueError as e:
        raise ArgumentValueError(str(e)) from None


def variant_name(kinds: tuple[type, ...] | None = None, ratio: bool = False) -> Callable[[str], str]:
    """A variant name of :func:`dftnet.variants.parse_variant` (the one grammar), limited to ``kinds`` and
    to names without ``@R`` unless ``ratio``; returns its canonical name."""

    def parse(text) -> str:
        from dftnet.variants import parse_variant

        try:
            v = parse_variant(text)
        except ValueError as e:
            raise ArgumentValueError(str(e)) from None
        if kinds is not None and not isinstance(v, kinds):
            names = ", ".join(sorted(k.__name__ for k in kinds))
            raise ArgumentValueError(f"{v.name!r} is not a variant here: expected one of the kinds {names}")
        if v.ratio is not None and not ratio:
            raise ArgumentValueError(f"{v.name!r}: an MLP ratio (@R) has no meaning here")
        return v.name

    return parse


def layer_spec(text: str) -> str:
    """A variant of the MNIST nets: dft, dense, dft-sign, block-K, block-K-sign."""
    from dftnet.variants import DFT, BlockDFT, Dense

    return variant_name((Dense, DFT, BlockDFT))(text)


def mlp_variant(text: str) -> str:
    """An MLP variant of ``dftnet lm``: any variant, optionally ``@R``."""
    from .lm.gpt import GPTConfig, split_variant

    name = variant_name(ratio=True)(text)
    try:
        mlp, r = split_variant(name)
        GPTConfig(mlp=mlp, mlp_ratio=r, d_model=256, heads=1)  # the name alone; shapes are checked later
    except ValueError as e:
        raise ArgumentValueError(str(e)) from None
    return name


def train_layer(text: str) -> str:
    """What ``dftnet train`` trains: a variant, or ``both`` (dft, then dense)."""
    return text if text == "both" else layer_spec(text)


def device_name(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (lower case); whether this machine has it is checked when
    the run starts (``harness.device.resolve_device``)."""
    name = str(text).strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ArgumentValueError(f"expected cpu, cuda, cuda:N or auto, got {text!r}")
    return name


def device(text: str):
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``: the torch.device (see ``device.resolve_device``)."""
    from .harness.device import resolve_device

    try:
        return resolve_device(text)
    except ValueError as e:
        raise ArgumentValueError(str(e)) from None
