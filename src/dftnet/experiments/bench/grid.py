"""The benchmark's grid: layer shapes (``--widths``: ``4096``, ``785x300``, ``2^10:2^14``), batches, modes
and dtypes, with the parsers that are also the argparse types of those flags."""

from __future__ import annotations

import torch

from ..argtypes import ArgumentValueError, nonneg_int, one_of, positive_int

__all__ = ["MODES", "DTYPES", "CSV_FIELDS", "AWKWARD_WIDTHS", "DEFAULT_WIDTHS", "DEFAULT_BATCHES", "parse_widths",
           "resolve_dtype"]

MODES = ("fwd", "fwd+bwd")
AWKWARD_WIDTHS = (785, 1000, 1009, 4099, 10007)
DEFAULT_WIDTHS: tuple = tuple(2**k for k in range(6, 21)) + AWKWARD_WIDTHS + ((785, 300),)
DEFAULT_BATCHES = (1, 32, 128, 1024)
DTYPES = {"float32": torch.float32, "float64": torch.float64}

# the columns of a cell's row (times in ms, None where skipped)
CSV_FIELDS = (
    "p", "q", "n", "batch", "mode", "dtype", "device", "route", "fft_size", "circular", "dense",
    "dftnet_ms", "other_ms", "plain_ms", "linear_ms", "floor_ms", "floor_n_ms",
    "dftnet_over_floor", "auto_over_best", "plain_over_dftnet", "linear_over_dftnet", "floor_n_over_floor",
    "dftnet_min_ms", "other_min_ms", "plain_min_ms", "linear_min_ms", "floor_min_ms", "floor_n_min_ms",
    "dftnet_over_floor_min", "auto_over_best_min", "plain_over_dftnet_min", "linear_over_dftnet_min",
    "dftnet_spread", "other_spread", "plain_spread", "linear_spread", "floor_spread", "floor_n_spread",
    "dftnet_q1_ms", "dftnet_q3_ms", "other_q1_ms", "other_q3_ms", "plain_q1_ms", "plain_q3_ms",
    "linear_q1_ms", "linear_q3_ms", "floor_q1_ms", "floor_q3_ms", "floor_n_q1_ms", "floor_n_q3_ms",
    "dftnet_over_floor_spread", "overhead_us", "overhead_min_us", "overhead_lo_us", "overhead_hi_us",
    "repeats", "linear_repeats", "rel_err", "linear_skipped", "skipped",
)


def _int(text, whole, allow_zero: bool = False) -> int:
    try:
        return (nonneg_int if allow_zero else positive_int)(text)
    except ArgumentValueError as e:
        raise ArgumentValueError(f"bad width {whole!r}: {e}") from None


def _parse_pow(t: str, whole: str) -> int:
    t = t.strip()
    if "^" in t:
        b, e = t.split("^", 1)
        base, exp = _int(b, whole), _int(e, whole, allow_zero=True)
        if exp > 40:
            raise ArgumentValueError(f"width {whole!r} is too large")
        return base**exp
    return _int(t, whole)


def _parse_width_token(tok: str) -> list[tuple[int, int]]:
    tok = tok.strip().lower().replace("**", "^")
    if ".." in tok:  # "2^6..2^16": the powers of two in between
        lo, hi = (_parse_pow(t, tok) for t in tok.split("..", 1))
        if lo > hi:
            raise ArgumentValueError(f"bad width range {tok!r}: {lo} > {hi}")
        out, v = [], 1
        while v <= hi:
            if v >= lo:
                out.append((v, v))
            v *= 2
        if not out:
            raise ArgumentValueError(f"width range {tok!r} contains no power of two")
        return out
    for sep in ("x", "->", ":"):
        if sep in tok:
            p, q = tok.split(sep, 1)
            return [(_int(p, tok), _int(q, tok))]
    v = _parse_pow(tok, tok)
    return [(v, v)]


def parse_widths(widths) -> list[tuple[int, int]]:
    """Layer shapes (p, q) from a comma-separated string (the type of ``--widths``) or a sequence.

    Items: ``1024`` (square), ``785x300`` (p -> q; also ``785->300``), ``2^10`` and ``2^6..2^16``
    (all powers of two in the range), or (p, q) tuples. Raises a ValueError naming a bad item.
    """
    items = [t for t in widths.split(",") if t.strip()] if isinstance(widths, str) else list(widths)
    if not items:
        raise ArgumentValueError(f"bad widths {widths!r}: no width given")
    out: list[tuple[int, int]] = []
    for it in items:
        if isinstance(it, (tuple, list)) and len(it) == 2:
            out.append((_int(it[0], it), _int(it[1], it)))
        elif isinstance(it, int) and not isinstance(it, bool):
            out.append((_int(it, it), _int(it, it)))
        elif isinstance(it, str):
            out.extend(_parse_width_token(it))
        else:
            raise ArgumentValueError(f"bad width {it!r}: expected an integer, 'PxQ' or a (p, q) pair")
    return out


def resolve_dtype(dtype) -> torch.dtype:
    """'float32' / 'float64' (or those torch dtypes) -> torch.dtype; ValueError otherwise."""
    return DTYPES[one_of(DTYPES)(str(dtype).removeprefix("torch."))]
