"""benchmarks/block_routes.py: its textbook contenders compute the block layer, and a cell is a full row."""

import importlib.util
from pathlib import Path

import torch

from dftnet import BlockDFTLinear

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "block_routes.py"


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
