"""`DFTLinear`'s distance from its FFT floor with the input's spectrum recomputed in backward (the default
where the input is kept: 5 transforms) and saved (`recompute_spectrum=False`: 4 transforms, L + 2 more
reals a row kept). fwd+bwd of input, spectrum and bias, no diagonal, the input needing a gradient (as in
`dftnet bench`), interleaved turns in one process with the floor (an rfft and an irfft of (rows, L),
twice); thread CPU time on 1 thread, wall time on more; medians.

    python benchmarks/dft_saved_spectrum.py              # and --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dftnet import DFTLinear
from dftnet.experiments.harness.allocator import keep_freed_memory
from dftnet.plan import make_plan

CELLS = ((512, 2048, 1024), (2048, 512, 1024), (2048, 8192, 1024), (16384, 16384, 128))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--turns", type=int, default=21)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    for p, q, rows in CELLS:
        torch.manual_seed(0)
        default = DFTLinear(p, q, diagonal=False)
        saved = DFTLinear(p, q, diagonal=False, recompute_spectrum=False)
        saved.load_state_dict(default.state_dict())
        x, g = torch.randn(rows, p, requires_grad=True), torch.randn(rows, q)
        L = make_plan(p, q).fft_size
        xL = torch.randn(rows, L)

        def step(layer):
            return lambda: torch.autograd.grad(layer(x), [x, *layer.parameters()], g)

        def floor():
            for _ in range(2):
                torch.fft.irfft(torch.fft.rfft(xL), L)

        fns = {"recomputed (default)": step(default), "saved": step(saved), "floor": floor}
        times: dict[str, list[float]] = {name: [] for name in fns}
        for fn in fns.values():
            fn()
            fn()
        for _ in range(args.turns):
            for name, fn in fns.items():
                t0 = clock()
                fn()
                times[name].append(clock() - t0)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        print(f"{p}->{q}, {rows} rows, {args.threads} thread(s): floor {ms['floor']:.2f} ms; "
              + "; ".join(f"{name} {ms[name]:.2f} ms = {ms[name] / ms['floor']:.2f}x the floor"
                          for name in ("recomputed (default)", "saved")))


if __name__ == "__main__":
    main()
