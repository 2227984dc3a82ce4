"""DDP under torchrun: 2 CPU processes (gloo) end with the same weights as 1 process, same global batch."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from dftnet.experiments.harness.checkpoint import load_checkpoint
from dftnet.experiments.mnist.models import build_model

pytestmark = pytest.mark.slow  # torchrun with 1 and 2 processes: about 45 s in all

ARGS = ["--widths", "784,48,10", "--limit", "256", "--batch-size", "32", "--epochs", "2", "--quiet",
        "--device", "cpu", "--lr", "5e-3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Runs the command line with the training loop's test hook set: every process raises its stop flag
# (a stand-in for Ctrl-C) after this many steps.
STOP_AFTER = """import sys
from dftnet.experiments.harness import interrupt
interrupt.STOP_AFTER_STEPS = {steps}
from dftnet.experiments.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _torchrun(nproc, out, *extra, stop_after=None, expect=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if stop_after is None:
        program = ["-m", "dftnet"]
    else:
        script = out.parent / f"stop_after_{stop_after}.py"
        script.write_text(STOP_AFTER.format(steps=stop_after))
        program = [str(script)]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={_free_port()}", *program, "train", *ARGS, "--out", str(out), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert (res.returncode != 0) if expect is None else (res.returncode == expect), res.stderr[-3000:]
    return res


@pytest.mark.parametrize("layer", ["dft", "dense"])
def test_two_processes_match_one(tmp_path, layer):
    _torchrun(1, tmp_path / "one", "--layer", layer)
    two = _torchrun(2, tmp_path / "two", "--layer", layer)
    assert two.stdout.count("parameters") == 1  # only rank 0 prints the table
    a = load_checkpoint(tmp_path / "one" / layer / "last.pt")
    b = load_checkpoint(tmp_path / "two" / layer / "last.pt")
    assert a["step"] == b["step"]
    # float32; the two runs differ only in the order of the gradient sums (per-rank mean, then mean).
    # The output layer's DC bin shifts every logit equally: its gradient is exactly zero, so Adam walks it
    # by rounding noise. The models agree as classifiers (same log-probabilities) and in every other entry.
    for k in a["state_dict"]:
        if not k.endswith("spectrum"):
            torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], rtol=1e-4, atol=1e-5)
    x = torch.randn(64, 784)
    log_p = []
    for ck in (a, b):
        model = build_model(layer, (784, 48, 10))
        model.load_state_dict(ck["state_dict"])
        with torch.no_grad():
            log_p.append(torch.log_softmax(model(x), -1))
    torch.testing.assert_close(log_p[1], log_p[0], rtol=1e-4, atol=1e-4)
    for ra, rb in zip(a["history"], b["history"]):
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-4
        assert abs(ra["val_acc"] - rb["val_acc"]) < 1e-9 or abs(ra["val_loss"] - rb["val_loss"]) < 1e-3


def test_resume_under_ddp(tmp_path):
    """Stop a 2-process run mid-epoch (as Ctrl-C would), resume it: same weights as uninterrupted."""
    _torchrun(2, tmp_path / "full", "--layer", "dft")
    cut = tmp_path / "cut"
    res = _torchrun(2, cut, "--layer", "dft", stop_after=5, expect=None)  # torchrun: 1 if a worker failed
    assert "resume with" in res.stderr
    assert load_checkpoint(cut / "dft" / "last.pt")["step"] == 5
    _torchrun(2, cut, "--layer", "dft", "--resume")
    a = load_checkpoint(tmp_path / "full" / "dft" / "last.pt")
    b = load_checkpoint(cut / "dft" / "last.pt")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
