"""The block cost model's thread rule (``BLOCK_THREAD_EXPONENTS`` in ``dftnet.plan``), from timings of the
same cells on 1 and 2 threads by ``benchmarks/fit_routes.py --block --cells``:

    CELLS="512,2048,64,1024;2048,512,64,1024;512,2048,32,1024;2048,512,32,1024;2048,8192,64,1024;512,2048,16,1024;2048,512,16,1024;1024,4096,64,1024;1024,4096,32,1024"
    python benchmarks/fit_routes.py --block --cells "$CELLS" --threads 1 --repeats 9 --out block_thread_rule_t1_r1.json
    python benchmarks/fit_routes.py --block --cells "$CELLS" --threads 2 --repeats 9 --out block_thread_rule_t2_r1.json
    # (and _r2 ... _r4: runs alternate 1 and 2 threads on an idle machine)
    python benchmarks/fit_routes.py --block --threads 2 --out block_route_check_t2_r1.json   # the whole grid; and _r2
    python benchmarks/block_thread_rule.py docs/results/block_thread_rule \
        --grid docs/results/block_route_check_t2_r*.json

Prints, per mode (training, inference): each kernel's speed-up from 1 to 2 threads (geometric mean over
the cells, and the exponent e with 2 ** e equal to it); then the worst 2-thread pick of the model over the
fastest way timed, with the committed exponents and with the torch.fft kernel's exponent moved (the gap
to the GEMM kernel's decides between them), on the thread-rule cells (each cell's time the geometric mean
over the runs) and on the whole grid (likewise).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import dftnet.plan as plan

WAYS = ("dense", "gemm", "fft")


def _load(folder: Path, threads: int) -> dict[tuple, dict[str, float]]:
    """{(p, q, k, rows, training): {way: microseconds}}, the geometric mean over the runs' files."""
    files = sorted(folder.glob(f"block_thread_rule_t{threads}_r*.json"))
    if not files:
        raise SystemExit(f"no block_thread_rule_t{threads}_r*.json in {folder}")
    return _cells(files)


def _gmean(xs: list[float]) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs))


def _cells(paths: list[Path]) -> dict[tuple, dict[str, float]]:
    """Rows of ``fit_routes.py --block``, one file per run: each cell's time the geometric mean over the runs."""
    cells: dict[tuple, dict[str, list[float]]] = {}
    for path in paths:
        for r in json.loads(path.read_text()):
            for w in WAYS:
                if r[w] is not None:
                    cells.setdefault((r["p"], r["q"], r["k"], r["B"], r["training"]), {}).setdefault(w, []).append(r[w])
    return {key: {w: _gmean(ts) for w, ts in ways.items()} for key, ways in cells.items()}


def worst_pick(cells: dict, training: bool, exponents: dict[str, float]) -> tuple[float, tuple]:
    """The model's 2-thread pick with these exponents, over the fastest way timed: the worst cell."""
    saved = plan.BLOCK_THREAD_EXPONENTS
    plan.BLOCK_THREAD_EXPONENTS = exponents
    try:
        worst = (1.0, ())
        for (p, q, k, rows, tr), timed in cells.items():
            if tr != training:
                continue
            model = plan.block_costs(p, q, k, rows, training, threads=2)
            pick = min((w for w in model if w in timed), key=model.get)
            ratio = timed[pick] / min(timed.values())
            if ratio > worst[0]:
                worst = (round(ratio, 3), (p, q, k, rows, pick))
        return worst
    finally:
        plan.BLOCK_THREAD_EXPONENTS = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="holds block_thread_rule_t{1,2}_r*.json")
    parser.add_argument("--grid", type=Path, nargs="+", default=None,
                        help="2-thread rows of fit_routes.py --block (whole grid), one file per run")
    args = parser.parse_args()
    one, two = _load(args.folder, 1), _load(args.folder, 2)
    grid = _cells(args.grid) if args.grid else {}
    current = plan.BLOCK_THREAD_EXPONENTS
    for training in (True, False):
        cells = [c for c in one if c[-1] == training and c in two]
        print("training (fwd+bwd)" if training else "inference (fwd)", f"{len(cells)} cells")
        for way in ("gemm", "fft"):
            gains = [one[c][way] / two[c][way] for c in cells]
            g = _gmean(gains)
            print(f"  {way}: 1 -> 2 threads {g:.2f}x faster (2 ** {math.log2(g):.2f}); cells "
                  + ", ".join(f"{x:.2f}" for x in gains))
        print(f"  worst 2-thread pick over the fastest way: thread-rule cells | whole grid (exponents {current})")
        for fft_e in sorted({current["fft"], *(round(current["gemm"] - gap / 20, 2) for gap in range(0, 7))}):
            exps = {**current, "fft": fft_e}
            on_grid = worst_pick(grid, training, exps) if grid else "-"
            mark = "  (committed)" if fft_e == current["fft"] else ""
            print(f"    fft exponent {fft_e:.2f} (gap {current['gemm'] - fft_e:.2f}): "
                  f"{worst_pick(two, training, exps)} | {on_grid}{mark}")


if __name__ == "__main__":
    main()
