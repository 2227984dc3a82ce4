"""The command line: exit codes and one-line messages for user mistakes, never a traceback."""

import subprocess
import sys

import pytest

from dftnet.experiments.cli import main

TINY = ["--widths", "784,16,10", "--limit", "128", "--batch-size", "32", "--epochs", "1", "--quiet"]


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--epochs", "-1"], "--epochs: expected a positive integer, got '-1'"),
        (["train", "--epochs", "two"], "expected a positive integer, got 'two'"),
        (["train", "--lr", "fast"], "--lr: expected a positive number, got 'fast'"),
        (["train", "--lr", "0"], "expected a positive number"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--widths", "784,x,10"], "comma-separated positive integers"),
        (["train", "--widths", "784"], "at least an input and an output"),
        (["train", "--layer", "conv"], "unknown layer variant 'conv'"),
        (["train", "--layer", "block-x"], "unknown layer variant 'block-x'"),
        (["train", "--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["train", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["eval"], "the following arguments are required: CHECKPOINT"),
        (["nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_bad_flags_exit_2_with_one_line(capsys, argv, needle):
    code, out, err = run_main(capsys, *argv)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_widths_must_fit_the_dataset(capsys, tmp_path):
    code, _, err = run_main(capsys, "train", "--widths", "100,10", "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2 and "must start with 784" in err and "end with 10" in err


def test_missing_data_dir(capsys, tmp_path):
    code, _, err = run_main(capsys, "train", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "does not exist" in err and "IDX" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_fashion_mnist(capsys, tmp_path, monkeypatch):
    from dftnet.experiments.mnist import data

    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "absent")
    code, _, err = run_main(capsys, "train", "--dataset", "fashion-mnist", "--out", str(tmp_path / "o"))
    assert code == 2 and "apt-get install dataset-fashion-mnist" in err


def test_resume_without_run(capsys, tmp_path):
    code, _, err = run_main(capsys, "train", "--resume", "--out", str(tmp_path / "never"))
    assert code == 2 and "does not exist" in err


def test_train_then_eval(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = run_main(capsys, "train", *TINY, "--out", str(out))
    assert code == 0
    assert "dft/dense" in stdout and "parameters" in stdout
    code, stdout, err = run_main(capsys, "eval", str(out / "dft" / "best.pt"), "--limit", "128")
    assert code == 0, err
    assert "test accuracy" in stdout and "true \\ pred" in stdout


def test_eval_refuses_bad_files(capsys, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    code, _, err = run_main(capsys, "eval", str(junk))
    assert code == 2 and "truncated or corrupt" in err, err
    code, _, err = run_main(capsys, "eval", str(tmp_path / "missing.pt"))
    assert code == 2 and "does not exist" in err


@pytest.mark.subprocess
@pytest.mark.slow
def test_console_script_entry_point_and_module():
    res = subprocess.run([sys.executable, "-m", "dftnet", "train", "--epochs", "0"], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "dftnet", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and "dftnet" in res.stdout


@pytest.mark.subprocess
def test_without_the_extra_the_command_says_what_to_install():
    """The core installed alone: ``dftnet`` prints one line naming the extra, exit status 2."""
    code = ("import sys; sys.modules['tqdm'] = None; sys.modules['zarr'] = None\n"  # as if not installed
            "from dftnet.experiments.cli import main\n"
            "raise SystemExit(main(['train']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == 'dftnet: the experiments need tqdm, zarr: pip install "dftnet[experiments]"'
    assert res.stdout == ""
