"""Run folders: a new run never overwrites another's outputs, one live process per folder (stale locks
are taken over), and a failed write (disk full, permission denied, read-only) ends in one line, exit
status 1, the last good checkpoint intact, nothing half-written, and ``--resume`` finishing the run."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from child_scripts import slow_checkpoint_cli

from dftnet.experiments.cli import main
from dftnet.experiments.harness.checkpoint import load_checkpoint
from dftnet.experiments.harness.runfolder import LOCK_NAME, RunFolderError, RunLock

TINY = ["--layer", "dft", "--widths", "784,16,10", "--limit", "64", "--batch-size", "32", "--epochs", "1",
        "--quiet"]
BENCH = ["bench", "--widths", "32", "--batches", "2", "--modes", "fwd", "--repeats", "1", "--budget", "0.01",
         "--no-plot", "--device", "cpu", "--no-end-to-end"]


def _call(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err):
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporaries(folder: Path) -> list:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name or p.name == LOCK_NAME]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished run (the folder is copied by tests that write)."""
    out = tmp_path_factory.mktemp("done") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


# --- existing folders --------------------------------------------------------------------------


def test_second_run_on_existing_folder_is_refused_and_changes_nothing(capsys, done):
    before = _snapshot(done)
    code, _, err = _call(capsys, "train", "--layer", "dense", "--widths", "784,8,10", "--limit", "64",
                         "--quiet", "--out", str(done))
    assert code == 2
    _one_line(err)
    assert f"{done} already holds a training run" in err
    assert "use --resume to continue it, a new --out, or --overwrite to replace it" in err
    assert _snapshot(done) == before and not _temporaries(done)


def test_resume_with_other_flags_is_refused(capsys, done):
    before = _snapshot(done)
    for flags, needle in ((["--widths", "784,8,10"], "--widths 784,16,10 (now 784,8,10)"),
                          (["--limit", "128"], "--limit 64 (now 128)"), (["--seed", "5"], "--seed 0 (now 5)")):
        argv = [*TINY, *flags]
        code, _, err = _call(capsys, "train", *argv, "--out", str(done), "--resume")
        assert code == 2 and needle in err, err
        _one_line(err)
    assert _snapshot(done) == before


def test_overwrite_replaces_the_run(capsys, tmp_path, done):
    out = tmp_path / "run"
    subprocess.run(["cp", "-r", str(done), str(out)], check=True)
    (out / "notes.txt").write_text("mine")  # not a dftnet output: kept
    code, _, err = _call(capsys, "train", *TINY[2:], "--layer", "dense", "--out", str(out), "--overwrite")
    assert code == 0, err
    assert not (out / "dft").exists() and (out / "dense" / "last.pt").exists()
    assert json.loads((out / "config.json").read_text())["layer"] == "dense"
    assert (out / "notes.txt").read_text() == "mine" and not _temporaries(out)


