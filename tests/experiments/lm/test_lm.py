"""dftnet lm: the corpus split, the GPT, a few steps lower the loss, exact resume, run folders, bad flags."""

import json
import shutil

import pytest
import torch

from dftnet import BlockDFTLinear, DFTLinear
from dftnet.experiments.cli import main
from dftnet.experiments.harness import interrupt
from dftnet.experiments.harness.checkpoint import load_checkpoint
from dftnet.experiments.harness.runfolder import run_outputs
from dftnet.experiments.lm import corpus
from dftnet.experiments.lm import train as lm_mod
from dftnet.experiments.lm.config import LMConfig
from dftnet.experiments.lm.gpt import GPT, GPTConfig
from dftnet.experiments.lm.train import run

TINY = dict(d_model=32, layers=1, heads=2, context=32, batch_size=8, max_steps=8, eval_every=4, lr=1e-2,
            eval_windows=8, final_eval_windows=16, sample_bytes=8, timing_repeats=1, quiet=True, device="cpu")
TINY_ARGS = ["--d-model", "32", "--layers", "1", "--heads", "2", "--context", "32", "--batch-size", "8",
             "--max-steps", "4", "--eval-every", "2", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def small_stdlib(tmp_path_factory):
    """A small corpus: 60 real standard-library files (about 1 MB), with every split non-empty."""
    root = tmp_path_factory.mktemp("stdlib")
    files = [f for f in corpus.corpus_files(corpus.stdlib_root()) if "/" not in f][:60]
    for f in files:
        shutil.copy(corpus.stdlib_root() / f, root / f)
    train, val, test = corpus.split_files(files)
    assert train and val and test
    return root


@pytest.fixture
def use_small(small_stdlib, monkeypatch):
    monkeypatch.setattr(corpus, "STDLIB_ROOT", small_stdlib)
    return small_stdlib


def _run(tmp_path, name, **kw):
    return run(LMConfig(out=str(tmp_path / name), **{**TINY, **kw}), log=lambda *a, **k: None)


# --- the corpus ---------------------------------------------------------------------------------------


def test_split_is_deterministic_and_disjoint():
    files = corpus.corpus_files()
    assert len(files) > 100 and files == sorted(files)
    assert not any(part in ("test", "tests", "site-packages") for f in files for part in f.split("/")[:-1])
    train, val, test = corpus.split_files(files)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(train + val + test) == files
    assert 0.02 < len(val) / len(files) < 0.10 and 0.02 < len(test) / len(files) < 0.10
    assert corpus.split_files(list(reversed(files))) == (train, val, test)  # order-free: by path hash alone
    assert [corpus.is_validation(f) for f in files] == [corpus.is_validation(f) for f in files]
    assert corpus.is_validation("json/decoder.py") == corpus.is_validation("json/decoder.py")


def test_corpus_files_exclusions_and_content_hash(tmp_path):
    for rel in ("a.py", "pkg/b.py", "test/x.py", "tests/y.py", "idlelib/test/z.py", "site-packages/w.py",
                "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    for i in range(40):
        (tmp_path / f"m{i}.py").write_text(f"x = {i}\n" * 50)
    files = corpus.corpus_files(tmp_path)
    assert "a.py" in files and "pkg/b.py" in files and len(files) == 42
    a, b = corpus.load_corpus(tmp_path), corpus.load_corpus(tmp_path)
    assert a.info == b.info and torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert a.info["files"] == 42 and a.info["bytes"] == len(a.train) + len(a.val) + len(a.test)
    (tmp_path / "m0.py").write_text("x = 1000\n" * 50)
    assert corpus.load_corpus(tmp_path).info["sha256"] != a.info["sha256"]
    with pytest.raises(corpus.DataError, match="too few"):
        corpus.load_corpus(tmp_path / "pkg")


def test_batches_depend_on_seed_and_step_alone():
    a = corpus.batch_indices(10_000, 32, 8, seed=0, step=5)
    assert torch.equal(a, corpus.batch_indices(10_000, 32, 8, seed=0, step=5))
    assert not torch.equal(a, corpus.batch_indices(10_000, 32, 8, seed=0, step=6))
    stream = torch.arange(200, dtype=torch.uint8)
    x, y = corpus.get_batch(stream, torch.tensor([0, 10]), 4, "cpu")
    assert x.tolist() == [[0, 1, 2, 3], [10, 11, 12, 13]] and y.tolist() == [[1, 2, 3, 4], [11, 12, 13, 14]]
    w = corpus.eval_windows(stream, 9, 100)
    assert w.shape == (20, 10) and w[1, 0] == 10


# --- the model ---------------------------------------------------------------------------------------


def test_gpt_variants_shapes_tying_causality_and_shared_init():
    models = {v: GPT(GPTConfig(16, 32, 2, 4, v), seed=3) for v in ("dense", "block-16", "dft")}
    assert isinstance(models["dft"].blocks[0].mlp.fc, DFTLinear)
    assert isinstance(models["block-16"].blocks[1].mlp.proj, BlockDFTLinear)
    x = torch.randint(0, 256, (2, 16))
    for m in models.values():
        assert m.head.weight is m.wte.weight
        logits = m(x)
        assert logits.shape == (2, 16, 256)
        x2 = x.clone()
        x2[:, 10:] = (x2[:, 10:] + 1) % 256  # the future does not change the past
        torch.testing.assert_close(m(x2)[:, :10], logits[:, :10])
    for key in ("wte.weight", "wpe.weight", "blocks.1.attn.qkv.weight"):
        assert torch.equal(models["dense"].state_dict()[key], models["dft"].state_dict()[key])
    with pytest.raises(ValueError, match="multiple of --heads"):
        GPTConfig(16, 30, 1, 4, "dense")


def test_block16_has_at_most_an_eighth_of_dense_mlp_parameters():
    dense = GPT(GPTConfig(128, 128, 4, 4, "dense")).mlp_parameters()
    assert GPT(GPTConfig(128, 128, 4, 4, "block-16")).mlp_parameters() * 8 <= dense
    assert GPT(GPTConfig(128, 128, 4, 4, "dft")).mlp_parameters() * 50 <= dense  # biases dominate


# --- training ----------------------------------------------------------------------------------------


def test_few_steps_lower_the_loss_for_every_variant(tmp_path, use_small):
    summary = _run(tmp_path, "run", max_steps=16, eval_every=8)
    assert [r["variant"] for r in summary["results"]] == ["dense", "block-16", "dft"]
    for r in summary["results"]:
        ck = load_checkpoint(tmp_path / "run" / r["variant"] / "last.pt")
        bpb = [row["val_bpb"] for row in ck["history"]]
        assert [row["step"] for row in ck["history"]] == [0, 8, 16]
        assert bpb[-1] < bpb[0] - 1.0, (r["variant"], bpb)
        assert r["val_bpb"] < 7 and r["mlp_parameters"] > 0 and r["tokens_per_s"] > 0
        assert set(r["timing"]) == {"step_ms", "mlp_ms", "attention_ms", "rest_ms"}
        assert r["peak_memory_bytes"] > 0 and isinstance(r["sample"], str)
    out = tmp_path / "run"
    for f in ("config.json", "metrics.csv", "summary.json", "lm.png"):
        assert (out / f).exists(), f
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "lm" and config["corpus"]["files"] == 60 and len(config["corpus_sha256"]) == 64
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 3 * 3
    assert "(1/" in summary["table"] and "attention ms" in summary["table"]
    assert list(run_outputs(out)) == ["lm"]


@pytest.mark.parametrize("stop_after", [3, 4])  # mid-interval, and at a validation step
def test_resume_equals_uninterrupted(tmp_path, use_small, monkeypatch, stop_after):
    cfg = dict(variants=("dense", "dft"))
    ref = _run(tmp_path, "ref", **cfg)
    monkeypatch.setattr(interrupt, "STOP_AFTER_STEPS", stop_after)
    with pytest.raises(lm_mod.TrainingInterrupted) as info:
        _run(tmp_path, "cut", **cfg)
    assert load_checkpoint(info.value.path)["step"] == stop_after
    monkeypatch.setattr(interrupt, "STOP_AFTER_STEPS", 0)
    res = _run(tmp_path, "cut", resume=True, **cfg)
    for a_res, b_res in zip(ref["results"], res["results"]):
        assert a_res["val_bpb"] == b_res["val_bpb"] and a_res["sample"] == b_res["sample"]
        a = load_checkpoint(tmp_path / "ref" / a_res["variant"] / "last.pt")
        b = load_checkpoint(tmp_path / "cut" / a_res["variant"] / "last.pt")
        for k in a["state_dict"]:
            assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
        strip = (lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h])
        assert json.dumps(strip(a["history"])) == json.dumps(strip(b["history"]))


# --- the command line --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--variants", "conv"], "unknown layer variant 'conv'"),
        (["--variants", ","], "no variant given"),
        (["--variants", "dense,dense"], "listed twice"),
        (["--d-model", "0"], "--d-model: expected a positive integer, got '0'"),
        (["--heads", "x"], "--heads: expected a positive integer, got 'x'"),
        (["--context", "-1"], "--context: expected a positive integer"),
        (["--lr", "0"], "--lr: expected a positive number"),
        (["--eval-every", "0"], "--eval-every: expected a positive integer"),
        (["--d-model", "30", "--heads", "4"], "--d-model 30 must be a multiple of --heads 4"),
        (["--d-model", "8", "--variants", "block-64"], "block size must be at most"),
        (["--device", "tpu"], "expected cpu, cuda, cuda:N or auto, got 'tpu'"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_flags_exit_2_with_one_line(capsys, tmp_path, argv, needle):
    code = main(["lm", *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_run_folder_rules(capsys, tmp_path, use_small):
    out = str(tmp_path / "run")
    code = main(["lm", *TINY_ARGS, "--variants", "dense,dft", "--out", out])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "dense" in stdout and "MLP parameters" in stdout

    def refused(*extra):
        code = main(["lm", *TINY_ARGS, "--variants", "dense,dft", "--out", out, *extra])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    assert "already holds a language-model run" in refused() and "--resume" in refused()
    assert "--max-steps 4 (now 6)" in refused("--resume", "--max-steps", "6")
    assert main(["lm", "--resume", "--out", str(tmp_path / "never")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["lm", *TINY_ARGS, "--variants", "dense,dft", "--out", out, "--resume"]) == 0  # finished: re-reports
    assert main(["train", "--resume", "--out", out, "--quiet"]) == 2  # not a train run
    assert "already holds a language-model run" in capsys.readouterr().err


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """torchrun with 2 CPU processes (gloo), same global batch: the same weights and metrics as 1 (within
    float32 rounding of the gradient sums, which Adam's sign-like steps amplify on near-zero gradients)."""
    import os
    import socket
    import subprocess
    import sys

    def _free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    args = ["lm", *TINY_ARGS, "--max-steps", "6", "--eval-every", "3", "--limit", "100000", "--variants", "dense,dft"]
    for n in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}",
               f"--master-port={_free_port()}", "-m", "dftnet", *args, "--out", str(tmp_path / str(n))]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.count("MLP parameters") == 1  # only rank 0 prints the table
    for variant in ("dense", "dft"):
        a = load_checkpoint(tmp_path / "1" / variant / "last.pt")
        b = load_checkpoint(tmp_path / "2" / variant / "last.pt")
        assert a["step"] == b["step"] == 6
        for k in a["state_dict"]:  # a DFT spectrum's DC coordinate: see below
            sl = slice(1, None) if k.endswith("spectrum") else slice(None)
            torch.testing.assert_close(b["state_dict"][k][sl], a["state_dict"][k][sl], rtol=1e-4, atol=1e-4)
        # The DC coordinate of a DFT spectrum adds the same multiple of the input's sum to every output;
        # its gradient is nearly zero, so Adam walks it by rounding noise. The models still agree:
        x = torch.randint(0, 256, (4, 32))
        log_p = []
        for ck in (a, b):
            model = GPT(GPTConfig(32, 32, 1, 2, variant))
            model.load_state_dict(ck["state_dict"])
            with torch.no_grad():
                log_p.append(torch.log_softmax(model(x), -1))
        torch.testing.assert_close(log_p[1], log_p[0], rtol=1e-3, atol=1e-3)
        for ra, rb in zip(a["history"], b["history"]):
            assert abs(ra["val_bpb"] - rb["val_bpb"]) < 1e-4
            assert ra["step"] == rb["step"] and (ra["step"] == 0 or abs(ra["train_bpb"] - rb["train_bpb"]) < 1e-4)
