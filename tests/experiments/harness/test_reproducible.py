"""Same command, same result: ``dftnet train`` and ``dftnet lm`` run in fresh processes whose allocation
histories differ (other tensors and buffers allocated first, another hash seed) give bit-identical
metrics, checkpoints and exported weights; each run's config.json records what reproducing it needs."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dftnet.experiments.harness import reproduce
from dftnet.experiments.harness.checkpoint import load_checkpoint

SRC = str(Path(__file__).resolve().parents[3] / "src")
# the first two layers take the FFT route, the last the dense one
TRAIN = ["train", "--layer", "dft", "--widths", "784,256,64,10", "--limit", "512", "--batch-size", "64",
         "--epochs", "2", "--quiet", "--device", "cpu", "--seed", "3", "--no-memory-check"]
LM = ["lm", "--variants", "dft", "--d-model", "32", "--layers", "1", "--heads", "2", "--context", "32",
      "--batch-size", "8", "--max-steps", "6", "--eval-every", "3", "--device", "cpu", "--quiet", "--limit", "100000",
      "--no-memory-check"]
TIMES = ("seconds", "examples_per_s", "tokens_per_s", "seconds_per_epoch", "peak_memory_bytes", "timing",
         "equal_time_s", "val_bpb_at_equal_time", "curve", "out")

# a different allocation history before the command runs: tensors and Python buffers of odd sizes, kept
CHILD = """import sys, random
import torch
rng = random.Random(int(sys.argv[1]))
kept = [torch.empty(rng.randrange(1, 1 << 20)) for _ in range(rng.randrange(1, 40))]
kept += [bytearray(rng.randrange(1, 1 << 16)) for _ in range(rng.randrange(1, 400))]
from dftnet.experiments.lm import measure as lm_measure
from dftnet.experiments.cli import main
from dftnet.experiments.lm.gpt import GPT
# lm's measurements after training, shortened (not what is compared, except the sample, which stays)
lm_measure.time_breakdown = lambda *a, **k: {}
generate = GPT.generate
GPT.generate = lambda self, prompt, n, **k: generate(self, prompt, min(n, 16), **k)
raise SystemExit(main(sys.argv[2:]))
"""


def _run(argv, out: Path, history: int, threads: int = 2):
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONHASHSEED": str(history), "OMP_NUM_THREADS": str(threads)}
    env.pop("MKL_CBWR", None)  # the command's own default
    done = subprocess.run([sys.executable, "-c", CHILD, str(history), *argv, "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


def _without_times(value):
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def _assert_identical(a: Path, b: Path, net: str):
    ca, cb = load_checkpoint(a / net / "last.pt"), load_checkpoint(b / net / "last.pt")
    for k in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][k], cb["state_dict"][k]), k
    for i, state in ca["optimizer"]["state"].items():
        assert all(torch.equal(v, cb["optimizer"]["state"][i][k]) for k, v in state.items()), i
    assert _without_times(ca["history"]) == _without_times(cb["history"])
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert _without_times(sa["results"]) == _without_times(sb["results"])


def _assert_recorded(out: Path, threads: int):
    config = json.loads((out / "config.json").read_text())
    assert config["threads"] == threads and config["torch"] == torch.__version__ and config["cpu"]
    if torch.backends.mkl.is_available():  # set before MKL's first call, so in force
        assert config["MKL_CBWR"] == reproduce.MKL_MODE and config["mkl_cbwr"] == reproduce.MKL_MODE


@pytest.mark.subprocess
def test_train_is_bit_reproducible_across_processes(tmp_path):
    outs = [tmp_path / f"run{i}" for i in range(3)]
    for i, out in enumerate(outs):
        _run(TRAIN, out, history=i + 1)
    _assert_recorded(outs[0], 2)
    for out in outs[1:]:
        _assert_identical(outs[0], out, "dft")
        a, b = (load_checkpoint(d / "dft" / "best.pt")["state_dict"] for d in (outs[0], out))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert (outs[0] / "dft" / "model.safetensors").read_bytes() == (out / "dft" / "model.safetensors").read_bytes()


@pytest.mark.subprocess
def test_lm_is_bit_reproducible_across_processes(tmp_path):
    outs = [tmp_path / f"run{i}" for i in range(3)]
    for i, out in enumerate(outs):
        _run(LM, out, history=i + 11, threads=1)
    _assert_recorded(outs[0], 1)
    for out in outs[1:]:
        _assert_identical(outs[0], out, "dft")


def test_the_environment_names_what_reproduction_needs():
    env = reproduce.environment("cpu")
    assert env["threads"] == torch.get_num_threads() and env["torch"] == torch.__version__
    assert env["cpu"] and env["mkl_cbwr"] in ("n/a", "OFF") or env["mkl_cbwr"].split(",")[0] in (
        "AUTO", "COMPATIBLE", "SSE2", "SSSE3", "SSE4_1", "SSE4_2", "AVX", "AVX2", "AVX512", "AVX512_E1")


def test_resume_notes_a_changed_environment(tmp_path):
    import json

    from dftnet.experiments.harness.reproduce import changed_environment, environment

    now = environment()
    (tmp_path / "config.json").write_text(json.dumps({**now, "threads": now["threads"] + 1}))
    note = changed_environment(tmp_path, now)
    assert note and f"threads {now['threads'] + 1} -> {now['threads']}" in note and "rounding" in note
    (tmp_path / "config.json").write_text(json.dumps(now))
    assert changed_environment(tmp_path, now) is None
    assert changed_environment(tmp_path / "missing", now) is None
