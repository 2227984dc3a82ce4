"""The block cost model's thread rule (``GEMM_THREAD_EXPONENT`` in ``dftnet.plan``), from timings of the
same cells on 1 and 2 threads by ``benchmarks/fit_routes.py --block --cells``:

    CELLS="512,2048,64,1024;2048,512,64,1024;512,2048,32,1024;2048,512,32,1024;2048,8192,64,1024;512,2048,16,1024;2048,512,16,1024;1024,4096,64,1024;1024,4096,32,1024"
    python benchmarks/fit_routes.py --block --cells "$CELLS" --threads 1 --repeats 9 --out block_thread_rule_t1_r1.json
    python benchmarks/fit_routes.py --block --cells "$CELLS" --threads 2 --repeats 9 --out block_thread_rule_t2_r1.json
    # (and _r2: runs alternate 1 and 2 threads on an idle machine)
    python benchmarks/block_thread_rule.py docs/results/block_thread_rule

Prints, per mode (training, inference): each kernel's speed-up from 1 to 2 threads (geometric mean over
the cells, and the exponent e with 2 ** e equal to it), the growth of the torch.fft / GEMM time ratio, and
for exponents 0 ... 1 the worst 2-thread pick of the model over the fastest way timed in each cell.
Each cell's time is the geometric mean over the runs.
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
    runs = [json.loads(f.read_text()) for f in sorted(folder.glob(f"block_thread_rule_t{threads}_r*.json"))]
    if not runs:
        raise SystemExit(f"no block_thread_rule_t{threads}_r*.json in {folder}")
    cells: dict[tuple, dict[str, list[float]]] = {}
    for rows in runs:
        for r in rows:
            key = (r["p"], r["q"], r["k"], r["B"], r["training"])
            for way in WAYS:
                if r[way] is not None:
                    cells.setdefault(key, {}).setdefault(way, []).append(r[way])
    return {key: {w: math.exp(sum(map(math.log, ts)) / len(ts)) for w, ts in ways.items()}
            for key, ways in cells.items()}


def _gmean(xs: list[float]) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs))


def worst_pick(two: dict, training: bool, exponent: float) -> tuple[float, tuple]:
    """The model's 2-thread pick with this exponent, over the fastest way timed: the worst cell."""
    saved = plan.GEMM_THREAD_EXPONENT
    plan.GEMM_THREAD_EXPONENT = exponent
    try:
        worst = (1.0, ())
        for (p, q, k, rows, tr), timed in two.items():
            if tr != training:
                continue
            model = plan.block_costs(p, q, k, rows, training, threads=2)
            pick = min((w for w in model if w in timed), key=model.get)
            ratio = timed[pick] / min(timed.values())
            if ratio > worst[0]:
                worst = (ratio, (p, q, k, rows, pick))
        return worst
    finally:
        plan.GEMM_THREAD_EXPONENT = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="holds block_thread_rule_t{1,2}_r*.json")
    folder = parser.parse_args().folder
    one, two = _load(folder, 1), _load(folder, 2)
    for training in (True, False):
        cells = [c for c in one if c[-1] == training and c in two]
        print("training (fwd+bwd)" if training else "inference (fwd)", f"{len(cells)} cells")
        for way in ("gemm", "fft"):
            gains = [one[c][way] / two[c][way] for c in cells]
            g = _gmean(gains)
            print(f"  {way}: 1 -> 2 threads {g:.2f}x faster (2 ** {math.log2(g):.2f}); cells "
                  + ", ".join(f"{x:.2f}" for x in gains))
        growth = _gmean([(two[c]["fft"] / two[c]["gemm"]) / (one[c]["fft"] / one[c]["gemm"]) for c in cells])
        print(f"  torch.fft / GEMM time ratio grew {growth:.2f}x (2 ** {math.log2(growth):.2f})")
        rows = [(e / 50, *worst_pick(two, training, e / 50)) for e in range(51)]
        print("  exponent: worst 2-thread pick over the fastest way (cell)")
        for e, ratio, cell in rows[::5]:
            print(f"    {e:.2f}: {ratio:.3f} {cell}")
        current = plan.GEMM_THREAD_EXPONENT
        print(f"  current {current}: {worst_pick(two, training, current)}")


if __name__ == "__main__":
    main()
