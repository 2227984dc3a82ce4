"""Checkpoints: written atomically (temp file, fsync, rename), loaded with ``weights_only=True``.

A failed write (disk full, permission denied, read-only) raises :class:`~.writes.WriteError`, one
line naming the file and the cause; the previous checkpoint is left as it was and no temporary file
remains."""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .writes import atomic_path, remove_temporaries, write_error

__all__ = ["CheckpointError", "save_atomic", "load_checkpoint", "save_safetensors", "load_safetensors", "FORMAT"]

FORMAT = "dftnet-checkpoint-v1"

def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temp files a killed :func:`save_atomic` left behind (never the checkpoints themselves)."""
    return remove_temporaries(Path(folder))


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint dict: about the size of its file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync it, then rename over ``path``.

    A reader (or a crash at any point) sees either the old file or the complete new one, never a
    half-written one. A failed write raises :class:`~.writes.WriteError` (the temporary file is removed).
    """
    path = Path(path)
    needed = tensor_bytes(obj)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e, needed) from None
    with atomic_path(path, needed, keep_suffix=False) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def restore_for_resume(folder: Path, map_location, is_main: bool, model, opt, sched,
                       same_model: Callable[[dict], bool]) -> dict | None:
    """The start of ``--resume`` that train and lm share: rank 0 removes a killed writer's temporaries,
    then ``folder/last.pt`` (if any) is loaded, refused if ``same_model(ck["model"])`` is false, and its
    weights, optimizer and schedule restored. Returns the checkpoint (for the caller's position and
    metrics), or None when there is nothing to resume."""
    last = Path(folder) / "last.pt"
    if is_main and Path(folder).exists():
        remove_stale_temporaries(folder)
    if not last.exists():
        return None
    ck = load_checkpoint(last, map_location=map_location)
    if not same_model(ck["model"]):
        raise CheckpointError(f"checkpoint {last} is for a different model: {ck['model']}")
    model.load_state_dict(ck["state_dict"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    return ck


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a DFTnet checkpoint safely (no code execution) or raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: not a complete torch.save archive")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # CRC of every record: catches flipped bytes torch.load would not
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {e}") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: record {bad} fails its CRC check")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it references {found.group(1)}" if found else "it holds objects other than tensors and containers"
        raise CheckpointError(
            f"checkpoint {path} was refused by the safe loader (weights_only=True): {what}; "
            "nothing in it was executed"
        ) from None
    except Exception as e:  # damaged archives and records
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {msg}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not a DFTnet checkpoint (expected format {FORMAT!r}, "
            f"got {obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r})"
        )
    return obj


SAFETENSORS_FORMAT = "dftnet-safetensors-v1"


def save_safetensors(state_dict: dict, path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Export weights as ``.safetensors`` (no code, zero-copy loadable anywhere), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path, tensor_bytes(tensors)) as tmp:
        save_file(tensors, str(tmp), metadata={"format": SAFETENSORS_FORMAT, **metadata})
        with open(tmp, "rb+") as f:
            _sort_metadata(f)
            os.fsync(f.fileno())
    return path


def _sort_metadata(f) -> None:
    """Rewrite a safetensors header in place with its metadata keys sorted: safetensors writes them in a
    hash map's order, which changes from process to process, and the same weights should give the same
    bytes. The header keeps its length (its JSON is re-serialised the same way, padded with spaces)."""
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) <= n:
        f.seek(8)
        f.write(text.ljust(n, b" "))


def load_safetensors(path: str | os.PathLike, device="cpu") -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a DFTnet ``.safetensors`` export, or :class:`CheckpointError`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"weights file {path} is truncated or corrupt: {msg}") from None
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(f"weights file {path} is not a DFTnet export (metadata format "
                              f"{metadata.get('format')!r}, expected {SAFETENSORS_FORMAT!r})")
    return tensors, metadata
