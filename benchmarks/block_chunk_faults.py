"""Training steps of a wide block MLP with and without the cap on a chunk's spectra, and their page faults.

A block layer's FFT route calls its kernel on chunks of rows whose spectra stay under
``dftnet.plan.BLOCK_SPECTRUM_MAX_BYTES``: glibc's malloc maps blocks of 32 MiB or more afresh on every
allocation, so larger spectra meet fresh pages (page faults) on every call. This times SGD steps of
``BlockDFTLinear(d, 4d) -> GELU -> BlockDFTLinear(4d, d)`` with the cap (``capped``) and without it
(``uncapped``: chunks of ``BLOCK_CHUNK_MIN_ROWS`` rows whatever their spectra), each in a fresh process
(the heap's state decides where a large block comes from), alternating, with malloc's thresholds raised
as the ``dftnet`` commands raise them (``keep``) and with glibc's defaults (``default``). Per process: the
median step time of the last steps (thread CPU time on 1 thread, else wall time) and the median minor
page faults a step.

    python benchmarks/block_chunk_faults.py --out docs/results/block_chunk_faults.json   # 1 thread, ~5 min
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

ARMS = [(cap, malloc) for cap in ("capped", "uncapped") for malloc in ("keep", "default")]


def one_process(cap: str, malloc: str, d: int, k: int, rows: int, steps: int, threads: int) -> dict:
    """Time ``steps`` training steps in this process; the last ``steps - 4`` count."""
    if malloc == "keep":
        from dftnet.experiments.harness.allocator import keep_freed_memory

        keep_freed_memory()
    import torch

    import dftnet.plan
    from dftnet import BlockDFTLinear

    if cap == "uncapped":
        dftnet.plan.BLOCK_SPECTRUM_MAX_BYTES = 1 << 60
    torch.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    torch.manual_seed(0)
    net = torch.nn.Sequential(BlockDFTLinear(d, 4 * d, k), torch.nn.GELU(), BlockDFTLinear(4 * d, d, k))
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)
    x = torch.randn(rows, d, requires_grad=True)
    times, faults = [], []
    for _ in range(steps):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, clock()
        opt.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        opt.step()
        times.append(clock() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"cap": cap, "malloc": malloc, "d": d, "k": k, "rows": rows, "threads": threads,
            "step_ms": statistics.median(times[4:]) * 1e3, "faults_per_step": statistics.median(faults[4:])}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--blocks", type=lambda s: [int(v) for v in s.split(",")], default=[64, 16])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--runs", type=int, default=2, help="processes per arm and block size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", nargs=2, metavar=("CAP", "MALLOC"), help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one_process(*args.one, args.d, args.k, args.rows, args.steps, args.threads)))
        return
    results = []
    for run in range(args.runs):
        for k in args.blocks:
            for cap, malloc in ARMS:
                cmd = [sys.executable, __file__, "--one", cap, malloc, "--k", str(k), "--d", str(args.d),
                       "--rows", str(args.rows), "--steps", str(args.steps), "--threads", str(args.threads)]
                row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                results.append(row | {"run": run})
                print(f"k={k:<3} {cap:9} {malloc:8} {row['step_ms']:8.1f} ms a step, "
                      f"{row['faults_per_step']:8.0f} page faults a step", flush=True)
    if args.out:
        from dftnet.experiments.bench.report import machine_info

        with open(args.out, "w") as f:
            json.dump({"machine": machine_info() | {"torch_threads": args.threads}, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
