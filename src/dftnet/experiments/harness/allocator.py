"""Keep freed memory inside the process (glibc's malloc), so that large activations are reused.

A training step allocates and frees tensors of a few MiB (FFT spectra, activations, gradients). glibc
returns such blocks to the OS (they are mmap'd, or trimmed off the heap top) and the next step touches
fresh pages: about a thousand page faults per step of the seed MNIST net, 10-20 % of the step on the
2-core VM the measurements of docs/performance.md come from (and as much for the dense net). The commands of
``dftnet`` therefore raise glibc's thresholds once at start-up: blocks up to 32 MiB come from the heap,
and up to 1 GiB of free heap is kept. A process's peak memory is then held until it exits.

Library users can do the same without code: ``MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=67108864 python train.py``.
"""

from __future__ import annotations

import ctypes
import platform
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_SETTINGS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring); False where the C library
    is not glibc (macOS, Windows, musl), or it refused a setting, and nothing changed."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
