"""dftnet study: frontier arithmetic on hand-made curves, deterministic cells, the peers' matrices, the FLOP
model, and the quick study end to end (tables, plot, redraw, resume)."""

import json
import math
import shutil

import pytest
import torch

from dftnet.experiments import corpus
from dftnet.experiments.cli import main
from dftnet.experiments.flops import layer_flops, step_flops
from dftnet.experiments.frontier import compute_to_reach, lower_envelope, to_compute, value_at
from dftnet.experiments.gpt import GPT, GPTConfig, split_variant
from dftnet.experiments.peers import LowRankLinear, MonarchLinear
from dftnet.experiments.study import QUICK, StudyConfig, best_lrs, plan_cells, train_cell
from dftnet.experiments.study_report import grid_rows, transfer_rows

TINY = {**QUICK, "sizes": (16, 32), "heads": (2, 2), "steps": 6, "eval_every": 3, "eval_windows": 4,
        "lrs": (3e-3, 1e-2), "variants": ("dense", "dft", "lowrank-4", "monarch-4"), "transfer": ("dft",),
        "timing_rounds": 2, "jobs": 1, "limit": 40_000}


@pytest.fixture
def use_small(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("stdlib")
    files = [f for f in corpus.corpus_files(corpus.stdlib_root()) if "/" not in f][:40]
    for f in files:
        shutil.copy(corpus.stdlib_root() / f, root / f)
    monkeypatch.setattr(corpus, "STDLIB_ROOT", root)
    return root


# --- the frontier arithmetic ---------------------------------------------------------------------------


def test_compute_to_reach_interpolates_and_never():
    curve = [(0, 8.0), (10, 4.0), (20, 2.0)]
    assert compute_to_reach(curve, 4.0) == 10
    assert compute_to_reach(curve, 3.0) == pytest.approx(15.0)
    assert compute_to_reach(curve, 9.0) == 0
    assert math.isinf(compute_to_reach(curve, 1.0))
    assert value_at(curve, 15) == pytest.approx(3.0) and math.isnan(value_at(curve, 25))


def test_lower_envelope_keeps_only_improvements():
    small = [(1, 5.0), (2, 4.0), (4, 3.5)]
    large = [(2, 6.0), (4, 3.0), (8, 2.0)]
    assert lower_envelope([small, large]) == [(1, 5.0), (2, 4.0), (4, 3.0), (8, 2.0)]
    assert lower_envelope([]) == []


def test_to_compute_scales_steps():
    assert to_compute([(0, 3.0), (5, 2.0)], 0.5) == [(0, 3.0), (2.5, 2.0)]
    with pytest.raises(ValueError, match="positive"):
        to_compute([(1, 1.0)], 0)


def _hand_study():
    """Two sizes, dense and one variant: the variant reaches dense's final bpb at half dense's compute."""
    cells = []
    for d, (dense_end, var_end) in {8: (2.0, 2.5), 16: (1.0, 0.5)}.items():
        cells.append({"phase": "grid" if d == 16 else "lr", "variant": "dense", "d_model": d, "lr": 1e-3,
                      "curve": [[0, 5.0], [10, dense_end]], "final_bpb": dense_end, "parameters": 10, "mlp_parameters": 4})
        cells.append({"phase": "grid" if d == 16 else "lr", "variant": "v", "d_model": d, "lr": 2e-3,
                      "curve": [[0, 5.0], [10, var_end]], "final_bpb": var_end, "parameters": 5, "mlp_parameters": 1})
    cells.append({"phase": "lr", "variant": "v", "d_model": 8, "lr": 1e-3, "curve": [[0, 5.0], [10, 3.0]],
                  "final_bpb": 3.0, "parameters": 5, "mlp_parameters": 1})
    cells.append({"phase": "transfer", "variant": "v", "d_model": 16, "lr": 4e-3, "curve": [[0, 5.0], [10, 0.4]],
                  "final_bpb": 0.4, "parameters": 5, "mlp_parameters": 1})
    cost = lambda s, f, m: {"seconds": s, "seconds_q1": s, "seconds_q3": s, "flops": f, "peak_memory_bytes": m}
    costs = {"dense@d8": cost(1.0, 10.0, 100), "v@d8": cost(1.0, 5.0, 50),
             "dense@d16": cost(2.0, 40.0, 200), "v@d16": cost(1.0, 20.0, 300)}
    config = {"sizes": [8, 16], "variants": ["dense", "v"], "transfer": ["v"], "layers": 1, "context": 4,
              "batch_size": 1, "steps": 10, "eval_windows": 1, "timing_rounds": 1}
    return {"config": config, "best_lrs": best_lrs(cells), "cells": cells, "costs": costs}


def test_grid_rows_ratios_against_hand_computed_values():
    study = _hand_study()
    assert study["best_lrs"] == {"dense": 1e-3, "v": 2e-3}
    rows = {(r["variant"], r["d_model"]): r for r in grid_rows(study)}
    r = rows[("v", 16)]
    # v at d16 is judged at its best rate there (the transfer cell, 4e-3: 5.0 -> 0.4 over 10 steps).
    # dense at d16: 10 steps x 2 s = 20 s; v (1 s/step) reaches dense's 1.0 at step 10 * 4/4.6.
    assert r["lr"] == 4e-3
    assert r["reach_seconds_same"] == pytest.approx(10 * 4 / 4.6 / 20)
    assert r["reach_flops_same"] == pytest.approx(10 * 4 / 4.6 * 20 / 400)
    assert r["memory_vs_dense"] == pytest.approx(1.5) and r["bpb_vs_dense"] == pytest.approx(-0.6)
    # v at d8 never reaches dense's 2.0 at its own size, but its envelope (d16) does: 10 * 3/4.6 s of 10 s
    assert math.isinf(rows[("v", 8)]["reach_seconds_same"])
    assert rows[("v", 8)]["reach_seconds_any"] == pytest.approx(10 * 3 / 4.6 / 10)
    assert rows[("dense", 16)]["reach_seconds_same"] == pytest.approx(1.0)
    (t,) = transfer_rows(study)
    assert t["large_best_lr"] == pytest.approx(4e-3) and t["within_2x"]


# --- the cells and the plan ----------------------------------------------------------------------------


def test_plan_cells_lr_then_grid_and_transfer():
    cfg = StudyConfig(**TINY)
    lr_cells = plan_cells(cfg)
    assert {c["d_model"] for c in lr_cells} == {16} and len(lr_cells) == 4 * 2
    grid = plan_cells(cfg, {v: 1e-3 for v in cfg.variants})
    assert sorted((c["variant"], c["lr"]) for c in grid if c["phase"] == "transfer") == [
        ("dense", 5e-4), ("dft", 1.25e-4), ("dft", 2.5e-4), ("dft", 5e-4), ("dft", 2e-3), ("lowrank-4", 5e-4),
        ("monarch-4", 5e-4)]
    assert {c["d_model"] for c in grid} == {32}


def test_a_cell_is_a_function_of_its_steps(use_small):
    cfg = StudyConfig(**TINY)
    cell = {"phase": "lr", "variant": "dft", "d_model": 16, "heads": 2, "lr": 1e-2}
    a, b = train_cell(cfg, cell), train_cell(cfg, cell)
    assert a["curve"] == b["curve"] and len(a["curve"]) == 3
    assert a["curve"][-1][1] < a["curve"][0][1]  # it learns


def test_bad_study_settings_are_refused():
    with pytest.raises(ValueError, match="dense"):
        StudyConfig(**{**TINY, "variants": ("dft",), "transfer": ()})
    with pytest.raises(ValueError, match="one count per size"):
        StudyConfig(**{**TINY, "heads": (2,)})
    with pytest.raises(ValueError, match="monarch-3"):
        StudyConfig(**{**TINY, "variants": ("dense", "monarch-3"), "transfer": ()})


# --- the peers and the variants ------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: LowRankLinear(12, 48, 3), lambda: MonarchLinear(12, 48, 4),
                                  lambda: MonarchLinear(48, 12, 4), lambda: MonarchLinear(64, 64, 8)])
