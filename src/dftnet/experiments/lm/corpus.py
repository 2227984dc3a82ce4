"""The corpus of ``dftnet lm``: the running interpreter's standard library, read as bytes.

It is on every machine with Python, so nothing is downloaded. The ``*.py`` files under
``sysconfig.get_paths()["stdlib"]`` are taken, except those in ``test/``, ``tests/`` (which covers
``idlelib/test``) and ``site-packages``: about 800 files and 12.6 MB on CPython 3.11. Bytes are the
tokens (a vocabulary of 256, no tokenizer).

Each file goes to training, validation or test by a stable hash (SHA-256) of its relative path, so the split
is the same on every machine with the same Python: 5% of the files validate (the curves, and every choice a
study makes, such as learning rates), another 5% are the held-out test split that only reports.
:attr:`Corpus.info` records the file counts, sizes and a content hash (SHA-256 over every file's relative path
and bytes), which go into the run's config.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..harness.errors import DataError

__all__ = ["Corpus", "STDLIB_ROOT", "EXCLUDED_DIRS", "VAL_PERMILLE", "TEST_PERMILLE", "stdlib_root",
           "corpus_files", "split_of", "is_validation", "split_files", "load_corpus", "batch_indices", "get_batch",
           "eval_windows"]

# Test hook: read this folder instead of the interpreter's standard library when set.
STDLIB_ROOT: Path | None = None

EXCLUDED_DIRS = frozenset({"test", "tests", "site-packages", "__pycache__"})
VAL_PERMILLE = 50  # 5% of the files (by path hash) are validation
TEST_PERMILLE = 50  # the next 5% are the test split


def stdlib_root() -> Path:
    return Path(STDLIB_ROOT) if STDLIB_ROOT is not None else Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: Path | None = None) -> list[str]:
    """Relative POSIX paths of the corpus files under ``root``, sorted."""
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise DataError(f"the corpus folder {root} does not exist (the standard library of this Python)")
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if EXCLUDED_DIRS.isdisjoint(rel.parts[:-1]) and path.is_file():
            files.append(rel.as_posix())
    return sorted(files)


def split_of(relpath: str) -> str:
    """``"val"``, ``"test"`` or ``"train"``: the first 8 bytes of SHA-256 of the relative path, mod 1000,
    below :data:`VAL_PERMILLE` are validation, the next :data:`TEST_PERMILLE` test, the rest training. The
    same answer on every machine, whatever order the files are listed in."""
    h = int.from_bytes(hashlib.sha256(relpath.encode("utf-8")).digest()[:8], "big") % 1000
    return "val" if h < VAL_PERMILLE else "test" if h < VAL_PERMILLE + TEST_PERMILLE else "train"


def is_validation(relpath: str) -> bool:
    return split_of(relpath) == "val"


def split_files(files: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``(train, val, test)``: each sorted, pairwise disjoint, together all of ``files``."""
    files = sorted(set(files))
    return tuple([f for f in files if split_of(f) == name] for name in ("train", "val", "test"))


@dataclass
class Corpus:
    """The training, validation and test byte streams (uint8 tensors: files concatenated in path order).
    ``test`` may be empty for a very small corpus (tests); what reports on it says so."""

    train: torch.Tensor
    val: torch.Tensor
    info: dict
    test: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))


def load_corpus(root: Path | None = None, limit: int | None = None) -> Corpus:
    """Read the corpus. ``limit`` keeps the first ``limit`` bytes of each stream (tests, demos); the
    recorded size and hash are always those of the whole corpus."""
    root = Path(root) if root is not None else stdlib_root()
    files = corpus_files(root)
    train_files, val_files, test_files = split_files(files)
    if not train_files or not val_files:
        raise DataError(f"the corpus in {root} has {len(files)} .py files: too few for a training and "
                        f"a validation split")
    contents = {}
    for rel in files:
        try:
            contents[rel] = (root / rel).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read corpus file {root / rel}: {e.strerror or e}") from None
    digest = hashlib.sha256()
    for rel in files:  # path order, whatever the split
        digest.update(rel.encode("utf-8") + b"\0" + contents[rel] + b"\0")
    streams = {name: b"".join(contents[f] for f in names)
               for name, names in (("train", train_files), ("val", val_files), ("test", test_files))}
    info = {
        "root": str(root), "files": len(files), "train_files": len(train_files), "val_files": len(val_files),
        "test_files": len(test_files), "bytes": sum(len(b) for b in streams.values()),
        "train_bytes": len(streams["train"]), "val_bytes": len(streams["val"]), "test_bytes": len(streams["test"]),
        "sha256": digest.hexdigest(), "limit": limit,
    }
    tensors = {}
    for name, data in streams.items():
        if limit is not None:
            data = data[:limit]
        tensors[name] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else \
            torch.empty(0, dtype=torch.uint8)
    return Corpus(tensors["train"], tensors["val"], info, tensors["test"])


def batch_indices(n_bytes: int, context: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Start offsets of the ``batch_size`` training windows of step ``step``: a function of
    (seed, step) alone, so every variant sees the same data in the same order, and resuming replays it."""
    if n_bytes < context + 2:
        raise DataError(f"the training stream has {n_bytes} bytes: too few for --context {context}")
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n_bytes - context - 1, (batch_size,), generator=g)


def get_batch(stream: torch.Tensor, starts: torch.Tensor, context: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-byte targets, ``(len(starts), context)`` each, as int64 on ``device``."""
    windows = stream.unfold(0, context + 1, 1)[starts].long()
    return windows[:, :-1].to(device), windows[:, 1:].to(device)


def eval_windows(stream: torch.Tensor, context: int, count: int) -> torch.Tensor:
    """Up to ``count`` non-overlapping windows of ``context + 1`` bytes, evenly spread over the whole
    validation stream: ``(k, context + 1)``, the same for every variant and every evaluation."""
    total = len(stream) // (context + 1)
    if total == 0:
        raise DataError(f"the evaluation stream has {len(stream)} bytes: too few for --context {context}")
    chosen = torch.linspace(0, total - 1, min(count, total)).round().long().unique()
    return stream[: total * (context + 1)].view(total, context + 1)[chosen]
