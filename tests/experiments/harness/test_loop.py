"""The shared training loop on a toy command: a linear regression whose batches depend on the step alone.
Evaluations land where the command asks, checkpoints resume exactly, a diverged loss stops without a
write, and a run without a folder writes nothing."""

import math
from dataclasses import dataclass, field

import pytest
import torch

from dftnet.experiments.harness import loop
from dftnet.experiments.harness.checkpoint import FORMAT
from dftnet.experiments.harness.distributed import Context
from dftnet.experiments.harness.guard import TrainingDiverged
from dftnet.experiments.harness.interrupt import TrainingInterrupted


@dataclass(kw_only=True)
class ToyRun(loop.Run):
    every: int = 3
    lr: float = 0.05
    poison_at: int | None = None
    calls: list = field(default_factory=list)

    def peak_lr(self) -> float:
        return self.lr

    def next_batch(self):
        g = torch.Generator().manual_seed(self.step)
        x = torch.randn(8, 4, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        if self.poison_at is not None and self.step + 1 == self.poison_at:
            y = y * math.inf
        return x, y

    def loss(self, output, target):
        return torch.nn.functional.mse_loss(output.squeeze(-1), target)

    def record(self, loss, output, target, seconds):
        self.calls.append(("step", self.step))

    def evaluation_due(self) -> bool:
        done = self.history and self.history[-1]["step"] == self.step
        return not done and (self.step % self.every == 0 or self.step == self.total_steps)

    def evaluate(self) -> str:
        self.history.append({"step": self.step})
        self.calls.append(("eval", self.step))
        return f"evaluated at {self.step}"

    def checkpoint(self) -> dict:
        return {"format": FORMAT, "model": {"toy": True}, "state_dict": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "step": self.step,
                "history": self.history}

    def same_model(self, meta: dict) -> bool:
        return meta == {"toy": True}

    def restore(self, ck: dict, is_main: bool) -> None:
        self.step, self.history = ck["step"], ck["history"]


def _run(total: int = 7, **kw) -> ToyRun:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return ToyRun("toy", model, opt, sched, total, **kw)


def _fit(r, folder):
    loop.fit(r, Context(), folder, quiet=True, log=lambda *a: None)


def test_fit_steps_to_the_end_with_evaluations_where_the_command_asks(tmp_path):
    r = _run()
    lines = []
    loop.fit(r, Context(), tmp_path / "toy", quiet=True, log=lines.append)
    assert r.step == 7 and [s for kind, s in r.calls if kind == "eval"] == [0, 3, 6, 7]
    assert lines == [f"evaluated at {s}" for s in (0, 3, 6, 7)]
    assert (tmp_path / "toy" / "last.pt").is_file() and r.seconds > 0


def test_a_stop_then_resume_gives_the_uninterrupted_weights(tmp_path, monkeypatch):
    ref = _run()
    _fit(ref, tmp_path / "ref")
    from dftnet.experiments.harness import interrupt

    monkeypatch.setattr(interrupt, "STOP_AFTER_STEPS", 4)
    cut = _run()
    with pytest.raises(TrainingInterrupted):
        _fit(cut, tmp_path / "cut")
    monkeypatch.setattr(interrupt, "STOP_AFTER_STEPS", 0)
    again = _run()
    loop.maybe_resume(again, tmp_path / "cut", Context(), log=lambda *a: None)
    assert again.step == 4
    _fit(again, tmp_path / "cut")
    for a, b in zip(ref.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    assert again.history == ref.history


def test_a_diverged_loss_stops_at_that_step_and_keeps_the_last_finite_checkpoint(tmp_path):
    r = _run(poison_at=5)
    with pytest.raises(TrainingDiverged, match="toy diverged at step 5"):
        _fit(r, tmp_path / "toy")
    kept = torch.load(tmp_path / "toy" / "last.pt", weights_only=True)
    assert kept["step"] == 3  # the evaluation at step 3 wrote it; nothing after the bad step


def test_without_a_folder_nothing_is_written_and_the_run_is_the_same(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = _run(), _run()
    _fit(a, None)
    _fit(b, tmp_path / "b")
    assert list(tmp_path.iterdir()) == [tmp_path / "b"]
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
