"""Faults of long runs (issue 22): divergence, SIGTERM, a model too big for memory, memory running out in a step.

Each ends with one line, its documented exit status and whole, finite checkpoints; a stopped run resumes
bit-identical to an uninterrupted one. SIGTERM is real (the process signals itself at a chosen step, or
torchrun's agent is signalled from outside); faults inside a step are injected by wrapping ``train_step``.
"""

import math
import os
import signal

import pytest
import torch

from dftnet.experiments.cli import main
from dftnet.experiments.harness import guard, loop, preflight
from dftnet.experiments.harness.checkpoint import load_checkpoint
from dftnet.experiments.lm.gpt import GPT, GPTConfig
from dftnet.experiments.mnist import train as train_mod

TRAIN = ["train", "--layer", "dft", "--widths", "784,24,10", "--limit", "256", "--batch-size", "32", "--epochs", "2",
         "--quiet", "--device", "cpu", "--checkpoint-every", "2"]  # 8 steps per epoch, 16 in all
LM = ["lm", "--variants", "dft", "--d-model", "32", "--layers", "1", "--heads", "2", "--context", "32",
      "--batch-size", "8", "--max-steps", "6", "--eval-every", "2", "--device", "cpu", "--quiet", "--limit", "100000"]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _finite(ck: dict) -> bool:
    tensors = list(ck["state_dict"].values()) + [v for s in ck["optimizer"]["state"].values() for v in s.values()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if torch.is_tensor(t) and t.is_floating_point())


def _same(a_dir, b_dir, net="dft"):
    a, b = load_checkpoint(a_dir / net / "last.pt"), load_checkpoint(b_dir / net / "last.pt")
    assert a["step"] == b["step"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert json_rows(a) == json_rows(b)


def json_rows(ck):
    return [{k: v for k, v in row.items() if k not in ("seconds", "examples_per_s")} for row in ck["history"]]


def _wrap_step(monkeypatch, module, at: int, action):
    """Run ``action(r)`` after (or instead of, if it raises) the ``at``-th call of ``module.train_step``."""
    real, calls = module.train_step, [0]

    def step(net, r, *args):
        calls[0] += 1
        out = real(net, r, *args)
        if calls[0] == at:
            action(r)
        return out

    monkeypatch.setattr(module, "train_step", step)


def _poison(r):
    with torch.no_grad():
        next(r.model.parameters()).fill_(math.nan)


def _sigterm(r):
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


# --- divergence ------------------------------------------------------------------------------------


def test_diverging_train_stops_with_one_line_and_exit_3(capsys, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--layer", "dense", "--widths", "784,24,10", "--limit", "256", "--batch-size", "32",
                 "--lr", "1e8", "--quiet", "--checkpoint-every", "1", "--out", str(out)])
    line = _one_line(capsys.readouterr().err)
    assert code == guard.EXIT_DIVERGED == 3
    assert "dense diverged at step" in line and "peak 1e+08" in line and "try a lower --lr" in line
    ck = load_checkpoint(out / "dense" / "last.pt")  # what was kept: finite
    assert ck["step"] >= 1 and _finite(ck) and f"step {ck['step'] + 1}:" in line


@pytest.mark.parametrize("at,stopped,kept", [(5, 6, 4), (4, 4, 2)])  # weights go bad mid-interval / at a save
def test_non_finite_weights_are_never_written(capsys, tmp_path, monkeypatch, at, stopped, kept):
    _wrap_step(monkeypatch, loop, at, _poison)
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 3
    line = _one_line(capsys.readouterr().err)
    assert f"dft diverged at step {stopped}: the " in line and str(out / "dft" / "last.pt") in line
    ck = load_checkpoint(out / "dft" / "last.pt")
    assert ck["step"] == kept and _finite(ck)


def test_diverging_lm_stops_with_one_line_and_exit_3(capsys, tmp_path):
    out = tmp_path / "run"
    assert main([*LM, "--lr", "1e4", "--eval-every", "1", "--out", str(out)]) == 3
    line = _one_line(capsys.readouterr().err)
    assert "dft diverged at step" in line and "--lr 1e+03" in line and "dftnet lm --overwrite" in line
    if (out / "dft" / "last.pt").exists():
        assert _finite(load_checkpoint(out / "dft" / "last.pt"))


def test_lm_poisoned_weights_keep_the_last_finite_checkpoint(capsys, tmp_path, monkeypatch):
    _wrap_step(monkeypatch, loop, 3, _poison)
    out = tmp_path / "run"
    assert main([*LM, "--out", str(out)]) == 3
    assert "dft diverged at step 4: the loss is nan" in _one_line(capsys.readouterr().err)
    ck = load_checkpoint(out / "dft" / "last.pt")
    assert ck["step"] == 2 and _finite(ck)


def test_sampling_a_diverged_model_does_not_raise():
    model = GPT(GPTConfig(16, 16, 1, 2, "dft"))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(math.nan)
    assert model.generate(b"def ", 8) == b""


