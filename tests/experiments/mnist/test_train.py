"""Training: the loss goes down, same seed gives the same metrics, resume equals an uninterrupted run."""

import json

import pytest
import torch

from dftnet.experiments.harness import interrupt
from dftnet.experiments.harness.checkpoint import load_checkpoint
from dftnet.experiments.mnist import train as train_mod
from dftnet.experiments.mnist.models import MLP
from dftnet.experiments.mnist.train import TrainConfig, run

SMALL = dict(widths=(784, 24, 10), limit=256, batch_size=32, epochs=2, quiet=True)


def _cfg(tmp_path, name="run", **kw):
    return TrainConfig(out=str(tmp_path / name), **{**SMALL, **kw})


def test_mlp_shapes_and_kinds():
    for kind in ("dft", "dense"):
        m = MLP((784, 32, 16, 10), layer=kind)
        assert m(torch.randn(5, 28, 28)).shape == (5, 10)
        assert sum(isinstance(x, torch.nn.ReLU) for x in m) == 2
        assert not isinstance(m[-1], torch.nn.ReLU)
    with pytest.raises(ValueError, match="layer must be one of"):
        MLP(layer="conv")
    m = MLP.from_spec("block-128", (784, 32, 10))  # layers narrower than a block: one block
    assert m[-1].block_size == 32 and m(torch.randn(2, 784)).shape == (2, 10)


@pytest.mark.slow
def test_one_epoch_lowers_the_loss(tmp_path):
    summary = run(_cfg(tmp_path, layer="both", epochs=3, lr=1e-2), log=lambda *a: None)
    rows = [json.loads(json.dumps(r)) for r in summary["results"]]
    assert {r["layer"] for r in rows} == {"dft", "dense"}
    ck = load_checkpoint(tmp_path / "run" / "dft" / "last.pt")
    losses = [h["train_loss"] for h in ck["history"]]
    assert losses[-1] < losses[0]
    out = tmp_path / "run"
    for f in ["config.json", "metrics.csv", "summary.json", "curves.png", "dft/best.pt", "dense/last.pt"]:
        assert (out / f).exists(), f
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("layer,epoch") and len(lines) == 1 + 3 * 2
    assert "dft/dense" in summary["table"]


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path):
    a = run(_cfg(tmp_path, "a", layer="dft"), log=lambda *a: None)["results"][0]
    b = run(_cfg(tmp_path, "b", layer="dft"), log=lambda *a: None)["results"][0]
    for key in ("test_acc", "test_loss", "best_val_acc", "steps"):
        assert a[key] == b[key]
    ha = load_checkpoint(tmp_path / "a" / "dft" / "last.pt")["history"]
    hb = load_checkpoint(tmp_path / "b" / "dft" / "last.pt")["history"]
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [3, 8, 9])  # mid-epoch, last batch of epoch 1, first of epoch 2
def test_interrupt_and_resume_equals_uninterrupted(tmp_path, monkeypatch, stop_after):
    cfg = dict(layer="dft", epochs=2)
    ref = run(_cfg(tmp_path, "ref", **cfg), log=lambda *a: None)["results"][0]

    monkeypatch.setattr(interrupt, "STOP_AFTER_STEPS", stop_after)
    with pytest.raises(train_mod.TrainingInterrupted) as info:
        run(_cfg(tmp_path, "cut", **cfg), log=lambda *a: None)
    assert info.value.path.name == "last.pt"
    assert load_checkpoint(info.value.path)["step"] == stop_after
    monkeypatch.setattr(interrupt, "STOP_AFTER_STEPS", 0)
    res = run(_cfg(tmp_path, "cut", resume=True, **cfg), log=lambda *a: None)["results"][0]

    for key in ("test_acc", "test_loss", "best_val_acc", "best_epoch", "steps"):
        assert res[key] == ref[key], key
    a = load_checkpoint(tmp_path / "ref" / "dft" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "dft" / "last.pt")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert [r["val_loss"] for r in a["history"]] == [r["val_loss"] for r in b["history"]]
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    first = run(_cfg(tmp_path, layer="dft"), log=lambda *a: None)["results"][0]
    again = run(_cfg(tmp_path, layer="dft", resume=True), log=lambda *a: None)["results"][0]
    assert first["test_acc"] == again["test_acc"] and first["steps"] == again["steps"]


def test_max_steps_bounds_the_run(tmp_path):
    res = run(_cfg(tmp_path, layer="dense", max_steps=3), log=lambda *a: None)["results"][0]
    assert res["steps"] == 3


def test_bad_widths_for_dataset(tmp_path):
    with pytest.raises(ValueError, match="must start with 784"):
        run(_cfg(tmp_path, widths=(100, 10)), log=lambda *a: None)
