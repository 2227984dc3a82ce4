"""Run folders: a new run never writes over another run's outputs, and one live process writes a folder.

* :func:`claim` (``train``, ``sweep``, ``bench``): take the folder's lock, then refuse a folder that
  already holds outputs unless the user said ``--resume`` or ``--overwrite`` (which deletes them first).
* :class:`RunLock`: the lock file ``.dftnet.lock`` records pid, host and start time. The live holder
  also keeps an ``flock`` on it, which the kernel drops when the process dies: a lock whose holder is
  gone (killed, on this host) is taken over, with a note.

The writes themselves (temporary file, rename, one-line :class:`~.writes.WriteError`) are in
:mod:`.writes`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import datetime
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid check alone
    fcntl = None

from .writes import WriteError, make_folder, remove_temporaries, write_error

__all__ = ["RunFolderError", "RunLock", "LOCK_NAME", "claim", "run_outputs", "clear_outputs",
           "refuse_changed_config"]

LOCK_NAME = ".dftnet.lock"

# What each command writes into its --out folder (glob patterns relative to it).
OUTPUTS = {
    "train": ("config.json", "summary.json", "metrics.csv", "curves.png", "*/last.pt", "*/best.pt",
              "*/model.safetensors"),
    "sweep": ("sweep.json", "sweep.csv", "sweep.png", "frontier.png", "*/*/config.json", "*/*/*/last.pt"),
    "bench": ("bench.json", "bench.csv", "bench.png", "end_to_end.csv"),
    "lm": ("config.json", "summary.json", "metrics.csv", "lm.png", "*/last.pt"),
    "study": ("study.json", "study.md", "costs.json", "cells/*.json"),
}
WHAT = {"train": "a training run", "sweep": "a sweep", "bench": "a benchmark", "lm": "a language-model run",
        "study": "a study"}


class RunFolderError(Exception):
    """The folder holds another run, or a live process is writing it: one line, exit status 2."""


# ------------------------------------------------------------------------- existing outputs


def run_outputs(folder: Path) -> dict[str, list[Path]]:
    """The dftnet outputs ``folder`` holds, by command (empty when it holds none)."""
    found = {}
    for kind, patterns in OUTPUTS.items():
        files = sorted({p for pattern in patterns for p in Path(folder).glob(pattern) if p.is_file()},
                       key=lambda p: (len(p.parts), str(p)))
        if files:
            found[kind] = files
    if _config_command(folder) == "study":  # its config.json and frontier.png are the study's
        for other in ("train", "lm", "sweep"):
            found.pop(other, None)
        found.setdefault("study", [Path(folder) / "config.json"])
    if "train" in found and "lm" in found:  # same file names: the run's config.json says which it is
        del found["lm" if _config_command(folder) != "lm" and not (Path(folder) / "lm.png").exists() else "train"]
    return found


def _config_command(folder: Path) -> str | None:
    """The ``command`` recorded in a run's ``config.json`` (``dftnet lm`` writes "lm"; train none)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("command") if isinstance(config, dict) else None


def clear_outputs(folder: Path, found: dict[str, list[Path]]) -> None:
    """``--overwrite``: delete the outputs :func:`run_outputs` found (and the folders they leave empty)."""
    for files in found.values():
        for f in files:
            if f.parent != folder and f.name == "config.json":  # a sweep's run folder: clear it whole
                clear_outputs(f.parent, run_outputs(f.parent))
                _remove_empty(f.parent, folder)
                continue
            f.unlink(missing_ok=True)
            remove_temporaries(f.parent)
            _remove_empty(f.parent, folder)
    remove_temporaries(folder)


def _remove_empty(path: Path, stop: Path) -> None:
    while path != stop and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


def _list(files: list[Path], folder: Path, most: int = 3) -> str:
    names = [str(f.relative_to(folder)) for f in files]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


# ------------------------------------------------------------------------- the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict) -> str:
    return (f"{holder.get('command', 'dftnet')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')})")