def test_what_counts_as_diverged():
    assert guard.diverged(2.3, 10) is None and guard.diverged(200.0, 10) is None
    assert "nan" in guard.diverged(math.nan, 10) and "inf" in guard.diverged(math.inf, 256)
    assert "gradient norm is inf" in guard.diverged(1.0, 256, math.inf)
    assert "uniform guess" in guard.diverged(1e20, 10)


# --- SIGTERM ---------------------------------------------------------------------------------------


def test_sigterm_mid_epoch_then_resume_is_bit_identical(capsys, tmp_path, monkeypatch, reference):
    _wrap_step(monkeypatch, loop, 5, _sigterm)  # step 5 of 8 in epoch 1
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 143
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("terminated (SIGTERM): saved a resumable checkpoint at") and "dftnet train --resume" in line
    ck = load_checkpoint(out / "dft" / "last.pt")
    assert ck["step"] == 5 and ck["position"] == {"epoch": 0, "batch": 5}
    monkeypatch.undo()
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 0
    _same(reference, out)


def test_repeated_sigterm_still_checkpoints(capsys, tmp_path, monkeypatch):
    _wrap_step(monkeypatch, loop, 3, lambda r: (_sigterm(r), _sigterm(r)))
    assert main([*TRAIN, "--out", str(tmp_path / "run")]) == 143
    assert load_checkpoint(tmp_path / "run" / "dft" / "last.pt")["step"] == 3


def test_sigterm_outside_the_steps_ends_in_one_line(capsys, tmp_path, monkeypatch):
    from dftnet.experiments.mnist import data as data_mod

    monkeypatch.setattr(data_mod, "load_splits", lambda *a, **k: _sigterm(None))
    assert main([*TRAIN, "--out", str(tmp_path / "run")]) == 143
    assert "terminated (SIGTERM) outside the training steps" in _one_line(capsys.readouterr().err)


