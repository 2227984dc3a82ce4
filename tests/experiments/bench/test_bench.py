"""The benchmark module behind `dftnet bench`: runs, writes its outputs, rejects bad values. No timing asserts."""

import argparse
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dftnet.experiments import bench
from dftnet.experiments.argtypes import comma_list, positive_int
from dftnet.experiments.cli import main
from dftnet.experiments.harness.device import resolve_device

TIME_FIELDS = ("dftnet_ms", "plain_ms", "linear_ms", "floor_ms", "floor_n_ms")


@pytest.fixture
def small_e2e(monkeypatch):
    # The CLI's end-to-end row on a tiny net instead of the seed net: a run takes a fraction of a second.
    monkeypatch.setattr(bench.cli, "E2E_WIDTHS", (32, 48, 10))


def _args(tmp_path, *argv):
    parser = argparse.ArgumentParser()
    bench.configure_parser(parser)
    return parser.parse_args([*argv, "--out", str(tmp_path / "out")] if "--out" not in argv else list(argv))


@pytest.fixture(scope="module")
def rows():
    # 16 and 64: the dense route (tiny layers); 1024x600: non-square, FFT route.
    return bench.sweep([16, 64, "1024x600"], [1, 3], device="cpu", repeats=1, budget=0.01)


def test_sweep_rows_have_fields_and_positive_times(rows):
    assert len(rows) == 3 * 2 * 2
    assert [(r["p"], r["batch"], r["mode"]) for r in rows[:3]] == [(16, 1, "fwd"), (16, 1, "fwd+bwd"),
                                                                   (16, 3, "fwd")]
    assert {(r["p"], r["q"]) for r in rows} == {(16, 16), (64, 64), (1024, 600)}
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    for r in rows:
        assert set(bench.CSV_FIELDS) <= set(r)
        assert not r["skipped"]
        for f in TIME_FIELDS:
            assert isinstance(r[f], float) and math.isfinite(r[f]) and r[f] > 0, (f, r)
        for f in ("dftnet_over_floor", "plain_over_dftnet", "linear_over_dftnet"):
            assert math.isfinite(r[f]) and r[f] > 0
            assert math.isfinite(r[f + "_min"]) and r[f + "_min"] > 0
        for f in TIME_FIELDS:
            assert 0 < r[f.replace("_ms", "_min_ms")] <= r[f]
            assert r[f.replace("_ms", "_q1_ms")] <= r[f] <= r[f.replace("_ms", "_q3_ms")]
        assert r["overhead_us"] == pytest.approx(1e3 * (r["dftnet_ms"] - r["floor_ms"]))
        assert r["overhead_min_us"] == pytest.approx(1e3 * (r["dftnet_min_ms"] - r["floor_min_ms"]))
        assert r["overhead_lo_us"] <= r["overhead_us"] <= r["overhead_hi_us"]
        assert r["dftnet_over_floor_spread"] >= 0
        assert r["n"] == max(r["p"], r["q"])
        assert r["fft_size"] >= r["n"]
        assert r["route"] == "dense" if r["dense"] else r["route"].endswith(str(r["fft_size"]))
        assert r["rel_err"] < 1e-4  # DFTLinear agrees with the plain torch.fft layer
        assert r["repeats"] == 1
        assert r["dtype"] == "float32" and r["device"] == "cpu"
    assert any(r["dense"] for r in rows) and any(not r["dense"] for r in rows)


def test_quartiles_and_overhead_of_a_cell():
    r = bench.bench_cell(64, 64, 1, "fwd", repeats=6, budget=2.0)  # room for 6 turns on a loaded machine
    assert r["repeats"] >= 4  # real quartiles, not the extremes of 3 turns
    for name in ("dftnet", "plain", "linear", "floor"):
        q1, med, q3 = r[f"{name}_q1_ms"], r[f"{name}_ms"], r[f"{name}_q3_ms"]
        assert 0 < r[f"{name}_min_ms"] <= q1 <= med <= q3
        assert r[f"{name}_spread"] == pytest.approx((q3 - q1) / med)
    assert r["overhead_us"] == pytest.approx(1e3 * (r["dftnet_ms"] - r["floor_ms"]))
    assert r["overhead_lo_us"] == pytest.approx(1e3 * (r["dftnet_q1_ms"] - r["floor_q3_ms"]))
    assert r["overhead_hi_us"] == pytest.approx(1e3 * (r["dftnet_q3_ms"] - r["floor_q1_ms"]))
    lo, hi = r["dftnet_q1_ms"] / r["floor_q3_ms"], r["dftnet_q3_ms"] / r["floor_q1_ms"]
    assert r["dftnet_over_floor_spread"] == pytest.approx((hi - lo) / r["dftnet_over_floor"])
    assert bench.ratio_spread(None, 1, 2, 1, 2) is None and bench.ratio_spread(2.0, 1, 1, 0.5, 0.5) == 0


