"""What MKL's reproducible modes (``MKL_CBWR``) cost: CPU time of a seed-net training step (DFT and dense,
AdamW, batch 128) and of two kernels, at 1 thread, one fresh process per mode (MKL reads the mode once),
the modes interleaved process by process. CPU time, not wall time: other processes on shared cores
count as little as possible. Prints the median and range per mode over ``--rounds`` processes.

    python benchmarks/cnr_cost.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = ["", "AUTO", "AUTO,STRICT", "COMPATIBLE"]  # "": CNR off


def cpu_ms(fn, calls: int, blocks: int = 7) -> float:
    """The least CPU time per call over ``blocks`` blocks of ``calls`` calls (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(blocks):
        t = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - t) / calls)
    return best * 1e3


def measure() -> dict:
    import torch
    import torch.nn.functional as F

    from dftnet.experiments.mnist.models import SEED_WIDTHS, build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    out = {}
    for kind, calls in (("dft", 10), ("dense", 2)):
        model = build_model(kind, SEED_WIDTHS)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        out[f"{kind} step"] = cpu_ms(step, calls)
    a, w = torch.randn(128, 4096), torch.randn(1024, 4096)
    out["rfft 128x4096"] = cpu_ms(lambda: torch.fft.rfft(a), 50)
    out["matmul 128x4096x1024"] = cpu_ms(lambda: a @ w.T, 5)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure()))
        return
    results: dict = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            env = {**os.environ, "MKL_CBWR": mode}
            done = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                                  check=True)
            results[mode].append(json.loads(done.stdout))
    keys = list(results[MODES[0]][0])
    print("| MKL_CBWR | " + " | ".join(f"{k} (ms)" for k in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for mode in MODES:
        cells = []
        for k in keys:
            v = [r[k] for r in results[mode]]
            cells.append(f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})")
        print(f"| {mode or 'unset (CNR off)'} | " + " | ".join(cells) + " |")
    print(f"\n{args.rounds} processes per mode; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
