"""A SIGTERM anywhere, then --resume, ends bit-identical to the uninterrupted run.

The signal is real (the process signals itself) and lands at a point chosen by a hook, not by a sleep:
after a given training step (every epoch or validation boundary, the last step), inside a validation,
inside a checkpoint write, and inside the final evaluation or the final export. Each stopped run exits
143; resuming (as often as needed) gives the reference run's weights, optimizer state, metrics and
results, to the bit.
"""

import json
import math
import os
import signal

import pytest
import torch

from dftnet.experiments.cli import main
from dftnet.experiments.harness import loop
from dftnet.experiments.harness.checkpoint import load_checkpoint
from dftnet.experiments.lm import measure as lm_measure
from dftnet.experiments.lm import train as lm_mod
from dftnet.experiments.mnist import net_run
from dftnet.experiments.mnist import train as train_mod

# 8 steps per epoch, 2 epochs, a checkpoint every 2 steps; the first layer takes the FFT route
TRAIN = ["train", "--layer", "dft", "--widths", "784,24,10", "--limit", "256", "--batch-size", "32", "--epochs", "2",
         "--quiet", "--device", "cpu", "--checkpoint-every", "2", "--seed", "5", "--no-memory-check"]
LM = ["lm", "--variants", "dft", "--d-model", "32", "--layers", "1", "--heads", "2", "--context", "32",
      "--batch-size", "8", "--max-steps", "6", "--eval-every", "2", "--device", "cpu", "--quiet", "--limit", "100000",
      "--no-memory-check"]
TIMES = ("seconds", "examples_per_s", "tokens_per_s", "seconds_per_epoch", "peak_memory_bytes", "timing",
         "equal_time_s", "val_bpb_at_equal_time", "curve")


def _sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


def _signal_at(monkeypatch, module, name: str, at: int, before: bool):
    """SIGTERM at the ``at``-th call of ``module.name``: before the call runs (inside it, for the
    caller) or right after it returns."""
    real, calls = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if before and calls[0] == at:
            _sigterm()
        out = real(*args, **kwargs)
        if not before and calls[0] == at:
            _sigterm()
        return out

    monkeypatch.setattr(module, name, wrapped)


def _without_times(value):
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _assert_same_checkpoint(a, b):
    assert a["step"] == b["step"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for (i, sa), (j, sb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert i == j and all(torch.equal(sa[k], sb[k]) for k in sa), i
    assert _without_times(a["history"]) == _without_times(b["history"])


def _assert_same_run(ref, cut, net: str):
    _assert_same_checkpoint(load_checkpoint(ref / net / "last.pt"), load_checkpoint(cut / net / "last.pt"))
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, cut))
    assert _without_times(a["results"]) == _without_times(b["results"])


def _stop_and_resume(monkeypatch, argv, out):
    assert main([*argv, "--out", str(out)]) == 143
    monkeypatch.undo()
    for _ in range(3):  # a resume is itself never signalled here: one suffices
        code = main([*argv, "--out", str(out), "--resume"])
        if code != 143:
            break
    assert code == 0


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "train"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


# (module, function, call, before the call?, slow tier only): where the signal lands; the fast tier takes
# one of each kind, the slow tier all
TRAIN_POINTS = {
    "after step 1": (loop, "train_step", 1, False, True),
    "after step 2 (a periodic checkpoint)": (loop, "train_step", 2, False, True),
    "after step 8 (end of epoch 1)": (loop, "train_step", 8, False, False),
    "after step 9 (first step of epoch 2)": (loop, "train_step", 9, False, True),
    "after step 16 (the last step)": (loop, "train_step", 16, False, False),
    "in epoch 1's validation": (net_run, "evaluate", 1, True, True),
    "in epoch 2's validation (the last)": (net_run, "evaluate", 2, True, False),
    "in the final test evaluation": (train_mod, "evaluate", 1, True, False),
    "in the first periodic checkpoint write": (loop, "save_atomic", 1, True, True),
    "in epoch 1's best.pt write": (loop, "save_atomic", 4, True, True),
    "in epoch 1's last.pt write": (loop, "save_atomic", 5, True, False),
    "in the final last.pt write": (loop, "save_atomic", 10, True, True),
    "in the model.safetensors export": (train_mod, "save_safetensors", 1, True, False),
}


