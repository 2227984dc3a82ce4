"""The benchmark's end-to-end row (the seed net's training step, DFT against dense), on a tiny net.

No timing asserts."""

import csv
import json

import pytest
import torch

from dftnet.experiments import bench
from dftnet.experiments.mnist.models import MLP
from dftnet.plan import make_plan, use_dense

WIDTHS = (512, 512, 24, 10)  # 512 -> 512: the FFT route at batch 16; 24 -> 10: the dense route


@pytest.fixture(scope="module")
def result():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return bench.bench_end_to_end(WIDTHS, 16, device="cpu", repeats=5, budget=0.05)
    finally:
        torch.set_num_threads(threads)


def test_fields_times_and_ratios(result):
    assert set(bench.E2E_FIELDS) <= set(result)
    assert result["widths"] == "512-512-24-10" and result["batch"] == 16
    assert result["dtype"] == "float32" and result["device"] == "cpu"
    for name in ("dft", "dense", "floor", "optimizer"):
        q1, med, q3 = (result[f"{name}{x}"] for x in ("_q1_ms", "_ms", "_q3_ms"))
        assert 0 < result[f"{name}_min_ms"] <= q1 <= med <= q3
        assert result[f"{name}_spread"] >= 0 and result[f"{name}_repeats"] >= 3
    assert result["floor_opt_ms"] == pytest.approx(result["floor_ms"] + result["optimizer_ms"])
    assert result["dense_over_dft"] == pytest.approx(result["dense_ms"] / result["dft_ms"])
    assert result["dft_over_floor"] == pytest.approx(result["dft_ms"] / result["floor_ms"])
    assert result["dft_over_floor_opt"] == pytest.approx(result["dft_ms"] / result["floor_opt_ms"])
    assert result["dft_over_floor_opt_min"] == pytest.approx(
        result["dft_min_ms"] / (result["floor_min_ms"] + result["optimizer_min_ms"]))
    for name in ("dense_over_dft", "dft_over_floor", "dft_over_floor_opt"):
        assert result[name] > 0 and result[name + "_min"] > 0 and result[name + "_spread"] >= 0


def test_layers_follow_the_route_rule(result):
    layers = result["layers"]
    assert [(d["p"], d["q"]) for d in layers] == list(zip(WIDTHS[:-1], WIDTHS[1:]))
    for d in layers:
        assert d["dense"] == use_dense(d["p"], d["q"], 16, torch.device("cpu"), training=True)
        assert d["fft_size"] == make_plan(d["p"], d["q"]).fft_size
        assert d["route"] == "dense" if d["dense"] else d["route"].endswith(f":{d['fft_size']}")
    assert any(d["dense"] for d in layers) and any(not d["dense"] for d in layers), "both floors: pick other WIDTHS"
    assert result["routes"] == ",".join(f"{d['p']}x{d['q']}:{d['route']}" for d in layers)


def test_section(result):
    text = bench.format_end_to_end(result)
    lines = text.splitlines()
    assert lines[0].startswith("end to end: one AdamW training step of MLP 512-512-24-10, batch 16")
    assert "24x10 dense" in lines[1]
    labels = ["DFT net step (ms)", "dense net step (ms)", "DFT net floor (ms)", "DFT net AdamW.step (ms)",
              "dense/DFT (speed-up)", "DFT/floor", "DFT/(floor+optimizer)"]
    body = lines[4:]
    assert len(body) == len(labels)
    for line, label in zip(body, labels):
        assert line.startswith(label) and "–" in line
    assert f"{result['dft_over_floor']:.2f}" in body[5]
    mins = bench.format_end_to_end(result, stat="min").splitlines()
    assert f"{result['dft_over_floor_min']:.2f}" in mins[4 + 5]


def test_written_to_csv_and_json(result, tmp_path):
    rows = bench.sweep([16], [1], ["fwd"], device="cpu", repeats=1, budget=0.01)
    paths = bench.write_outputs(rows, tmp_path, make_plot=False, end_to_end=result)
    assert set(paths) == {"csv", "json", "end_to_end_csv"}
    with open(paths["end_to_end_csv"]) as f:
        (row,) = list(csv.DictReader(f))
    assert tuple(row) == bench.E2E_FIELDS
    assert float(row["dft_ms"]) == pytest.approx(result["dft_ms"]) and row["widths"] == "512-512-24-10"
    doc = json.loads(paths["json"].read_text())
    assert doc["end_to_end"]["dense_over_dft"] == pytest.approx(result["dense_over_dft"])
    assert [d["route"] for d in doc["end_to_end"]["layers"]] == [d["route"] for d in result["layers"]]


def test_default_net_is_the_seed_net():
    m = MLP(layer="dft")
    assert m.widths == (784, 4096, 1024, 256, 64, 10)
    assert bench.cli.E2E_WIDTHS == m.widths and bench.end_to_end.E2E_BATCH == 128


def test_rejects_bad_values():
    with pytest.raises(ValueError, match="0"):
        bench.bench_end_to_end(WIDTHS, 0, device="cpu")
    with pytest.raises(ValueError, match="int8"):
        bench.bench_end_to_end(WIDTHS, 2, device="cpu", dtype="int8")