def test_sweep_and_bench_folders_are_not_overwritten(capsys, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    code, out, err = _call(capsys, "sweep", "--W", "8", "--variants", "dft", "--limit", "64", "--out", str(sweep))
    assert code == 2
    assert "already holds a sweep (sweep.json): use --resume to continue it, a new --out, or --overwrite" in err
    _one_line(err)
    assert out == "" and (sweep / "sweep.json").read_text() == "{}"

    bench = tmp_path / "bench"
    assert _call(capsys, *BENCH, "--out", str(bench))[0] == 0
    before = _snapshot(bench)
    code, out, err = _call(capsys, *BENCH, "--out", str(bench))
    assert code == 2 and "already holds a benchmark (bench.csv, bench.json)" in err and out == ""
    _one_line(err)
    assert _snapshot(bench) == before
    assert _call(capsys, *BENCH, "--out", str(bench), "--overwrite")[0] == 0


# --- concurrent runs -----------------------------------------------------------------------------

HOLD = """import sys, time
from dftnet.experiments.harness.runfolder import RunLock
lock = RunLock(sys.argv[1], "dftnet train").acquire()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def held(tmp_path, done):
    """``done``'s run copied, and locked by another live process."""
    out = tmp_path / "run"
    subprocess.run(["cp", "-r", str(done), str(out)], check=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "locked"
    yield out, proc
    proc.kill()
    proc.wait()


def test_live_lock_refuses_writers_and_lets_eval_read(capsys, held):
    out, proc = held
    before = _snapshot(out)
    for argv in (["train", *TINY, "--out", str(out)], ["train", *TINY, "--out", str(out), "--resume"],
                 ["train", *TINY, "--out", str(out), "--overwrite"], [*BENCH, "--out", str(out)],
                 ["sweep", "--W", "8", "--variants", "dft", "--limit", "64", "--out", str(out)]):
        code, _, err = _call(capsys, *argv)
        assert code == 2, (argv, err)
        _one_line(err)
        assert f"{out} is being written by a live run: dftnet train (pid {proc.pid} on {socket.gethostname()}, " \
               "started " in err
    assert _snapshot(out) == before
    code, stdout, err = _call(capsys, "eval", str(out / "dft" / "last.pt"), "--limit", "64")  # reading is safe
    assert code == 0 and "test accuracy" in stdout, err


def test_stale_lock_is_taken_over(capsys, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "started": "2020-01-01T00:00:00", "command": "dftnet train"}
    (out / LOCK_NAME).write_text(json.dumps(stale))
    code, _, err = _call(capsys, "train", *TINY, "--out", str(out))
    assert code == 0, err
    assert f"note: took over the lock of dftnet train (pid {dead.pid} on {socket.gethostname()}, started " \
           "2020-01-01T00:00:00), which is no longer running" in err
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_lock_of_another_host_is_not_taken(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    with pytest.raises(RunFolderError, match="another host; if that run is no longer running, delete "):
        RunLock(tmp_path).acquire()


def test_lock_records_pid_host_start_and_is_exclusive_in_process(tmp_path):
    with RunLock(tmp_path, "dftnet sweep") as lock:
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["command"] == "dftnet sweep"
        assert "T" in info["started"]
        with pytest.raises(RunFolderError, match="is being written by a live run"):
            RunLock(tmp_path).acquire()
    assert lock.fd is None and not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path).acquire().release()


SLOW_TRAIN = slow_checkpoint_cli(0.3)


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_train_processes_on_one_folder(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--layer", "dft", "--widths", "784,16,10", "--limit", "256", "--batch-size", "32",
            "--epochs", "2", "--quiet", "--checkpoint-every", "2", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (out / "dft" / "last.pt").exists() and time.time() - t0 < 60 and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "dftnet", *argv[:-2], "--widths", "784,8,10", "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    _one_line(second.stderr)
    assert f"is being written by a live run: dftnet train (pid {first.pid} " in second.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert json.loads((out / "config.json").read_text())["widths"] == [784, 16, 10]


# Under torchrun the command line with the checkpoint writer patched: its second call fails (disk full).
DDP_FULL = """import errno, os, sys, torch
real, calls = torch.save, []
def save(obj, f, *a, **k):
    calls.append(1)
    if len(calls) > 1:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(obj, f, *a, **k)
torch.save = save
from dftnet.experiments.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.subprocess
@pytest.mark.slow
def test_torchrun_rank0_locks_and_write_failures_stop_every_rank(tmp_path, held):
    """A refusal or a failed checkpoint on rank 0 ends every rank (none waits forever), one line."""
    out, proc = held
    script = tmp_path / "ddp_full.py"
    script.write_text(DDP_FULL)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(program, folder, *extra):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                               f"--master-port={port}", *program, "train", *TINY, "--device", "cpu",
                               "--limit", "256", "--checkpoint-every", "2", "--out", str(folder), *extra],
                              capture_output=True, text=True, env=env, timeout=180)

    res = torchrun(["-m", "dftnet"], out, "--resume")
    assert res.returncode != 0
    assert res.stderr.count(f"is being written by a live run: dftnet train (pid {proc.pid} ") == 1, res.stderr[-2000:]
    res = torchrun([str(script)], tmp_path / "full")
    assert res.returncode != 0
    assert res.stderr.count("no space left on device") == 1, res.stderr[-2000:]
    assert load_checkpoint(tmp_path / "full" / "dft" / "last.pt")["step"] == 2
    assert not list((tmp_path / "full").rglob(".*"))