def test_table_is_aligned(rows):
    text = bench.format_table(rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)
    assert "dftnet ms" in lines[0] and "lin/dft" in lines[0] and lines[0].count("±") == 2
    assert all(ln.count("%") == 2 for ln in lines[2:])  # the spreads of dftnet and of dft/floor
    assert len({len(ln) for ln in lines[2:]}) == 1  # same-width lines
    assert lines[2].startswith("16 ")
    assert any(ln.startswith("1024x600") for ln in lines)
    mins = bench.format_table(rows, stat="min").splitlines()
    assert len(mins) == len(lines) and mins[0] == lines[0]
    with pytest.raises(ValueError, match="average"):
        bench.format_table(rows, stat="average")


def test_overhead_section(rows):
    text = bench.format_overhead(rows)
    lines = text.splitlines()
    ones = [r for r in rows if r["batch"] == 1]
    assert len(lines) == 3 + len(ones) and "overhead µs" in lines[1] and "floor µs" in lines[1]
    for line, r in zip(lines[3:], ones):
        assert line.split()[:2] == [str(r["n"]) if r["p"] == r["q"] else f"{r['p']}x{r['q']}", r["mode"]]
        assert line.count("(") == 3 and "–" in line  # dftnet, floor and overhead, each with its q1–q3
    assert bench.format_overhead(rows, stat="min").splitlines()[1] == lines[1]
    assert bench.format_overhead([r for r in rows if r["batch"] != 1]) == ""


def test_write_outputs(rows, tmp_path):
    paths = bench.write_outputs(rows, tmp_path / "o")
    assert set(paths) == {"csv", "json", "png"}
    with open(paths["csv"]) as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows) and float(got[0]["dftnet_ms"]) > 0
    for name in ("dftnet", "other", "plain", "linear", "floor", "floor_n"):
        assert f"{name}_q1_ms" in got[0] and f"{name}_q3_ms" in got[0] and f"{name}_spread" in got[0]
    assert float(got[0]["overhead_us"]) == pytest.approx(rows[0]["overhead_us"])
    doc = json.loads(paths["json"].read_text())
    assert len(doc["rows"]) == len(rows) and doc["end_to_end"] is None
    m = doc["machine"]
    assert m["torch_version"] == torch.__version__ and m["cpu_count"] >= 1 and m["torch_threads"] >= 1
    assert m["date"] and m["device_name"]
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_memory_and_linear_skips(tmp_path):
    rows = bench.sweep([512], [2], ["fwd"], device="cpu", repeats=1, budget=0.01,
                       max_mem_gb=1e-9, linear_max_gb=1.0)
    assert rows[0]["skipped"].startswith("needs") and rows[0]["dftnet_ms"] is None
    assert "skipped" in bench.format_row(rows[0])
    rows = bench.sweep([128], [2], ["fwd"], device="cpu", repeats=1, budget=0.01, linear_max_gb=1e-6)
    r = rows[0]
    assert r["linear_ms"] is None and r["linear_over_dftnet"] is None and "GiB" in r["linear_skipped"]
    assert r["dftnet_ms"] > 0
    paths = bench.write_outputs(rows, tmp_path)  # None values survive csv/json/png
    assert json.loads(paths["json"].read_text())["rows"][0]["linear_ms"] is None


