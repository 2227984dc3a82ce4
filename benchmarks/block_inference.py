"""Time BlockDFTLinear in inference (``torch.no_grad``) at transformer shapes: median of repeated calls.

For comparing two versions of the code, alternate processes that import each (a second checkout on
``PYTHONPATH``); on 1 thread the clock is the thread's CPU time:

    PYTHONPATH=/path/to/other/checkout/src python benchmarks/block_inference.py   # and without PYTHONPATH
"""

from __future__ import annotations

import argparse

import torch

from dftnet import BlockDFTLinear
from dftnet.experiments.bench.timing import time_contenders
from dftnet.experiments.harness.allocator import keep_freed_memory

CELLS = [(512, 2048, 16, 8192), (512, 2048, 64, 8192), (2048, 512, 64, 8192), (2048, 8192, 64, 1024),
         (8192, 2048, 64, 1024)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    clock = "cpu" if args.threads == 1 else "wall"
    for p, q, k, rows in CELLS:
        torch.manual_seed(0)
        layer, x = BlockDFTLinear(p, q, k), torch.randn(rows, p)
        with torch.no_grad():  # the budget leaves the turns to --repeats
            t = time_contenders({"layer": lambda: layer(x)}, repeats=args.repeats, budget=1e3, clock=clock)
        print(f"{p}->{q} k={k} rows={rows}: {t['layer']['median'] * 1e3:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
