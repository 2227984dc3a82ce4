"""The command line, untrusted checkpoint files and killed runs: clear errors or clean recovery, nothing lost.

Moved from tests/test_hardening.py (which keeps the layer's hardening tests). Each test counts what it
tried in ``TRIED`` (printed at the end of the session with -s / in CI logs).
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from child_scripts import slow_checkpoint_cli

from dftnet.experiments.cli import main
from dftnet.experiments.harness.checkpoint import CheckpointError, load_checkpoint, save_atomic
from dftnet.experiments.mnist.evaluate import load_model

TRIED = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\nhardening inputs tried: " + ", ".join(f"{k}={v}" for k, v in sorted(TRIED.items())))


# --- CLI ---------------------------------------------------------------------------------------

BAD_CLI = [
    ["train", "--epochs", "-2"], ["train", "--epochs", "0"], ["train", "--lr", "nan"], ["train", "--lr", "-1"],
    ["train", "--lr", "1e-3x"], ["train", "--batch-size", "-5"], ["train", "--widths", "784,100,11"],
    ["train", "--widths", "700,100,10"], ["train", "--widths", ""], ["train", "--max-steps", "0"],
    ["train", "--device", "tpu"], ["train", "--seed", "abc"], ["train", "--bogus"],
    ["eval", "--bogus", "x.pt"], ["bench", "--widths", "0"], ["bench", "--batches", "x"], ["bench", "--bogus"],
    ["sweep", "--W", "abc"], ["sweep", "--variants", "conv"], ["sweep", "--datasets", "cifar"], ["sweep", "--bogus"],
    ["sweep", "--epochs", "-1"],
]


@pytest.mark.parametrize("argv", BAD_CLI, ids=[" ".join(a) for a in BAD_CLI])
def test_cli_bad_values_exit_2_one_line(capsys, argv, tmp_path):
    TRIED["cli-bad-flag"] += 1
    code = main(argv + (["--out", str(tmp_path / "o")] if argv[0] in ("train",) and "--bogus" not in argv else []))
    _, err = capsys.readouterr()
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_cli_unwritable_out(capsys, tmp_path):
    TRIED["cli-bad-out"] += 1
    afile = tmp_path / "file"
    afile.write_text("x")
    code = main(["train", "--out", str(afile / "sub"), "--limit", "64", "--widths", "784,8,10"])
    _, err = capsys.readouterr()
    assert code == 1 and "cannot create output folder" in err and "is a file, not a folder" in err  # a write failure
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_cli_debug_shows_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "dftnet", "--debug", "eval", str(tmp_path / "none.pt")],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "Traceback" in res.stderr


# --- checkpoints ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    assert main(["train", "--layer", "dft", "--widths", "784,16,10", "--limit", "64", "--epochs", "1",
                 "--batch-size", "32", "--quiet", "--out", str(out)]) == 0
    return out / "dft"


def test_truncated_and_corrupt_checkpoints_refused(trained, tmp_path):
    data = (trained / "best.pt").read_bytes()
    for cut in (0, 10, len(data) // 3, len(data) - 5):
        TRIED["checkpoint-truncated"] += 1
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_checkpoint(bad)
    for pos in (len(data) // 4, len(data) // 2):
        TRIED["checkpoint-corrupt"] += 1
        b = bytearray(data)
        b[pos : pos + 16] = bytes(16)
        bad = tmp_path / f"flip{pos}.pt"
        bad.write_bytes(bytes(b))
        with pytest.raises(CheckpointError, match="corrupt"):
            load_checkpoint(bad)


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    TRIED["checkpoint-pickle-payload"] += 1
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "dftnet-checkpoint-v1", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        load_checkpoint(path)
    assert not marker.exists()


def test_foreign_checkpoints_refused(trained, tmp_path):
    TRIED["checkpoint-foreign"] += 3
    path = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a DFTnet checkpoint"):
        load_checkpoint(path)
    ck = load_checkpoint(trained / "best.pt")
    ck["model"]["widths"] = [784, 32, 10]  # weights of a 784-16-10 net
    save_atomic(ck, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(tmp_path / "mismatch.pt")
    ck["model"]["kind"] = "transformer"
    save_atomic(ck, tmp_path / "kind.pt")
    with pytest.raises(CheckpointError, match="cannot build"):
        load_model(tmp_path / "kind.pt")


def test_safetensors_export_round_trip_and_corruption(trained, tmp_path, capsys):
    TRIED["safetensors"] += 2
    model_pt, _ = load_model(trained / "best.pt")
    model_st, _ = load_model(trained / "model.safetensors")
    for (k, a), (_, b) in zip(model_pt.state_dict().items(), model_st.state_dict().items()):
        assert torch.equal(a, b), k
    data = (trained / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    assert main(["eval", str(tmp_path / "cut.safetensors")]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


# --- killed and interrupted runs -----------------------------------------------------------------

RUN = ["-m", "dftnet", "train", "--layer", "dft", "--widths", "784,32,10", "--limit", "512",
       "--batch-size", "32", "--epochs", "2", "--quiet", "--checkpoint-every", "2", "--seed", "3"]


# The command line with os.replace patched in the child: sleep between writing (and fsync-ing) a
# checkpoint's temporary file and renaming it over the checkpoint, widening the window a SIGKILL can hit.
SLOW_SAVE = slow_checkpoint_cli(0.5)


def _start(out, slow_save=False):
    program = ["-c", SLOW_SAVE] if slow_save else RUN[:2]
    return subprocess.Popen([sys.executable, *program, *RUN[2:], "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_step(path: Path, step: int, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists():
            try:
                if load_checkpoint(path)["step"] >= step:
                    return
            except CheckpointError:
                pytest.fail("a reader saw a half-written checkpoint")
        if proc.poll() is not None:
            return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    proc = _start(out)
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    return load_checkpoint(out / "dft" / "last.pt")


def _assert_same(ref, out):
    got = load_checkpoint(out / "dft" / "last.pt")
    assert got["step"] == ref["step"]
    for k in ref["state_dict"]:
        assert torch.equal(ref["state_dict"][k], got["state_dict"][k]), k
    assert [r["val_loss"] for r in got["history"]] == [r["val_loss"] for r in ref["history"]]
    assert [r["train_loss"] for r in got["history"]] == [r["train_loss"] for r in ref["history"]]


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("kill_at_step", [4, 16, 20])  # mid-epoch 1, its end, mid-epoch 2
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, reference_run, kill_at_step):
    TRIED["sigkill"] += 1
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for_step(out / "dft" / "last.pt", kill_at_step, proc)
    proc.kill()
    proc.communicate()
    assert load_checkpoint(out / "dft" / "last.pt")  # whatever was there is whole
    res = subprocess.run([sys.executable, *RUN, "--out", str(out), "--resume"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    _assert_same(reference_run, out)


@pytest.mark.subprocess
@pytest.mark.slow
def test_sigkill_during_checkpoint_write(tmp_path, reference_run):
    """A slow rename (os.replace patched in the child) stretches the window between writing the temp file and
    renaming it."""
    TRIED["sigkill-during-write"] += 1
    out = tmp_path / "run"
    proc = _start(out, slow_save=True)
    t0 = time.time()
    while time.time() - t0 < 120 and not list((out / "dft").glob(".last.pt.*.tmp")):
        time.sleep(0.01)
    proc.kill()
    proc.communicate()
    if (out / "dft" / "last.pt").exists():
        load_checkpoint(out / "dft" / "last.pt")  # never half-written
    res = subprocess.run([sys.executable, *RUN, "--out", str(out), "--resume"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    _assert_same(reference_run, out)
    assert not list((out / "dft").glob("*.tmp")), "stale temporary files are cleaned up"


@pytest.mark.subprocess
@pytest.mark.slow
def test_ctrl_c_saves_and_says_how_to_resume(tmp_path, reference_run):
    TRIED["sigint"] += 1
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for_step(out / "dft" / "last.pt", 6, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with: dftnet train --resume --out" in err and "Traceback" not in err
    res = subprocess.run([sys.executable, *RUN, "--out", str(out), "--resume"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    _assert_same(reference_run, out)