class RunLock:
    """``.dftnet.lock`` in ``folder``: JSON {pid, host, started, command}, flock-ed while held."""

    def __init__(self, folder, command: str = "dftnet"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self.fd: int | None = None

    def acquire(self, note=None) -> RunLock:
        """Take the lock, or raise :class:`RunFolderError` naming the live holder; ``note(message)``
        (default: a line on stderr) hears of a lock taken over from a run that is gone."""
        note = note or (lambda message: print(message, file=sys.stderr))
        for _ in range(10):  # retried only when the holder removed the file while we opened it
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise write_error(self.path, e, what="create the lock file") from None
            try:
                if self._take(fd, note):
                    self.fd = fd
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise RunFolderError(f"{self.folder}: could not take the lock {self.path}")  # pragma: no cover

    def _take(self, fd: int, note) -> bool:
        flocked = False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flocked = True
            except BlockingIOError:
                raise RunFolderError(f"{self.folder} is being written by a live run: "
                                     f"{describe(self._read(fd))}; wait for it to end, or use another "
                                     "--out") from None
            except OSError:  # a file system without flock: the pid check alone
                pass
        try:
            if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                return False
        except FileNotFoundError:
            return False
        holder = self._read(fd)
        host = socket.gethostname()
        if holder and holder.get("pid") is not None:
            if holder.get("host") != host:
                raise RunFolderError(f"{self.folder} is locked by {describe(holder)}, another host; if that "
                                     f"run is no longer running, delete {self.path}")
            if not flocked and _pid_alive(int(holder["pid"])) and holder["pid"] != os.getpid():
                raise RunFolderError(f"{self.folder} is being written by a live run: {describe(holder)}; "
                                     "wait for it to end, or use another --out")
            note(f"note: took over the lock of {describe(holder)}, which is no longer running")
        mine = {"pid": os.getpid(), "host": host, "started": datetime.now().isoformat(timespec="seconds"),
                "command": self.command}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(mine) + "\n").encode(), 0)
        except OSError as e:
            raise write_error(self.path, e, what="write the lock file") from None
        return True

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            data = os.pread(fd, 4096, 0)
            holder = json.loads(data.decode() or "{}")
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc):
        self.release()


def refuse_changed_config(folder, config: dict, keys) -> None:
    """``--resume``: refuse flags that differ from the run's ``config.json`` in ``keys``."""
    try:
        was = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return  # no config yet: the checkpoints' own check still applies
    from ..configflags import json_value as norm
    changed = [f"--{k.replace('_', '-')} {_flag(was[k])} (now {_flag(config[k])})" for k in keys
               if k in was and k in config and norm(was[k]) != norm(config[k])]
    if changed:
        raise RunFolderError(f"--resume: the run in {folder} was started with other flags: {', '.join(changed)}; "
                             "resume with the run's flags, or start a new run with a new --out")


def _flag(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def claim(folder, kind: str, *, resume: bool = False, overwrite: bool = False, command: str | None = None,
          log=print) -> RunLock:
    """Make ``folder``, take its lock, and check it may be written by a new ``kind`` run (train, sweep,
    bench, lm): refuse one holding outputs unless ``resume`` (train, lm, sweep) or ``overwrite`` (then delete them).
    Returns the held lock (release it when the run ends)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise WriteError(f"cannot create output folder {folder}: it is a file, not a folder", folder)
    make_folder(folder)
    lock = RunLock(folder, command or f"dftnet {kind}").acquire()
    try:
        found = run_outputs(folder)
        if resume and kind in found:
            found = {}
        if found:
            if not overwrite:
                held = ", ".join(f"{WHAT[k]} ({_list(files, folder)})" for k, files in found.items())
                resumable = kind in ("train", "lm", "sweep", "study") and kind in found
                hint = "use --resume to continue it, a new --out" if resumable \
                    else "use a new --out"
                raise RunFolderError(f"{folder} already holds {held}: {hint}, or --overwrite to replace it")
            try:
                clear_outputs(folder, found)
            except OSError as e:
                raise write_error(getattr(e, "filename", None) or folder, e, what="remove") from None
            log(f"--overwrite: removed the earlier outputs in {folder}")
        remove_temporaries(folder)
    except BaseException:
        lock.release()
        raise
    return lock
