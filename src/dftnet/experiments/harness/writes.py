"""Atomic writes and one-line write errors: every output is written to a temporary file that is renamed
over the target (:func:`atomic_path`, :func:`write_text_atomic`); an ``OSError`` becomes a
:class:`WriteError` (exit status 1) that names the path and the cause (:func:`write_error`), never a
half-written file.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..tables import format_bytes

__all__ = ["WriteError", "atomic_path", "write_text_atomic", "write_error", "os_error_in",
           "make_folder", "remove_temporaries"]

_umask = os.umask(0o022)
os.umask(_umask)
FILE_MODE = 0o666 & ~_umask


class WriteError(Exception):
    """An output could not be written (disk full, permission denied, read-only, a file in the way):
    one line naming the path and the cause, exit status 1. Nothing half-written is left behind."""

    def __init__(self, message: str, path: Path | None = None):
        super().__init__(message)
        self.path = path


def os_error_in(exc: BaseException) -> OSError | None:
    """The ``OSError`` an exception is or was raised from (``torch.save`` wraps ENOSPC in a RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _file_in_the_way(path: Path) -> Path | None:
    for p in [path, *path.parents]:
        if p.exists() and not p.is_dir():
            return p
    return None


def _free_bytes(path: Path) -> int | None:
    for p in [path, *path.parents]:
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None  # pragma: no cover


CAUSES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
          errno.EACCES: "permission denied", errno.EPERM: "permission denied",
          errno.EROFS: "read-only file system", errno.EISDIR: "it is a folder"}


def write_error(path, err: OSError, needed: int | None = None, what: str = "write") -> WriteError:
    """One line for a failed write: the path, the cause and, for a full disk, the space at stake."""
    path = Path(path)
    code = err.errno
    cause = CAUSES.get(code) or (err.strerror or str(err)).lower()
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(path)
        cause = f"{blocker} is a file, not a folder" if blocker is not None else cause
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = _free_bytes(path.parent)
        parts = ([f"a checkpoint needs about {format_bytes(needed)}"] if needed else []) \
            + ([f"{format_bytes(free)} free"] if free is not None else [])
        cause += f" ({', '.join(parts)})" if parts else ""
    return WriteError(f"cannot {what} {path}: {cause}", path)


def make_folder(folder: Path) -> None:
    """``mkdir -p`` that fails as a :class:`WriteError`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(folder, e, what="create output folder") from None
    if not folder.is_dir():  # pragma: no cover - mkdir raises FileExistsError first
        raise WriteError(f"cannot create output folder {folder}: it is a file, not a folder", folder)


@contextmanager
def atomic_path(path, needed: int | None = None, keep_suffix: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (``.stem.XXXX.tmp.ext``: the same suffix, so writers that
    go by it work; ``.name.XXXX.tmp`` without ``keep_suffix``); when the block ends, rename it over
    ``path``. On any error the temporary file is removed; an ``OSError`` (also one wrapped by the
    writer) becomes a :class:`WriteError` naming ``path``."""
    path = Path(path)
    prefix, suffix = (f".{path.stem}.", f".tmp{path.suffix}") if keep_suffix else (f".{path.name}.", ".tmp")
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
        os.fchmod(fd, FILE_MODE)  # mkstemp's 0600: outputs get the mode open() would give them
        os.close(fd)
    except OSError as e:
        raise write_error(path, e, needed) from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        found = os_error_in(e)
        if found is not None and not isinstance(e, WriteError):
            raise write_error(path, found, needed) from e
        raise


def write_text_atomic(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def remove_temporaries(folder: Path) -> list[Path]:
    """Temporary files a killed writer left behind (``.name.XXXX.tmp`` and ``.stem.XXXX.tmp.ext``)."""
    removed = []
    for pattern in (".*.tmp", ".*.tmp.*"):
        for tmp in Path(folder).glob(pattern):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed
