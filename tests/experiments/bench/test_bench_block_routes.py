"""benchmarks/block_routes.py: its textbook contenders compute the block layer, and a cell is a full row."""

import importlib.util
from pathlib import Path

import torch

from dftnet import BlockDFTLinear

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "block_routes.py"


def _load():
    spec = importlib.util.spec_from_file_location("block_routes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_textbook_forms_equal_the_layer():
    br = _load()
    for p, q, k in [(10, 7, 4), (7, 10, 3), (12, 12, 12)]:
        layer = BlockDFTLinear(p, q, block_size=k, diagonal=False, dtype=torch.float64)
        x = torch.randn(5, p, dtype=torch.float64)
        w, b = layer.weight.detach(), layer.bias.detach()
        ref = x @ layer.to_dense().detach().T + b
        torch.testing.assert_close(br.gather_layer(x, w, b, p, q), ref)
        torch.testing.assert_close(br.plain_layer(x, w, b, p, q), ref)


def test_cell_row():
    br = _load()
    for mode in ("fwd", "fwd+bwd"):
        row = br.cell(20, 12, 4, 3, mode, repeats=3, budget=0.05)
        assert row["max_rel_err"] < 1e-5 and row["route"] in ("dense", "fft")
        for name in br.CONTENDERS:
            assert 0 < row[f"{name}_q1_us"] <= row[f"{name}_us"] <= row[f"{name}_q3_us"]
        assert row["linear_over_auto"] == row["linear_us"] / row["auto_us"]


def _load_named(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_transformer_table_has_a_row_per_cell():
    bt = _load_named("block_transformer")
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        for k in (16, 64):
            row = dict(p=512, q=2048, k=k, rows=1024, mode=mode, threads=1, route="fft", kernel="gemm",
                       linear_ms=10.0, linear_q1_ms=9.0, linear_q3_ms=11.0, block_ms=k / 8, block_q1_ms=k / 9,
                       block_q3_ms=k / 7, speedup=80.0 / k)
            if mode == "fwd+bwd":
                row.update(transform_share=0.5, product_share=0.4, product_gmacs=5.0, linear_gmacs=20.0)
            rows.append(row)
    lines = bt.table(rows).splitlines()
    assert len(lines) == 2 + 2
    assert "| 512→2048 | 16 | 1 |" in lines[2] and "**5.00×**" in lines[2] and "50% / 40%" in lines[2]


def test_block_fit_recovers_nonnegative_constants():
    import numpy as np

    fb = _load_named("fit_block_routes")
    rng = np.random.default_rng(0)
    A = np.column_stack([np.ones(30), rng.uniform(1, 100, 30), rng.uniform(1, 100, 30)])
    truth = np.array([5.0, 0.0, 2.0])
    assert np.allclose(fb._nonneg_fit(A, A @ truth), truth, atol=1e-9)
    rows = [dict(p=512, q=2048, k=16, B=1024)]
    dense, gemm, fft = fb.features(rows[0])
    assert gemm[1] == 1024 * (32 + 128) * 16 * 16 and gemm[2] == 1024 * 2 * 16 * 32 * 128
    assert dense[2] == 1024 * 512 * 2048 and len(fft) == 3
