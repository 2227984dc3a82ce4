"""Flags generated from the config dataclasses: each default, type and help is declared once, in the field."""

import argparse
from dataclasses import dataclass

import pytest

from dftnet.experiments.argtypes import UsageError
from dftnet.experiments.cli import build_parser
from dftnet.experiments.configflags import HIDDEN, add_flags, config_from, option, run_option
from dftnet.experiments.lm.config import LMConfig
from dftnet.experiments.mnist.config import TrainConfig


@pytest.mark.parametrize("command,cls", [("train", TrainConfig), ("lm", LMConfig)])
def test_no_flags_give_the_configs_defaults(command, cls):
    args = build_parser().parse_args([command])
    assert config_from(cls, args) == cls()


def test_flags_reach_the_config_typed():
    args = build_parser().parse_args(["lm", "--variants", "dense,dft@8", "--budget", "2m", "--no-memory-check",
                                      "--structure", "mlp+attn", "--seed", "3", "--resume"])
    cfg = config_from(LMConfig, args)
    assert cfg.variants == ("dense", "dft@8") and cfg.budget == 120 and not cfg.memory_check
    assert cfg.structure == "mlp+attn" and cfg.seed == 3 and cfg.resume
    train = config_from(TrainConfig, build_parser().parse_args(["train", "--widths", "784,64,10", "--shift", "0"]))
    assert train.widths == (784, 64, 10) and train.shift == 0


def test_bad_values_are_one_line_usage_errors():
    with pytest.raises(UsageError, match="--epochs"):
        build_parser().parse_args(["train", "--epochs", "0"])
    with pytest.raises(UsageError, match="--structure"):
        build_parser().parse_args(["lm", "--structure", "attn"])


def test_help_shows_each_default_from_its_field():
    @dataclass
    class C:
        rate: float = option(2e-3, "a rate", type=float)
        names: tuple = option(("a", "b"), "names")
        on: bool = option(True, "the check")
        off: bool = option(False, "a switch")
        secret: int = option(1, HIDDEN, type=int)
        plain: int = 5
        seed: int = run_option("seed")

    p = argparse.ArgumentParser()
    add_flags(p, C)
    text = p.format_help()
    assert "a rate (default 0.002)" in text and "names (default a,b)" in text and "--no-on" in text
    assert "skip the check" in text and "--off" in text and "--secret" not in text and "--plain" not in text
    assert config_from(C, p.parse_args(["--no-on", "--off", "--secret", "4"])) == C(on=False, off=True, secret=4)
