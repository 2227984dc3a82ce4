"""dftnet study at equal budgets: budgets -> steps and schedules, the rate search, the plan, the
compute-to-reach arithmetic on hand-made results, the held-out split, routes and FLOPs, the peers, and
the quick study end to end (tables, plot, redraw, resume, the docs blocks)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from dftnet.experiments.argtypes import ArgumentValueError, duration
from dftnet.experiments.cli import main
from dftnet.experiments.harness.distributed import Context
from dftnet.experiments.lm import corpus
from dftnet.experiments.lm.gpt import GPT, GPTConfig, split_variant
from dftnet.experiments.lm.train import build_variant, lr_factor
from dftnet.experiments.study.cells import train_cell
from dftnet.experiments.study.flops import layer_flops, layer_routes, step_flops
from dftnet.experiments.study.frontier import budget_to_reach
from dftnet.experiments.study.plan import QUICK, Arm, StudyConfig, plan_cells, search_ks, steps_for
from dftnet.experiments.study.report import _overtake, answer_text, arm_rows
from dftnet.peers import LowRankLinear, MonarchLinear

TINY = {**QUICK, "sizes": (16, 32), "heads": (2, 2), "budgets": ((6, 24), (6,)), "variants": ("dense", "dft"),
        "attn_variants": ("dft",), "rates": 3, "max_widen": 1, "seeds": 2, "eval_windows": 4, "test_windows": 4,
        "timing_rounds": 2, "jobs": 1, "limit": 40_000}
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def use_small(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("stdlib")
    files = [f for f in corpus.corpus_files(corpus.stdlib_root()) if "/" not in f][:40]
    for f in files:
        shutil.copy(corpus.stdlib_root() / f, root / f)
    assert all(corpus.split_files(files))
    monkeypatch.setattr(corpus, "STDLIB_ROOT", root)
    return root


def _cost(seconds, flops=1.0, memory=100):
    return {"seconds": seconds, "seconds_q1": seconds, "seconds_q3": seconds, "flops": flops,
            "peak_memory_bytes": memory}


# --- budgets, schedules, the rate search and the plan ----------------------------------------------------


def test_budget_to_steps_uses_each_variants_own_step_time():
    costs = {"dense@d8": _cost(0.2), "dft@d8": _cost(0.1), "dft+attn@d8": _cost(0.3)}
    assert steps_for(costs, Arm("dense"), 8, 400) == 400
    assert steps_for(costs, Arm("dft"), 8, 400) == 800
    assert steps_for(costs, Arm("dft", "mlp+attn"), 8, 400) == round(400 * 0.2 / 0.3)
    assert steps_for({"dense@d8": _cost(1.0), "dft@d8": _cost(1e6)}, Arm("dft"), 8, 1) == 1


@pytest.mark.parametrize("steps", [7, 60, 3000])
def test_the_schedule_is_set_for_the_cells_step_count(steps):
    cfg = StudyConfig(**TINY)
    lm = cfg.lm(Arm("dft"), 16, 2, 1e-2, 0, steps)
    r = build_variant("dft", lm, Context())
    lrs = []
    for _ in range(steps):
        lrs.append(r.sched.get_last_lr()[0])
        r.opt.step()
        r.sched.step()
    warmup = min(100, steps // 10)
    assert lm.warmup == warmup and max(lrs) == pytest.approx(1e-2)
    assert lrs == pytest.approx([1e-2 * lr_factor(s, warmup, steps) for s in range(steps)])
    assert lr_factor(steps, warmup, steps) == pytest.approx(0.1)  # the decay ends at the cell's step count


def test_later_timings_are_rescaled_to_the_recorded_dense():
    from dftnet.experiments.study.cost import rescale_to

    anchor = {"dense@d8": {**_cost(1.0), "arm": "dense", "d_model": 8}}
    new = {"machine": {}, "dense@d8": {**_cost(2.0), "arm": "dense", "d_model": 8},
           "dft@d8": {**_cost(0.5), "arm": "dft", "d_model": 8}}
    got = rescale_to(anchor, new)
    assert set(got) == {"dft@d8"} and got["dft@d8"]["seconds"] == 0.25 and got["dft@d8"]["rescaled_by"] == 0.5


def test_rate_search_widens_until_the_best_is_interior():
    assert search_ks(0, 3, 4, {}) == ([-1, 0, 1], None)
    assert search_ks(0, 3, 4, {-1: 3.0, 0: 2.0}) == ([-1, 0, 1], None)  # waits for every rate
    assert search_ks(0, 3, 4, {-1: 3.0, 0: 2.0, 1: 2.5}) == ([-1, 0, 1], 0)
    assert search_ks(0, 3, 4, {-1: 3.0, 0: 2.0, 1: 1.5}) == ([-1, 0, 1, 2], None)
    assert search_ks(0, 3, 4, {-1: 3.0, 0: 2.0, 1: 1.5, 2: 1.7}) == ([-1, 0, 1, 2], 1)
    assert search_ks(0, 3, 1, {-2: 1.0, -1: 2.0, 0: 3.0, 1: 4.0}) == ([-2, -1, 0, 1], -2)  # the bound
    assert search_ks(0, 3, 4, {-1: math.inf, 0: math.inf, 1: math.inf})[1] is None  # all diverged: lower


def test_plan_grows_with_results_budget_by_budget():
    cfg = StudyConfig(**TINY)
    costs = {f"{a}@d{d}": _cost(1.0 if a == "dense" else 0.5) for a in ("dense", "dft", "dft+attn") for d in (16, 32)}
    first = plan_cells(cfg, costs, [])
    assert {(c["arm"], c["d_model"], c["budget"]) for c in first} == {("dense", 16, 6), ("dft", 16, 6)}
    assert sorted(c["k"] for c in first if c["arm"] == "dft") == [-1, 0, 1]
    assert {c["steps"] for c in first if c["arm"] == "dft"} == {12}
    results = [{**c, "val_bpb": 3.0 - (c["k"] == 0)} for c in first]  # rate k = 0 wins everywhere
    second = plan_cells(cfg, costs, results)
    seeds = [c for c in second if c["phase"] == "seed"]
    assert {(c["arm"], c["k"], c["seed"]) for c in seeds} == {("dense", 0, 1), ("dft", 0, 1)}
    assert {(c["arm"], c["d_model"], c["budget"]) for c in second if c["phase"] == "search"} == {
        ("dense", 16, 6), ("dft", 16, 6), ("dense", 16, 24), ("dft", 16, 24), ("dense", 32, 6), ("dft", 32, 6),
    }
    results += [{**c, "val_bpb": 3.0 - (c["k"] == 0)} for c in second if c not in first]
    third = plan_cells(cfg, costs, results)
    assert any(c["arm"] == "dft+attn" and c["d_model"] == 32 for c in third)  # after dft at d32 settles
    assert not any(c["arm"] == "dft+attn" and c["d_model"] == 16 for c in third)  # largest size only


def test_bad_study_settings_are_refused():
    with pytest.raises(ValueError, match="dense"):
        StudyConfig(**{**TINY, "variants": ("dft",), "attn_variants": ()})
    with pytest.raises(ValueError, match="one count per size"):
        StudyConfig(**{**TINY, "heads": (2,)})
    with pytest.raises(ValueError, match="list per size"):
        StudyConfig(**{**TINY, "budgets": ((6,),)})
    with pytest.raises(ValueError, match="increasing"):
        StudyConfig(**{**TINY, "budgets": ((24, 6), (6,))})
    with pytest.raises(ValueError, match="monarch-3"):
        StudyConfig(**{**TINY, "variants": ("dense", "monarch-3"), "attn_variants": ()})


def test_duration_flag():
    assert duration("90") == 90 and duration("90s") == 90 and duration("10m") == 600 and duration("1.5h") == 5400
    for bad in ("", "m", "-1m", "0", "inf", "ten"):
        with pytest.raises(ArgumentValueError, match="duration"):
            duration(bad)


# --- compute to reach dense, on hand-made results -----------------------------------------------------


def test_budget_to_reach_interpolates_in_log_budget():
    pts = [(100.0, 4.0), (400.0, 3.0), (1600.0, 2.0)]
    assert budget_to_reach(pts, 3.0) == ("=", pytest.approx(400.0))
    assert budget_to_reach(pts, 2.5) == ("=", pytest.approx(800.0))  # halfway in log between 400 and 1600
    assert budget_to_reach(pts, 4.5) == ("<=", 100.0)
    assert budget_to_reach(pts, 1.0) == (">", 1600.0)
    assert budget_to_reach(list(reversed(pts)), 2.5)[1] == pytest.approx(800.0)


def _hand_study():
    """d = 8, budgets 100 and 400 dense steps; dense 1 s a step, v 0.5 s (so twice the steps)."""
    cells = []
    results = {("dense", 100): [4.0, 4.2], ("dense", 400): [3.0, 3.2], ("v", 100): [3.5, 3.6], ("v", 400): [3.3, 3.4]}
    for (arm, budget), tests in results.items():
        steps = budget * (2 if arm == "v" else 1)
        for k, val in ((-1, 9.0), (0, 1.0), (1, 9.0)):
            cells.append({"phase": "search", "arm": arm, "variant": arm, "structure": "mlp", "d_model": 8,
                          "budget": budget, "steps": steps, "k": k, "lr": 1e-3 * 2 ** k, "seed": 0, "val_bpb": val,
                          "test_bpb": tests[0] if k == 0 else 9.0, "routes": {"a": "fft"}, "mlp_parameters": 5})
        cells.append({**cells[-2], "phase": "seed", "seed": 1, "test_bpb": tests[1]})
    costs = {"machine": {"cpu": "test"}, "dense@d8": _cost(1.0, 10.0, 100), "v@d8": _cost(0.5, 2.0, 50)}
    config = {"sizes": [8], "heads": [1], "budgets": [[100, 400]], "variants": ["dense", "v"], "attn_variants": [],
              "layers": 1, "context": 4, "batch_size": 1, "eval_windows": 1, "test_windows": 1, "seeds": 2}
    return {"config": config, "costs": costs, "cells": cells}


def test_rows_against_hand_computed_values():
    rows = {(r["arm"], r["budget"]): r for r in arm_rows(_hand_study())}
    v1, v4 = rows[("v", 100)], rows[("v", 400)]
    assert v1["steps"] == 200 and v1["lr"] == 1e-3 and v1["seeds"] == 2 and v1["mean"] == pytest.approx(3.55)
    # ranges [3.5, 3.6] < [4.0, 4.2]; [3.3, 3.4] > [3.0, 3.2]
    assert v1["verdict"] == "better" and v4["verdict"] == "worse"
    assert v1["vs_dense"] == pytest.approx(3.55 / 4.1 - 1)
    assert v1["flops_vs_dense"] == pytest.approx(200 * 2.0 / (100 * 10.0)) and v1["memory_vs_dense"] == 0.5
    # dense's 4.1 at 100 s: v is already below it at its smallest budget
    assert v1["reach_seconds"] == ["<=", pytest.approx(1.0)]
    # dense's 3.1 at 400 s: v never gets there within the budgets trained (3.35 at 400 s)
    assert v4["reach_seconds"] == [">", pytest.approx(1.0)]


def test_reach_interpolates_between_budgets():
    study = _hand_study()
    for c in study["cells"]:  # v: 3.55 at 100 s, 2.95 at 400 s; dense's 3.1 at 400 s is reached at 100 * 4**0.75 s
        if c["arm"] == "v" and c["budget"] == 400 and c["k"] == 0:
            c["test_bpb"] -= 0.4
    (v4,) = [r for r in arm_rows(study) if (r["arm"], r["budget"]) == ("v", 400)]
    assert v4["reach_seconds"] == ["=", pytest.approx(100 * 4 ** 0.75 / 400)]
    assert v4["reach_flops"] == ["=", pytest.approx(100 * 4 ** 0.75 * 4 / 4000)]  # v: 4 FLOPs a second, dense 10


def test_answer_names_winners_where_dense_overtakes_and_the_target():
    text = answer_text(_hand_study())
    # v: better at 100 (3.5..3.6 against 4.0..4.2), worse at 400 (3.3..3.4 against 3.0..3.2)
    assert "At 100 dense steps (100 s) v has the lowest, 13.4% below dense (better: v)" in text
    assert "at 400 dense steps (400 s) dense has the lowest test bpb (worse: v)" in text
    assert "dense catches up between 100 and 400 dense steps" in text
    assert _overtake("v", [(1, "worse"), (4, "within spread"), (16, "worse")]).endswith(
        "dense pulls ahead again between 4 and 16 dense steps")
    assert _overtake("v", [(1, "worse"), (4, "worse")]) == "v worse at 1, worse at 4"
    assert "d = 8, 400 dense steps (400 s)): v reaches dense's test bpb in >1.00×" in text
    assert "target ≤ 0.6×: missed" in text and "0.50× its peak step memory (target ≤ 1.0×: met)" in text
    study = _hand_study()
    for c in study["cells"]:  # v: 2.55 at 400 s reaches dense's 3.1 at 100 * 4**0.45 s = 0.47 of 400 s
        if c["arm"] == "v" and c["budget"] == 400 and c["k"] == 0:
            c["test_bpb"] -= 0.8
    text = answer_text(study)
    assert f"in {100 * 4 ** 0.45 / 400:.2f}× dense's time (target ≤ 0.6×: met)" in text
    assert "v: ≤1.00× at 100, 0.47× at 400" in text.replace("<=", "≤")


# --- the held-out split, routes and FLOPs ----------------------------------------------------------------


def test_test_split_is_disjoint_from_validation_and_training(use_small):
    c = corpus.load_corpus()
    train, val, test = corpus.split_files(corpus.corpus_files())
    assert test and not set(test) & (set(train) | set(val))
    assert len(c.test) == c.info["test_bytes"] > 0
    root = corpus.stdlib_root()
    for stream, files in ((c.train, train), (c.val, val), (c.test, test)):  # each stream is its files alone
        assert bytes(stream.tolist()) == b"".join((root / f).read_bytes() for f in files)
    assert corpus.eval_windows(c.test, 16, 8).shape == (8, 17)


@pytest.mark.parametrize("variant,structure,d", [("block-16", "mlp", 32), ("block-4", "mlp", 256),
                                                  ("dft", "mlp+attn", 64), ("lowrank-4", "mlp", 32)])
def test_routes_and_flops_follow_the_route_the_layer_takes(variant, structure, d):
    cfg = GPTConfig(8, d, 1, 2, variant, 4, structure)
    model = GPT(cfg)
    routes = layer_routes(model, 1024)
    assert len(routes) == (4 if structure == "mlp+attn" else 2)
    for name, layer in model.structured_layers().items():
        want = layer.route(1024, training=True) if hasattr(layer, "route") else "matmul"
        assert routes[name] == want
    shapes = {"mlp.fc": (d, 4 * d), "mlp.proj": (4 * d, d), "attn.qkv": (d, 3 * d), "attn.proj": (d, d)}
    per_token = 2.0 * d * 256 + 4.0 * 8 * d
    for name, (p, q) in shapes.items():
        spec = variant if f"blocks.0.{name}" in routes else "dense"
        per_token += 2.0 * p * q if routes.get(f"blocks.0.{name}") == "dense" else layer_flops(spec, p, q)
    assert step_flops(cfg, 3, routes) == pytest.approx(3 * per_token * 3 * 8)


def _learns(model) -> bool:
    """8 AdamW steps on one batch of bytes lower the loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 256, (4, 16))
    losses = []
    for _ in range(8):
        loss = model.loss(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[-1] < losses[0]


def test_attention_structure_builds_structured_projections_and_trains():
    from dftnet import DFTLinear

    model = GPT(GPTConfig(16, 32, 1, 2, "dft", 4, "mlp+attn"), seed=0)
    assert isinstance(model.blocks[0].attn.qkv, DFTLinear) and isinstance(model.blocks[0].attn.proj, DFTLinear)
    assert isinstance(GPT(GPTConfig(16, 32, 1, 2, "dft")).blocks[0].attn.qkv, torch.nn.Linear)
    assert _learns(model)
    with pytest.raises(ValueError, match="structure"):
        GPTConfig(16, 32, 1, 2, "dft", 4, "attn")


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
    assert _learns(model)


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


# --- the cells and the command ---------------------------------------------------------------------------


def test_a_cell_is_a_function_of_its_settings(use_small):
    cfg = StudyConfig(**TINY)
    cell = {"phase": "search", "arm": "dft", "variant": "dft", "structure": "mlp", "d_model": 16, "heads": 2,
            "budget": 6, "steps": 5, "k": 0, "lr": 1e-2, "seed": 0}
    a, b = train_cell(cfg, cell), train_cell(cfg, cell)
    strip = (lambda r: {k: v for k, v in r.items() if k != "wall_s"})
    assert strip(a) == strip(b) and math.isfinite(a["test_bpb"]) and a["test_bpb"] != a["val_bpb"]
    assert a["routes"] == {"blocks.0.mlp.fc": "dense", "blocks.0.mlp.proj": "dense"}
    assert train_cell(cfg, {**cell, "seed": 1})["test_bpb"] != a["test_bpb"]


@pytest.mark.subprocess
def test_quick_study_end_to_end(use_small, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["study", "--quick", "--sizes", "16,32", "--heads", "2,2", "--budgets", "4,16/4", "--jobs", "2",
            "--variants", "dense,dft,monarch-4", "--attn-variants", "dft", "--seeds", "2", "--limit", "40000",
            "--out", str(out)]
    assert main(args) == 0
    study = json.loads((out / "study.json").read_text())
    assert study["costs"]["machine"]["cpu"]
    configs = {f"{v}@d{d}" for v in ("dense", "dft", "monarch-4") for d in (16, 32)} | {"dft+attn@d32"}
    assert set(study["costs"]) - {"machine"} == configs
    rows = arm_rows(study)
    assert {(r["arm"], r["d_model"], r["budget"]) for r in rows} == {
        (a, 16, b) for a in ("dense", "dft", "monarch-4") for b in (4, 16)} | {
        (a, 32, 4) for a in ("dense", "dft", "monarch-4", "dft+attn")}
    assert all(r["seeds"] == 2 and len(r["rates_tried"]) >= 3 for r in rows)
    for name in ("study.md", "frontier.png", "costs.json"):
        assert (out / name).stat().st_size > 0
    assert "| 32 | 4 dense steps" in capsys.readouterr().out
    assert main(args) == 2  # the folder holds a study: refused without --resume
    assert "already holds a study" in capsys.readouterr().err
    before = sorted(p.name for p in (out / "cells").iterdir())
    assert main(args + ["--resume"]) == 0  # nothing left to train
    assert sorted(p.name for p in (out / "cells").iterdir()) == before
    redraw = tmp_path / "redraw"
    redraw.mkdir()
    assert main(["study", "--report", str(out), "--out", str(redraw)]) == 0
    assert (redraw / "study.md").read_text() == (out / "study.md").read_text()
    bad = ["--resume", "--limit", "50000"]
    assert main(args[:-4] + bad[1:] + ["--out", str(out), "--resume"]) == 2
    assert "limit" in capsys.readouterr().err


def test_lm_budget_sets_each_variants_steps_and_resume_keeps_them(use_small, tmp_path, capsys):
    out = tmp_path / "lm"
    args = ["lm", "--variants", "dense,dft", "--d-model", "16", "--heads", "2", "--layers", "1", "--context", "16",
            "--batch-size", "4", "--budget", "0.5s", "--eval-every", "1000", "--limit", "40000", "--quiet",
            "--out", str(out)]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    steps = config["steps_by_variant"]
    assert set(steps) == {"dense", "dft"} and all(n >= 1 for n in steps.values()) and config["budget"] == 0.5
    summary = json.loads((out / "summary.json").read_text())
    assert {r["variant"]: r["steps"] for r in summary["results"]} == steps
    assert main(args + ["--resume"]) == 0  # the recorded counts, not a new measurement
    assert json.loads((out / "config.json").read_text())["steps_by_variant"] == steps


@pytest.mark.subprocess
def test_resume_times_an_added_variant_beside_dense(use_small, tmp_path):
    out = tmp_path / "s"
    base = ["study", "--quick", "--sizes", "16", "--heads", "2", "--budgets", "4", "--jobs", "1", "--rates", "1",
            "--seeds", "1", "--attn-variants", "none", "--limit", "40000", "--out", str(out)]
    assert main(base + ["--variants", "dense"]) == 0
    dense = json.loads((out / "costs.json").read_text())["dense@d16"]
    assert main(base + ["--variants", "dense,dft", "--resume"]) == 0
    costs = json.loads((out / "costs.json").read_text())
    assert costs["dense@d16"] == dense and costs["dft@d16"]["rescaled_by"] > 0  # dense stays the anchor
    assert {c["arm"] for c in json.loads((out / "study.json").read_text())["cells"]} == {"dense", "dft"}
