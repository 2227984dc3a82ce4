"""Write failures: a full disk (a 3 MB tmpfs when the tests run as root, else a writer patched to raise
ENOSPC), permission denied and a read-only folder end in one line naming the path and the cause, exit
status 1 and no traceback; the last good checkpoint loads, no temporary file remains, and ``--resume``
(once space is freed) ends equal to an uninterrupted run."""

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

from dftnet.experiments.cli import main
from dftnet.experiments.harness.checkpoint import load_checkpoint
from dftnet.experiments.harness.runfolder import LOCK_NAME
from dftnet.experiments.harness.writes import WriteError

# dense 784-128-10: a checkpoint (weights + two Adam moments) is about 1.2 MB, so a 3 MB disk holds
# two of them but not the third that the end of epoch 1 needs (best.pt, last.pt and its temporary).
RUN = ["train", "--layer", "dense", "--widths", "784,128,10", "--limit", "256", "--batch-size", "32",
       "--epochs", "2", "--checkpoint-every", "2", "--quiet", "--seed", "1"]
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _one_line(err):
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def _leftovers(folder: Path) -> list:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name or p.name == LOCK_NAME]


def _mount(path: Path, *options) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    return load_checkpoint(out / "dense" / "last.pt")


def _assert_same(ref, out: Path):
    got = load_checkpoint(out / "dense" / "last.pt")
    assert got["step"] == ref["step"]
    for k in ref["state_dict"]:
        assert torch.equal(ref["state_dict"][k], got["state_dict"][k]), k
    assert [r["train_loss"] for r in got["history"]] == [r["train_loss"] for r in ref["history"]]
    assert [r["val_loss"] for r in got["history"]] == [r["val_loss"] for r in ref["history"]]


def failing_save(monkeypatch, code: int, after: int):
    """Patch the checkpoint writer: its call number ``after + 1`` writes a little, then fails with ``code``."""
    real, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) > after:
            f.write(b"\0" * 1000)
            raise OSError(code, os.strerror(code))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    return lambda: monkeypatch.setattr(torch, "save", real)


@pytest.fixture(params=["tmpfs", "patched"])
def full_disk(request, tmp_path, monkeypatch):
    """(folder on a full-at-the-fifth-checkpoint disk, free_space()). Checkpoints 1-3 are steps 2, 4, 6;
    the end of epoch 1 writes best.pt (4) and fails on last.pt (5)."""
    if request.param == "tmpfs":
        disk = tmp_path / "disk"
        if not ROOT or not _mount(disk, "size=3m"):
            pytest.skip("a tmpfs needs root and mount")
        yield disk, lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    else:
        yield tmp_path, failing_save(monkeypatch, errno.ENOSPC, after=4)


@pytest.mark.subprocess
def test_disk_full_stops_cleanly_and_resume_finishes(capsys, full_disk, reference):
    disk, free_space = full_disk
    out = disk / "run"
    code = main([*RUN, "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 1, err
    _one_line(err)
    last = out / "dense" / "last.pt"
    assert err.startswith(f"dftnet: error: cannot write {last}: no space left on device (a checkpoint needs "
                          "about 1.2 MiB, "), err
    assert f"dense stopped at step 8, its last good checkpoint is kept: once fixed, continue with dftnet " \
           f"train --resume --out {out}" in err
    assert load_checkpoint(last)["step"] == 6  # the previous checkpoint, whole
    assert not _leftovers(out)
    free_space()
    code = main([*RUN, "--out", str(out), "--resume"])
    assert code == 0, capsys.readouterr().err
    _assert_same(reference, out)
    assert not _leftovers(out)


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    failing_save(monkeypatch, errno.ENOSPC, after=0)
    with pytest.raises(WriteError, match="no space left on device"):
        main(["--debug", *RUN, "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("code,cause", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")])
def test_permission_denied_and_read_only_during_training(capsys, tmp_path, monkeypatch, code, cause):
    """As root chmod does not stop writes: the writer is patched to fail as the kernel would."""
    failing_save(monkeypatch, code, after=2)
    out = tmp_path / "run"
    assert main([*RUN, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    _one_line(err)
    assert f"cannot write {out / 'dense' / 'last.pt'}: {cause};" in err and "(a checkpoint" not in err
    assert load_checkpoint(out / "dense" / "last.pt")["step"] == 4 and not _leftovers(out)


@pytest.mark.skipif(ROOT, reason="root writes through file permissions")
def test_unwritable_folder(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert main([*RUN, "--out", str(out)]) == 1
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    _one_line(err)
    assert f"cannot create the lock file {out / LOCK_NAME}: permission denied" in err


@pytest.mark.subprocess
def test_read_only_folder(capsys, tmp_path, monkeypatch):
    """A finished run on a read-only file system: a new run or --resume cannot lock it (exit 1, files
    unchanged); eval reads it. Root remounts a tmpfs read-only; others get a patched open()."""
    disk = tmp_path / "disk"
    mounted = ROOT and _mount(disk, "size=16m")
    out = disk / "run"
    try:
        small = [*RUN[:4], "784,16,10", *RUN[5:]]
        assert main([*small, "--out", str(out)]) == 0
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        else:
            real_open = os.open

            def ro_open(path, flags, *a, **k):
                if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and str(path).startswith(str(disk)):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
                return real_open(path, flags, *a, **k)

            monkeypatch.setattr(os, "open", ro_open)
        capsys.readouterr()
        for extra in (["--resume"], ["--overwrite"]):
            assert main([*small, "--out", str(out), *extra]) == 1
            err = capsys.readouterr().err
            _one_line(err)
            assert f"cannot create the lock file {out / LOCK_NAME}: read-only file system" in err
        assert main(["eval", str(out / "dense" / "best.pt"), "--limit", "64"]) == 0
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    finally:
        monkeypatch.undo()
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_out_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    for argv in (["train", "--out", str(tmp_path / "file")],
                 ["bench", "--quick", "--out", str(tmp_path / "file" / "b")]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        _one_line(err)
        assert "cannot create output folder" in err and "is a file, not a folder" in err
    assert (tmp_path / "file").read_text() == "x"
