"""Refit the route cost model of ``dftnet.plan.use_dense``: time the dense and the FFT route of DFTLinear
against each other over a grid of shapes and batches, fit the model's constants by relative least squares,
and report how far the current and the refitted rule are from the faster route.

    python benchmarks/fit_routes.py [--out fit_routes.json] [--threads N]
    python benchmarks/fit_routes.py --block [--out fit_block_routes.json] [--threads N] [--rows-max 8192]
    python benchmarks/fit_routes.py --block --cells "512,2048,64,1024;2048,512,64,1024" --repeats 9 --out check.json

Prints the fitted ``_DENSE_US`` / ``_FFT_US`` constants to paste into ``src/dftnet/plan.py``. With
``--block``, BlockDFTLinear's three ways (dense, the GEMM kernel, the torch.fft kernel; see
``dftnet.plan.block_costs``) over small layers and the MLP shapes of transformers (d -> 4d and 4d -> d,
d = 512 ... 4096, 1,024 and 8,192 rows), and the ``_BLOCK_GEMM_US`` / ``_BLOCK_FFT_US`` constants. The
dense route is not timed where the current model puts it above 4x the faster kernel (transformer shapes
at d >= 2048: seconds per call on one core); those cells count only for the kernel choice.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from fit_block_routes import fit_block, measure_block, report_choice

from dftnet import DFTLinear
from dftnet.experiments.bench.timing import time_contenders
from dftnet.experiments.harness.allocator import keep_freed_memory
from dftnet.plan import fft_cost, make_plan, use_dense

SHAPES = [(n, n) for n in (16, 32, 64, 128, 256, 512, 1024)] + [(256, 64), (64, 10), (1024, 256), (785, 300),
                                                                (300, 785)]
BATCHES = (1, 8, 32, 128, 512)


def measure() -> list[dict]:
    rows = []
    for p, q in SHAPES:
        torch.manual_seed(0)
        dense = DFTLinear(p, q, diagonal=False, method="dense")
        fft = DFTLinear(p, q, diagonal=False, method="fft")
        fft.load_state_dict(dense.state_dict())
        for B in BATCHES:
            for training in (False, True):
                x = torch.randn(B, p, requires_grad=training)
                g = torch.randn(B, q)

                def call(layer):
                    if training:
                        return lambda: torch.autograd.grad(layer(x), [x, layer.spectrum, layer.bias], g)
                    return lambda: layer(x)

                with torch.set_grad_enabled(training):
                    r = time_contenders({"dense": call(dense), "fft": call(fft)}, repeats=9, budget=0.4)
                rows.append(dict(p=p, q=q, B=B, training=training, L=make_plan(p, q).fft_size,
                                 dense=r["dense"]["median"] * 1e6, fft=r["fft"]["median"] * 1e6))
                print(rows[-1], flush=True)
    return rows


def fit(rows: list[dict]) -> None:
    for training in (False, True):
        R = [r for r in rows if r["training"] == training]
        A = np.array([[1, r["p"] * r["q"], r["B"] * r["p"] * r["q"]] for r in R], dtype=float)
        y = np.array([r["dense"] for r in R])
        dense_c = np.linalg.lstsq(A / y[:, None], np.ones_like(y), rcond=None)[0]
        A2 = np.array([[1, r["B"] * fft_cost(r["L"])] for r in R], dtype=float)
        y2 = np.array([r["fft"] for r in R])
        fft_c = np.linalg.lstsq(A2 / y2[:, None], np.ones_like(y2), rcond=None)[0]
        print(f"training={training}: _DENSE_US {tuple(float(f'{c:.3g}') for c in dense_c)}, "
              f"_FFT_US {tuple(float(f'{c:.3g}') for c in fft_c)}")
        worst = {"current": 1.0, "refitted": 1.0}
        for r in R:
            best = min(r["dense"], r["fft"])
            picks = {"current": use_dense(r["p"], r["q"], r["B"], torch.device("cpu"), training),
                     "refitted": dense_c @ [1, r["p"] * r["q"], r["B"] * r["p"] * r["q"]]
                     <= fft_c @ [1, r["B"] * fft_cost(r["L"])]}
            for k, d in picks.items():
                worst[k] = max(worst[k], (r["dense"] if d else r["fft"]) / best)
        print(f"  chosen route over the faster one, worst case: current {worst['current']:.2f}, "
              f"refitted {worst['refitted']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="fit_routes.json")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--block", action="store_true", help="BlockDFTLinear's routes and kernels")
    parser.add_argument("--rows-max", type=int, default=8192, help="--block: the largest row count timed")
    parser.add_argument("--fit-only", action="store_true", help="refit from the rows in --out, no timing")
    parser.add_argument("--cells", default=None, help="--block: time only these cells, P,Q,K,ROWS;... (no fit: "
                        "each cell's times and the current model's pick)")
    parser.add_argument("--repeats", type=int, default=5, help="--block: turns per cell")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    if args.fit_only:
        with open(args.out) as f:
            rows = json.load(f)
    else:
        cells = [tuple(map(int, c.split(","))) for c in args.cells.split(";")] if args.cells else None
        rows = measure_block(args.rows_max, cells, args.repeats, 6.0 if cells else 0.6) if args.block else measure()
        with open(args.out, "w") as f:
            json.dump(rows, f)
    if args.cells:
        report_choice(rows)
    else:
        (fit_block if args.block else fit)(rows)


if __name__ == "__main__":
    main()
