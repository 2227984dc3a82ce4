"""The IDX file format of MNIST and Fashion-MNIST: find the four files in a folder, read them (raw or
``.gz``) with exact structural checks, and the md5 of the uncompressed file an array would make.

Every problem is a :class:`DataError` naming the file and what is wrong with it."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..harness.errors import DataError

__all__ = ["DataError", "PARTS", "IMAGE_SHAPE", "idx_md5", "read_idx", "find_idx_dir"]


# The four parts of a dataset: key -> (standard IDX file name, IDX magic, standard count).
PARTS: dict[str, tuple[str, int, int]] = {
    "train_images": ("train-images-idx3-ubyte", 2051, 60000),
    "train_labels": ("train-labels-idx1-ubyte", 2049, 60000),
    "test_images": ("t10k-images-idx3-ubyte", 2051, 10000),
    "test_labels": ("t10k-labels-idx1-ubyte", 2049, 10000),
}
IMAGE_SHAPE = (28, 28)


def _idx_header(magic: int, shape: tuple[int, ...]) -> bytes:
    return struct.pack(f">I{len(shape)}I", magic, *shape)


def idx_md5(array: np.ndarray, kind: str) -> str:
    """md5 of the uncompressed IDX file that would hold ``array`` (kind: "images"/"labels")."""
    magic = 2051 if kind == "images" else 2049
    a = np.ascontiguousarray(array, dtype=np.uint8)
    h = hashlib.md5(_idx_header(magic, a.shape))
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _parse_idx(data: bytes, path: Path, magic: int) -> np.ndarray:
    """Parse IDX bytes (uint8 payload) with exact structural checks."""
    ndim = 3 if magic == 2051 else 1
    what = "images" if ndim == 3 else "labels"
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{path}: truncated IDX file ({len(data)} bytes, the header alone is {header_len})"
        )
    (got_magic,) = struct.unpack_from(">I", data, 0)
    if got_magic != magic:
        raise DataError(
            f"{path}: bad IDX magic number {got_magic} (IDX {what} files start with {magic}); "
            "is this the right file?"
        )
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    if dims[0] == 0:
        raise DataError(f"{path}: IDX file holds no {what}")
    if ndim == 3 and tuple(dims[1:]) != IMAGE_SHAPE:
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected = header_len + math.prod(dims)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {problem}: {len(data)} bytes, expected {expected} for {dims[0]} {what}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a valid gzip file ({e})") from e
    return _parse_idx(data, path, magic)


def find_idx_dir(name: str, data_dir: Path, fix: str) -> tuple[Path, dict[str, Path]]:
    """First candidate directory holding any of the IDX files, and the files it holds.

    Each file may be raw, ``.gz``, or spelled ``train-images.idx3-ubyte`` (Kaggle style).
    """
    subdirs = {"mnist": ["MNIST/raw"], "fashion-mnist": ["FashionMNIST/raw"]}[name]
    candidates = [data_dir, *(data_dir / s for s in subdirs), data_dir / "raw"]
    for d in candidates:
        found: dict[str, Path] = {}
        for part, (stem, _, _) in PARTS.items():
            for fname in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
                if (d / fname).is_file():
                    found[part] = d / fname
                    break
        if found:
            return d, found
    tried = ", ".join(str(d) for d in candidates)
    raise DataError(
        f"no {name} IDX files ({', '.join(p[0] for p in PARTS.values())}, raw or .gz) "
        f"found in any of: {tried}. {fix}"
    )