def test_parse_widths():
    assert bench.parse_widths("256, 785x300,2^4") == [(256, 256), (785, 300), (16, 16)]
    assert bench.parse_widths("2^6..2^9") == [(64, 64), (128, 128), (256, 256), (512, 512)]
    assert bench.parse_widths([8, (3, 5), "7->2"]) == [(8, 8), (3, 5), (7, 2)]
    assert comma_list(positive_int, "batch")("1, 32") == [1, 32]


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"widths": [0]}, "0"),
        ({"widths": "12a"}, "12a"),
        ({"widths": "2^9..2^6"}, "2^9..2^6"),
        ({"batches": [-3]}, "-3"),
        ({"batches": "4,x"}, "x"),
        ({"modes": ["bwd"]}, "bwd"),
        ({"device": "tpu"}, "tpu"),
        ({"dtype": "int8"}, "int8"),
        ({"repeats": 0}, "0"),
        ({"max_mem_gb": -1}, "-1"),
    ],
)
def test_sweep_rejects_bad_values(kwargs, bad):
    args = {"widths": [16], "batches": [1], "modes": ["fwd"], "device": "cpu", "repeats": 1, **kwargs}
    with pytest.raises(ValueError, match=bad.replace("^", r"\^").replace("..", r"\.\.")):
        bench.sweep(args.pop("widths"), args.pop("batches"), args.pop("modes"), **args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_cuda_is_a_value_error():
    with pytest.raises(ValueError, match="cuda"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    "argv, bad",
    [
        (["--widths", "64,abc"], "abc"),
        (["--batches", "0"], "0"),
        (["--modes", "fwd,back"], "back"),
        (["--device", "gpu"], "gpu"),
        (["--dtype", "float16"], "float16"),
        (["--repeats", "two"], "two"),
        (["--max-mem-gb", "0"], "0"),
        (["--budget", "nan"], "nan"),
        (["--stat", "mean"], "mean"),
    ],
)
def test_bad_flags_are_refused_before_timing(tmp_path, capsys, argv, bad):
    assert main(["bench", *argv, "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing ran
    assert bad in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_out_is_refused_before_timing(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        bench.run(_args(tmp_path, "--out", str(tmp_path / "file")))
    assert capsys.readouterr().out == ""


def test_run_prints_table_and_writes(tmp_path, capsys, small_e2e):
    args = _args(tmp_path, "--widths", "32,40x24", "--batches", "1,2", "--modes", "fwd", "--repeats", "1",
                 "--budget", "0.01", "--device", "cpu", "--stat", "min")
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    assert "dftnet ms" in out and "\n32 " in out and "\n40x24 " in out
    table, overhead, e2e = out.split("\n\n")[:3]  # the sections, in this order
    assert overhead.startswith("per-call overhead at batch 1")
    assert len(overhead.splitlines()) == 3 + 2 and "min" in overhead.splitlines()[0]
    assert e2e.startswith("end to end: one AdamW training step of MLP 32-48-10, batch 128")
    assert "dense/DFT" in e2e and "DFT/(floor+optimizer)" in e2e
    for name in ("bench.csv", "bench.json", "bench.png", "end_to_end.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert doc["config"]["widths"] == [[32, 32], [40, 24]] and len(doc["rows"]) == 4
    assert doc["config"]["end_to_end"] is True and doc["end_to_end"]["widths"] == "32-48-10"
    with open(tmp_path / "out" / "end_to_end.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert tuple(row) == bench.E2E_FIELDS and float(row["dense_over_dft"]) > 0


def test_run_without_end_to_end(tmp_path, capsys):
    args = _args(tmp_path, "--widths", "32", "--batches", "2", "--modes", "fwd", "--repeats", "1",
                 "--budget", "0.01", "--device", "cpu", "--no-plot", "--no-end-to-end")
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    assert "end to end" not in out and "per-call overhead" not in out  # no batch 1 either
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.csv", "bench.json"]
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["end_to_end"] is None


def test_overwrite_removes_a_stale_end_to_end_csv(tmp_path, capsys, small_e2e):
    argv = ["--widths", "32", "--batches", "2", "--modes", "fwd", "--repeats", "1", "--budget", "0.01",
            "--device", "cpu", "--no-plot"]
    assert bench.run(_args(tmp_path, *argv)) == 0
    assert (tmp_path / "out" / "end_to_end.csv").exists()
    assert bench.run(_args(tmp_path, *argv, "--no-end-to-end", "--overwrite")) == 0
    assert not (tmp_path / "out" / "end_to_end.csv").exists()
    capsys.readouterr()


def test_quick_settings(tmp_path):
    cfg = bench.cli._config_from_args(_args(tmp_path, "--quick"))
    assert 1 in cfg["batches"] and 128 in cfg["batches"] and cfg["end_to_end"]
    assert not bench.cli._config_from_args(_args(tmp_path, "--quick", "--no-end-to-end"))["end_to_end"]
    parser = argparse.ArgumentParser()
    bench.configure_parser(parser)
    text = parser.format_help()
    assert "--no-end-to-end" in text and "end_to_end.csv" in text


@pytest.mark.subprocess
@pytest.mark.slow
def test_script_reports_bad_value_with_exit_2(tmp_path):
    script = Path(__file__).resolve().parents[3] / "benchmarks" / "bench.py"
    res = subprocess.run([sys.executable, str(script), "--widths", "-5", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "-5" in res.stderr and "Traceback" not in res.stderr


def test_time_contenders_gives_slow_contenders_fewer_turns():
    import time

    stats = bench.time_contenders({"fast": lambda: None, "slow": lambda: time.sleep(0.05)},
                                  repeats=15, budget=0.1)
    assert stats["fast"]["repeats"] == 15
    assert stats["slow"]["repeats"] == 3  # at least min_repeats even past its share of the budget
    for s in stats.values():
        assert 0 < s["min"] <= s["median"] and s["spread"] >= 0