def test_peers_equal_their_explicit_matrix(make):
    m = make().double()
    x = torch.randn(2, 3, m.in_features, dtype=torch.float64, requires_grad=True)
    y = m(x)
    ref = x @ m.to_dense().T + m.bias
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *m.parameters()], g)
    want = torch.autograd.grad(ref, [x, *m.parameters()], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_monarch_mixes_every_input_block():
    m = MonarchLinear(64, 64, 8)
    dense = m.to_dense().detach()
    blocks = dense.reshape(8, 8, 8, 8).abs().sum((1, 3))  # (out block, in block)
    assert (blocks > 0).all()
    assert m.left.numel() + m.right.numel() == 2 * 64 * 64 // 8


@pytest.mark.parametrize("variant", ["lowrank-4", "monarch-4", "dft@8", "block-8@8"])
def test_new_variants_train(variant):
    mlp, ratio = split_variant(variant)
    model = GPT(GPTConfig(16, 32, 1, 2, mlp, ratio), seed=0)
    assert model.blocks[0].mlp.fc.out_features == ratio * 32
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 256, (4, 16))
    losses = []
    for _ in range(8):
        loss = model.loss(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_split_variant():
    assert split_variant("dft@16") == ("dft", 16) and split_variant("Dense") == ("dense", 4)
    with pytest.raises(ValueError, match="positive integer"):
        split_variant("dft@x")


def test_flop_model_by_hand():
    assert layer_flops("dense", 8, 32) == 2 * 8 * 32
    assert layer_flops("lowrank-4", 8, 32) == 2 * 2 * (8 + 32)
    assert layer_flops("monarch-4", 8, 32) == 2 * (4 * 2 * 2 + 4 * 8 * 2)
    assert layer_flops("dft", 8, 32) == pytest.approx(2 * 2.5 * 32 * 5 + 3 * 32 + 8)
    assert layer_flops("block-8", 8, 32) == pytest.approx((1 + 4) * 2.5 * 8 * 3 + 8 * 4 * 5)
    cfg = GPTConfig(4, 8, 1, 2, "dense")
    per_token = 8 * 64 + 4 * 4 * 8 + 2 * 2 * 8 * 32 + 2 * 8 * 256
    assert step_flops(cfg, 3) == 3 * per_token * 3 * 4


# --- the command ---------------------------------------------------------------------------------------


def test_quick_study_end_to_end(use_small, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["study", "--quick", "--sizes", "16,32", "--heads", "2,2", "--steps", "4", "--jobs", "1",
            "--variants", "dense,dft,monarch-4", "--transfer", "dft", "--lrs", "3e-3,1e-2", "--limit", "40000",
            "--out", str(out)]
    assert main(args) == 0
    study = json.loads((out / "study.json").read_text())
    assert len(study["cells"]) == 3 * 2 + 3 + 3 + 3 and set(study["costs"]) == {
        f"{v}@d{d}" for v in ("dense", "dft", "monarch-4") for d in (16, 32)}
    assert all(c["seconds"] > 0 and c["flops"] > 0 for c in study["costs"].values())
    for name in ("study.md", "frontier.png", "costs.json"):
        assert (out / name).stat().st_size > 0
    assert "| 32 | monarch-4 |" in capsys.readouterr().out
    assert main(args) == 2  # the folder holds a study: refused without --resume
    assert "already holds a study" in capsys.readouterr().err
    mtime = (out / "cells").stat().st_mtime_ns
    assert main(args + ["--resume"]) == 0  # nothing left to train
    assert (out / "cells").stat().st_mtime_ns == mtime
    redraw = tmp_path / "redraw"
    redraw.mkdir()
    assert main(["study", "--report", str(out / "study.json"), "--out", str(redraw)]) == 0
    assert (redraw / "study.md").read_text() == (out / "study.md").read_text()


def test_resume_refuses_a_changed_recipe(use_small, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["study", "--quick", "--sizes", "16", "--heads", "2", "--steps", "2", "--jobs", "1", "--variants",
            "dense", "--transfer", "dense", "--lrs", "1e-2", "--limit", "40000", "--out", str(out)]
    assert main(args) == 0
    assert main(args[:7] + ["3"] + args[8:] + ["--resume"]) == 2
    assert "steps" in capsys.readouterr().err


def test_descend_cells_go_lower_only_while_the_lowest_rate_wins():
    from dftnet.experiments.study import descend_cells

    cfg = StudyConfig(**TINY)
    best = {"dense": 1e-3, "dft": 1e-3}
    row = lambda v, lr, bpb: {"variant": v, "d_model": 32, "lr": lr, "final_bpb": bpb}
    edge = [row("dft", 1e-3, 3.0), row("dft", 5e-4, 2.5)]  # the lowest rate wins: go lower
    assert [(c["variant"], c["lr"]) for c in descend_cells(cfg, best, edge)] == [("dft", 2.5e-4)]
    inside = [row("dft", 1e-3, 3.0), row("dft", 5e-4, 2.5), row("dft", 2.5e-4, 2.7)]
    assert descend_cells(cfg, best, inside) == []
    floor = [row("dft", 1e-3 / 64, 1.0), row("dft", 1e-3, 3.0)]
    assert descend_cells(cfg, best, floor) == []