def test_lm_sigterm_then_resume_is_bit_identical(capsys, tmp_path, monkeypatch):
    assert main([*LM, "--out", str(tmp_path / "ref")]) == 0
    _wrap_step(monkeypatch, loop, 3, _sigterm)
    assert main([*LM, "--out", str(tmp_path / "cut")]) == 143
    assert "dftnet lm --resume" in _one_line(capsys.readouterr().err)
    assert load_checkpoint(tmp_path / "cut" / "dft" / "last.pt")["step"] == 3
    monkeypatch.undo()
    assert main([*LM, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    a, b = (load_checkpoint(tmp_path / d / "dft" / "last.pt") for d in ("ref", "cut"))
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert [r["val_bpb"] for r in a["history"]] == [r["val_bpb"] for r in b["history"]]


def test_sweep_sigterm_then_resume_is_bit_identical(capsys, tmp_path, monkeypatch):
    sweep = ["sweep", "--widths", "784,W,10", "--W", "16,24", "--variants", "dft", "--limit", "256",
             "--batch-size", "32", "--epochs", "2", "--device", "cpu", "--quiet"]
    assert main([*sweep, "--out", str(tmp_path / "ref")]) == 0
    _wrap_step(monkeypatch, loop, 8 + 16 + 3, _sigterm)  # past the first run, in the second
    assert main([*sweep, "--out", str(tmp_path / "cut")]) == 143
    assert "dftnet sweep --resume --out" in _one_line(capsys.readouterr().err)
    monkeypatch.undo()
    assert main([*sweep, "--out", str(tmp_path / "cut")]) == 2  # a stopped sweep is not overwritten
    assert "use --resume to continue it" in capsys.readouterr().err
    assert main([*sweep, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    for name in ("mnist/dft-784-16-10", "mnist/dft-784-24-10"):
        _same(tmp_path / "ref" / name, tmp_path / "cut" / name)


# --- memory ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dft", "dense", "block-8"])
def test_the_estimate_is_the_memory_reports_step(kind):
    from dftnet.experiments.harness.memory import peak_step_memory
    from dftnet.experiments.mnist.models import build_model

    widths = (784, 64, 32, 10)
    est = preflight.estimate(lambda: build_model(kind, widths),
                             lambda n: (torch.empty(n, 784), torch.zeros(n, dtype=torch.long)), 32, 100)
    torch.manual_seed(0)
    measured = peak_step_memory(build_model(kind, widths), torch.randn(32, 784), torch.randint(0, 10, (32,)))
    assert est is not None and abs(est.step - measured) <= 0.25 * measured, (est.step, measured)
    params = sum(p.numel() * 4 for p in build_model(kind, widths).parameters())
    assert est.resident == 4 * params and est.evaluation > params


def test_a_net_too_big_is_refused_before_allocating(capsys, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(train_mod, "build_net_run", lambda *a, **k: built.append(a) or pytest.fail("allocated"))
    out = tmp_path / "run"
    code = main(["train", "--layer", "dft", "--widths", "784,268435456,10", "--limit", "64", "--quiet",
                 "--out", str(out)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and not built
    assert "dft would need about" in line and "a training step at batch 128" in line
    assert "lower --batch-size or --widths" in line and "--no-memory-check" in line
    assert not (out / "config.json").exists()  # nothing written: the same --out works again


def test_refusal_follows_what_the_device_has_and_no_memory_check_skips_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "available", lambda device: (2**20, "free RAM"))
    args = [*TRAIN, "--max-steps", "2", "--checkpoint-every", "0"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "more than the 1.0 MiB of free RAM" in _one_line(capsys.readouterr().err)
    assert main([*args, "--out", str(tmp_path / "b"), "--no-memory-check"]) == 0
    assert main([*LM, "--out", str(tmp_path / "c")]) == 2
    assert "lower --batch-size, --context, --d-model or --layers" in _one_line(capsys.readouterr().err)


def test_available_memory_is_positive_on_this_machine():
    found = preflight.available(torch.device("cpu"))
    assert found is not None and found[0] > 0 and found[1]


# --- out of memory in a step ----------------------------------------------------------------------


def _oom(r):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)")


def test_out_of_memory_in_a_step_ends_in_one_line_and_the_checkpoint_is_whole(capsys, tmp_path, monkeypatch,
                                                                             reference):
    _wrap_step(monkeypatch, loop, 5, _oom)
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "out of memory in step 5 of dft (Tried to allocate 20.00 GiB)" in line and "--resume" in line
    assert load_checkpoint(out / "dft" / "last.pt")["step"] == 4
    monkeypatch.undo()
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 0
    _same(reference, out)


def test_cpu_allocator_failures_count_as_out_of_memory():
    e = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                     "you tried to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)")
    assert guard.is_out_of_memory(e) and not guard.is_out_of_memory(RuntimeError("shape mismatch"))
    assert "could not allocate 1.0 GiB" in str(guard.out_of_memory(e, "dft", 0, "nowhere/last.pt", "train", "x"))


# --- in other processes: torchrun with 2 ranks, and a real allocation failure --------------------------

# The command line with each step slowed down (the same numbers), so that a SIGTERM sent from outside
# lands mid-epoch.
SLOW_STEPS = """import sys, time
from dftnet.experiments.harness import loop
_step = loop.train_step
loop.train_step = lambda *a: (time.sleep(0.1), _step(*a))[1]
from dftnet.experiments.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _torchrun(tmp_path, *args, program=("-m", "dftnet")):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                             f"--master-port={port}", *program, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.subprocess
@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_ranks_at_one_step_and_resumes_exactly(tmp_path):
    import time

    args = [*TRAIN, "--widths", "784,48,10"]
    full = _torchrun(tmp_path, *args, "--out", str(tmp_path / "full"))
    script = tmp_path / "slow_steps.py"
    script.write_text(SLOW_STEPS)
    cut = tmp_path / "cut"
    proc = _torchrun(tmp_path, *args, "--out", str(cut), program=(str(script),))
    last, t0 = cut / "dft" / "last.pt", time.time()
    while not last.exists() and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # what a scheduler does: torchrun's agent passes it to both workers
    _, err = proc.communicate(timeout=120)
    assert err.count("terminated (SIGTERM): saved a resumable checkpoint") == 1, err[-3000:]  # rank 0 speaks
    ck = load_checkpoint(last)
    assert 2 <= ck["step"] < 16 and ck["position"]["batch"] not in (0, 8), ck["position"]  # mid-epoch
    assert full.wait(timeout=300) == 0, full.communicate()[1][-3000:]
    resumed = _torchrun(tmp_path, *args, "--out", str(cut), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1][-3000:]
    _same(tmp_path / "full", cut)


OOM_UNDER_LIMIT = """import resource, sys
import torch
from dftnet.experiments.cli import main
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + (3 << 29), resource.getrlimit(resource.RLIMIT_AS)[1]))
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("check", [True, False])
def test_a_real_address_space_limit_refuses_or_ends_in_one_line(tmp_path, check):
    """Under ``ulimit -v`` (1.5 GiB above the process's size): the estimate refuses a 4M-wide net at batch 64;
    with --no-memory-check the step's allocation fails and the run ends in one line, exit 1."""
    import subprocess
    import sys

    script = tmp_path / "limit.py"
    script.write_text(OOM_UNDER_LIMIT)
    args = ["train", "--layer", "dft", "--widths", "784,4194304,10", "--batch-size", "64", "--limit", "256",
            "--max-steps", "2", "--quiet", "--device", "cpu", "--out", str(tmp_path / "run")]
    res = subprocess.run([sys.executable, str(script), *args, *([] if check else ["--no-memory-check"])],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = _one_line(res.stderr)
    if check:
        assert res.returncode == 2 and "room under the address-space limit (ulimit -v)" in line, res.stderr
    else:
        assert res.returncode == 1 and "out of memory in step 1 of dft (could not allocate" in line, res.stderr