def _points(points: dict) -> list:
    return [pytest.param(name, marks=pytest.mark.slow) if spec[-1] else name for name, spec in points.items()]


@pytest.mark.parametrize("point", _points(TRAIN_POINTS))
def test_train_resumes_bit_identical_wherever_the_signal_lands(monkeypatch, tmp_path, train_reference, point):
    module, name, at, before, _ = TRAIN_POINTS[point]
    _signal_at(monkeypatch, module, name, at, before)
    _stop_and_resume(monkeypatch, TRAIN, tmp_path / "cut")
    _assert_same_run(train_reference, tmp_path / "cut", "dft")
    best = [load_checkpoint(d / "dft" / "best.pt") for d in (train_reference, tmp_path / "cut")]
    _assert_same_checkpoint(*best)


def test_the_train_points_cover_every_checkpoint_write(monkeypatch, tmp_path):
    """The write indices above are the run's: 3 periodic, best.pt and last.pt, per epoch."""
    calls = []
    real = loop.save_atomic
    monkeypatch.setattr(loop, "save_atomic", lambda ck, path: (calls.append(path.name), real(ck, path)))
    assert main([*TRAIN, "--out", str(tmp_path / "run")]) == 0
    assert calls == ["last.pt"] * 3 + ["best.pt", "last.pt"] + ["last.pt"] * 3 + ["best.pt", "last.pt"]


# (module, function, call, before the call?, slow tier only)
LM_POINTS = {
    "after step 1": (loop, "train_step", 1, False, True),
    "after step 2 (a validation step)": (loop, "train_step", 2, False, True),
    "after step 6 (the last)": (loop, "train_step", 6, False, False),
    "in the first validation (step 0)": (lm_mod, "evaluate_bpb", 1, True, True),
    "in step 4's validation": (lm_mod, "evaluate_bpb", 3, True, True),
    "in the last validation": (lm_mod, "evaluate_bpb", 4, True, False),
    "in step 2's checkpoint write": (loop, "save_atomic", 1, True, True),
    "in the last checkpoint write": (loop, "save_atomic", 3, True, True),
    "in the final evaluation": (lm_measure, "evaluate_bpb", 1, True, False),
}


@pytest.fixture
def short_lm_measurements():
    """The measurements after training, shortened (they are not what these tests compare, except the
    sample, which stays): no time breakdown, a 16-byte sample."""
    from unittest import mock

    from dftnet.experiments.lm.gpt import GPT

    generate = GPT.generate
    with mock.patch.object(lm_measure, "time_breakdown", lambda *a, **k: {}), \
            mock.patch.object(GPT, "generate", lambda self, prompt, n, **k: generate(self, prompt, min(n, 16), **k)):
        yield


@pytest.fixture(scope="module")
def lm_reference(tmp_path_factory):
    from unittest import mock

    from dftnet.experiments.lm.gpt import GPT

    out = tmp_path_factory.mktemp("ref") / "lm"
    generate = GPT.generate
    with mock.patch.object(lm_measure, "time_breakdown", lambda *a, **k: {}), \
            mock.patch.object(GPT, "generate", lambda self, prompt, n, **k: generate(self, prompt, min(n, 16), **k)):
        assert main([*LM, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("point", _points(LM_POINTS))
def test_lm_resumes_bit_identical_wherever_the_signal_lands(monkeypatch, tmp_path, lm_reference, short_lm_measurements,
                                                            point):
    module, name, at, before, _ = LM_POINTS[point]
    _signal_at(monkeypatch, module, name, at, before)
    _stop_and_resume(monkeypatch, LM, tmp_path / "cut")
    _assert_same_run(lm_reference, tmp_path / "cut", "dft")
