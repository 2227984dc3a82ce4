"""The transformer preset of `dftnet bench`: its shapes, rows, table, outputs and flags, on tiny shapes.
No timing asserts."""

import argparse
import csv
import json
import math

import pytest
import torch

from dftnet.experiments import bench
from dftnet.experiments.bench import transformer


def test_mlp_shapes_are_both_projections():
    assert transformer.mlp_shapes([512, 1024]) == [(512, 2048), (2048, 512), (1024, 4096), (4096, 1024)]
    assert transformer.QUICK_DIMS == (512,) and transformer.QUICK_ROWS == (1024,)
    assert set(transformer.QUICK_BLOCKS) <= set(transformer.BLOCK_SIZES) == {8, 16, 32, 64}


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_cell_rows_have_fields_and_consistent_ratios(mode):
    rows = transformer.transformer_cell(32, 128, 4, mode, blocks=(8, 16), repeats=2, budget=0.05)
    names = [r["layer"] for r in rows]
    c3a = transformer.c3a_operation() is not None
    assert names == ["dft", "block-8", "block-16"] + (["c3a-8", "c3a-16"] if c3a else [])
    for r in rows:
        assert set(r) == set(transformer.TRANSFORMER_FIELDS)
        assert (r["p"], r["q"], r["rows"], r["mode"]) == (32, 128, 4, mode) and not r["skipped"]
        assert r["route"] in ("fft", "dense")
        for f in ("ms", "min_ms", "linear_ms", "floor_ms"):
            assert math.isfinite(r[f]) and r[f] > 0
        assert r["min_ms"] <= r["ms"] and r["q1_ms"] <= r["ms"] <= r["q3_ms"]
        assert r["linear_over_layer"] == pytest.approx(r["linear_ms"] / r["ms"])
        assert r["layer_over_floor"] == pytest.approx(r["ms"] / r["floor_ms"])
        assert r["linear_over_layer_min"] == pytest.approx(r["linear_min_ms"] / r["min_ms"])
        assert r["block_size"] == (None if r["layer"] == "dft" else int(r["layer"].split("-")[1]))
    blocks = [r for r in rows if r["layer"].startswith("block")]
    assert all((r["c3a_ms"] is not None) == c3a for r in blocks)
    if c3a:  # c3a rows share their block size's floor
        by = {r["layer"]: r for r in rows}
        assert by["c3a-8"]["floor_ms"] == by["block-8"]["floor_ms"]


