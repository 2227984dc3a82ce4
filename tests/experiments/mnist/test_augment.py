"""Random shifts (dftnet.experiments.mnist.augment): the right pixels move, the draw is reproducible, and a
run with --shift resumes to the same weights as an uninterrupted one."""

import pytest
import torch

from dftnet.experiments.harness import interrupt
from dftnet.experiments.harness.checkpoint import load_checkpoint
from dftnet.experiments.mnist import train as train_mod
from dftnet.experiments.mnist.augment import epoch_shifts, shift_images
from dftnet.experiments.mnist.train import TrainConfig, run


def _reference_shift(img: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    out = torch.full_like(img, fill)
    h, w = img.shape
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[i, j] = img[i - dy, j - dx]
    return out


def test_shift_images_moves_each_image_by_its_own_shift():
    torch.manual_seed(0)
    x = torch.randn(6, 784)
    shifts = torch.tensor([[0, 0], [1, 0], [0, -2], [-2, 2], [2, 1], [-1, -1]])
    y = shift_images(x, shifts, fill=-0.5)
    assert y.shape == x.shape and y.dtype == x.dtype
    for b, (dy, dx) in enumerate(shifts.tolist()):
        assert torch.equal(y[b].view(28, 28), _reference_shift(x[b].view(28, 28), dy, dx, -0.5)), (dy, dx)
    assert torch.equal(shift_images(x, torch.zeros(6, 2, dtype=torch.long), 0.0), x)
    with pytest.raises(ValueError, match="flattened 28x28"):
        shift_images(torch.zeros(2, 10), torch.zeros(2, 2, dtype=torch.long), 0.0)
    with pytest.raises(ValueError, match="one \\(dy, dx\\) per image"):
        shift_images(x, torch.zeros(5, 2, dtype=torch.long), 0.0)


def test_epoch_shifts_are_a_function_of_seed_and_epoch():
    a = epoch_shifts(1000, 2, seed=1, epoch=3)
    assert a.shape == (1000, 2) and a.dtype == torch.long
    assert int(a.min()) == -2 and int(a.max()) == 2
    assert torch.equal(a, epoch_shifts(1000, 2, seed=1, epoch=3))
    assert not torch.equal(a, epoch_shifts(1000, 2, seed=1, epoch=4))
    assert not torch.equal(a, epoch_shifts(1000, 2, seed=2, epoch=3))
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    epoch_shifts(10, 2, seed=0, epoch=0)  # does not draw from the global generator
    assert torch.equal(torch.rand(1), before)


SMALL = dict(widths=(784, 24, 10), limit=256, batch_size=32, epochs=2, quiet=True, layer="dft")


def test_shift_run_is_reproducible_and_resumes_exactly(tmp_path, monkeypatch):
    quiet = dict(log=lambda *a: None)
    ref = run(TrainConfig(out=str(tmp_path / "ref"), shift=2, **SMALL), **quiet)["results"][0]
    plain = run(TrainConfig(out=str(tmp_path / "plain"), **SMALL), **quiet)["results"][0]
    assert ref["test_loss"] != plain["test_loss"]  # the shifts change training

    monkeypatch.setattr(interrupt, "STOP_AFTER_STEPS", 5)  # mid-epoch 1 (8 steps an epoch)
    with pytest.raises(train_mod.TrainingInterrupted):
        run(TrainConfig(out=str(tmp_path / "cut"), shift=2, **SMALL), **quiet)
    monkeypatch.setattr(interrupt, "STOP_AFTER_STEPS", 0)
    res = run(TrainConfig(out=str(tmp_path / "cut"), shift=2, resume=True, **SMALL), **quiet)["results"][0]
    for key in ("test_acc", "test_loss", "best_val_acc", "steps"):
        assert res[key] == ref[key], key
    a = load_checkpoint(tmp_path / "ref" / "dft" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "dft" / "last.pt")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["config"]["shift"] == 2


def test_hidden_dropout_is_reproducible_and_off_in_eval():
    from dftnet.experiments.mnist.augment import HiddenDropout
    from dftnet.experiments.mnist.models import MLP

    torch.manual_seed(0)
    model = MLP((784, 32, 16, 10), layer="dft")
    x = torch.randn(4, 784)
    plain = model(x)
    drop = HiddenDropout(model, 0.5)
    assert len(drop.handles) == 2
    drop.reseed(1, 7)
    a = model(x)
    drop.reseed(1, 7)
    assert torch.equal(model(x), a) and not torch.equal(a, plain)
    drop.reseed(1, 8)
    assert not torch.equal(model(x), a)
    model.eval()
    assert torch.equal(model(x), plain)
    drop.remove()
    model.train()
    assert torch.equal(model(x), plain)
    with pytest.raises(ValueError, match="dropout"):
        HiddenDropout(model, 1.0)


def test_dropout_run_resumes_exactly(tmp_path, monkeypatch):
    quiet = dict(log=lambda *a: None)
    cfg = dict(SMALL, dropout=0.2)
    ref = run(TrainConfig(out=str(tmp_path / "ref"), **cfg), **quiet)["results"][0]
    monkeypatch.setattr(interrupt, "STOP_AFTER_STEPS", 5)
    with pytest.raises(train_mod.TrainingInterrupted):
        run(TrainConfig(out=str(tmp_path / "cut"), **cfg), **quiet)
    monkeypatch.setattr(interrupt, "STOP_AFTER_STEPS", 0)
    res = run(TrainConfig(out=str(tmp_path / "cut"), resume=True, **cfg), **quiet)["results"][0]
    assert res["test_loss"] == ref["test_loss"] and res["steps"] == ref["steps"]
    with pytest.raises(ValueError, match="--dropout"):
        TrainConfig(dropout=1.0)