def test_c3a_operation_computes_a_block_circulant_product():
    op = transformer.c3a_operation()
    if op is None:
        pytest.skip("peft is not installed")
    from dftnet import BlockDFTLinear
    k, p, q = 4, 8, 12
    w = torch.randn(q // k, p // k, k, dtype=torch.float64)
    x = torch.randn(3, p, dtype=torch.float64)
    y = op(x, w)
    assert y.shape == (3, q)
    # the same linear map as a matrix: it is block-circulant (each k x k block a circulant matrix)
    M = torch.stack([op(e, w) for e in torch.eye(p, dtype=torch.float64)], 1)
    torch.testing.assert_close(y, x @ M.T)
    blk = M[:k, :k]
    assert torch.allclose(blk.roll(1, 0).roll(1, 1), blk)
    assert BlockDFTLinear(p, q, block_size=k).to_dense().shape == M.shape


def test_sweep_skips_cells_over_the_memory_limit_and_calls_back():
    seen = []
    rows = transformer.transformer_sweep([8], [2], ["fwd"], blocks=(8,), repeats=1, budget=0.02,
                                         max_mem_gb=1e-9, callback=seen.append)
    assert [r["skipped"] != "" for r in rows] == [True, True] and seen == rows
    assert {(r["p"], r["q"]) for r in rows} == {(8, 32), (32, 8)}
    text = transformer.format_transformer(rows)
    assert text.count("skipped") == 2


def test_bad_values_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        transformer.transformer_cell(16, 64, 2, "bwd", blocks=(8,))
    with pytest.raises(ValueError, match="does not divide"):
        transformer.transformer_cell(12, 48, 2, "fwd", blocks=(8,))


def _args(tmp_path, *argv):
    parser = argparse.ArgumentParser()
    bench.configure_parser(parser)
    return parser.parse_args([*argv, "--out", str(tmp_path / "out")])


def test_cli_preset_writes_table_and_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.cli, "QUICK_DIMS", (8,))
    monkeypatch.setattr(bench.cli, "QUICK_ROWS", (3,))
    monkeypatch.setattr(bench.cli, "QUICK_BLOCKS", (4, 8))
    args = _args(tmp_path, "--preset", "transformer", "--quick", "--budget", "0.05", "--repeats", "2",
                 "--threads", "1", "--clock", "cpu")
    assert bench.run(args) == 0
    text = capsys.readouterr().out
    assert "lin/layer" in text and "layer/floor" in text and "C3A" in text and "(cpu clock)" in text
    out = tmp_path / "out"
    with open(out / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    c3a = transformer.c3a_operation() is not None
    per_cell = 3 + (2 if c3a else 0)
    assert len(rows) == 2 * 2 * per_cell  # 8->32 and 32->8, fwd and fwd+bwd
    assert list(rows[0]) == list(transformer.TRANSFORMER_FIELDS)
    doc = json.loads((out / "bench.json").read_text())
    assert doc["config"]["preset"] == "transformer" and doc["config"]["blocks"] == [4, 8]
    assert doc["config"]["c3a"] is c3a and len(doc["rows"]) == len(rows) and doc["config"]["clock"] == "cpu"


def test_cli_preset_takes_dims_rows_and_blocks(tmp_path, capsys):
    args = _args(tmp_path, "--preset", "transformer", "--dims", "16", "--rows", "2", "--blocks", "8",
                 "--modes", "fwd", "--budget", "0.02", "--repeats", "1", "--threads", "1")
    assert bench.run(args) == 0
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert doc["config"]["dims"] == [16] and doc["config"]["rows"] == [2] and doc["config"]["blocks"] == [8]
    assert {(r["p"], r["q"], r["rows"], r["mode"]) for r in doc["rows"]} == {(16, 64, 2, "fwd"), (64, 16, 2, "fwd")}
    assert {r["layer"] for r in doc["rows"]} >= {"dft", "block-8"}


def test_cli_preset_rejects_layer_sweep_flags(tmp_path):
    with pytest.raises(ValueError, match="do not apply"):
        bench.run(_args(tmp_path, "--preset", "transformer", "--widths", "64"))
    with pytest.raises(ValueError, match="need --preset transformer"):
        bench.run(_args(tmp_path, "--dims", "512"))
    parser = argparse.ArgumentParser()
    bench.configure_parser(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--preset", "gpt"])


def test_cpu_clock_needs_one_thread_and_the_preset(tmp_path):
    stats = bench.time_contenders({"a": lambda: torch.ones(8).sum()}, repeats=2, budget=0.01, clock="cpu")
    assert stats["a"]["median"] >= 0 and stats["a"]["repeats"] == 2
    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="1 thread"):
            bench.time_contenders({"a": lambda: None}, repeats=1, budget=0.01, clock="cpu")
    finally:
        torch.set_num_threads(1)
    with pytest.raises(ValueError, match="clock"):
        bench.time_contenders({"a": lambda: None}, repeats=1, budget=0.01, clock="sundial")
    with pytest.raises(ValueError, match="--clock cpu"):
        bench.run(_args(tmp_path, "--clock", "cpu", "--threads", "1", "--quick"))
    with pytest.raises(ValueError, match="--clock cpu"):
        bench.run(_args(tmp_path, "--preset", "transformer", "--clock", "cpu"))
