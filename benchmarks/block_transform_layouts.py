"""Could block-64 take its transforms from ``torch.fft`` instead of DFT-matrix GEMMs? The GEMM kernel
(:mod:`dftnet.kernels.block_gemm`) wants packed spectra frequency-major, ``(k, rows, blocks)``; a
k x k GEMM transforms and transposes in one call (k multiply-adds per entry). ``torch.fft`` costs
O(log k) per entry but writes frequency innermost, so the same packed layout needs a strided copy.
Timed at the output side of 512->2048 with k = 64 on 1,024 rows (32 blocks): medians and [min-max] of
3 rounds of 15 interleaved calls, thread CPU time on 1 thread, wall time on more (run it on an idle
machine then). Also timed: the spectra's transpose copy as a 2-D transpose and as a 3-D permute (the
torch.fft kernel's two layouts), and the k x k GEMM in the orientation the GEMM kernel cannot use
(rows-major in and out) beside ``nn.Linear``'s GEMM at the same layer, in GFLOP/s: what bounds the
GEMM kernel's transforms. With ``--layers``: fwd+bwd of whole layers at d = 512 and 1024 (k = 16 and 64,
1,024 rows), the torch.fft kernel with each copy layout and the GEMM kernel, beside ``nn.Linear``.

    python benchmarks/block_transform_layouts.py --threads 1   # and --threads 2
    python benchmarks/block_transform_layouts.py --threads 2 --layers
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import dftnet.kernels.block as block_kernel
from dftnet.kernels.block_gemm import BlockGemmFunction, dft_matrices
from dftnet.plan import BlockShape


def _median_ms(cases: dict, clock, turns: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(turns):
        for name, fn in cases.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def layers(clock, threads: int) -> None:
    """fwd+bwd of BlockDFTFunction with 2-D transposes and with 3-D permutes, and of BlockGemmFunction."""
    rows = 1024
    parallel_copies = block_kernel._parallel_copies
    print(f"{threads} thread(s), {'thread CPU' if threads == 1 else 'wall'} time, fwd+bwd, {rows} rows, "
          "median of 15 interleaved turns; x = nn.Linear / layer")
    for p, q, k in [(512, 2048, 16), (2048, 512, 16), (512, 2048, 64), (2048, 512, 64), (1024, 4096, 64)]:
        shape = BlockShape(p, q, k)
        x = torch.randn(rows, p, requires_grad=True)
        w = torch.randn(shape.out_blocks, shape.in_blocks, k, requires_grad=True)
        b = torch.randn(q, requires_grad=True)
        g = torch.randn(rows, q)
        linear = torch.nn.Linear(p, q)

        def fft(permute: bool):
            block_kernel._parallel_copies = lambda t: permute  # type: ignore[assignment]
            return torch.autograd.grad(block_kernel.BlockDFTFunction.apply(x, w, b, shape), (x, w, b), g)

        cases = {
            "nn.Linear": lambda: torch.autograd.grad(linear(x), (x, linear.weight, linear.bias), g),
            "torch.fft, 2-D transposes": lambda: fft(False),
            "torch.fft, 3-D permutes": lambda: fft(True),
            "GEMM kernel": lambda: torch.autograd.grad(BlockGemmFunction.apply(x, w, b, shape), (x, w, b), g),
        }
        for fn in cases.values():
            fn()
        try:
            ms = _median_ms(cases, clock, 15)
        finally:
            block_kernel._parallel_copies = parallel_copies  # type: ignore[assignment]
        print(f"{p}->{q} k={k}: " + "  ".join(
            f"{name} {t:.2f} ms" + ("" if name == "nn.Linear" else f" ({ms['nn.Linear'] / t:.2f}x)")
            for name, t in ms.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads (default 1)")
    parser.add_argument("--layers", action="store_true", help="time whole layers' fwd+bwd instead")
    args = parser.parse_args()
    threads = args.threads
    torch.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    if args.layers:
        return layers(clock, threads)
    rows, blocks, k = 1024, 32, 64
    F, Fi = k // 2 + 1, (k - 1) // 2
    A, E, _ = dft_matrices(k, torch.device("cpu"), torch.float32)
    y = torch.randn(rows, blocks * k)
    Z = torch.randn(k, rows, blocks)

    def gemm_pack():
        return torch.mm(A.t(), y.view(rows * blocks, k).t()).view(k, rows, blocks)

    def fft_pack():
        X = torch.view_as_real(torch.fft.rfft(y.view(rows, blocks, k)))
        P = torch.empty(k, rows, blocks)
        P[:F].copy_(X[..., 0].permute(2, 0, 1))
        P[F:].copy_(X[:, :, 1:1 + Fi, 1].permute(2, 0, 1))
        return P

    def gemm_unpack():
        return torch.mm(Z.view(k, rows * blocks).t(), E).view(rows, blocks * k)

    def fft_unpack():
        c = torch.empty(rows, blocks, F, 2)
        c[..., 0].copy_(Z[:F].permute(1, 2, 0))
        c[:, :, 0, 1].zero_()
        c[:, :, F - 1, 1].zero_()
        c[:, :, 1:1 + Fi, 1].copy_(Z[F:].permute(1, 2, 0))
        return torch.fft.irfft(torch.view_as_complex(c), k).view(rows, blocks * k)

    spectrum = torch.fft.rfft(y.view(rows, blocks, k))
    flat = spectrum.view(rows * blocks, k // 2 + 1)
    x, w = torch.randn(rows, 512), torch.randn(512, blocks * k)
    cases = {
        "pack: GEMM (k x k)": gemm_pack,
        "pack: rfft + layout copy": fft_pack,
        "unpack: GEMM (k x k)": gemm_unpack,
        "unpack: layout copy + irfft": fft_unpack,
        "rfft alone": lambda: torch.fft.rfft(y.view(rows, blocks, k)),
        "irfft alone": lambda: torch.fft.irfft(spectrum, k),
        "plain transpose copy": lambda: y.view(rows * blocks, k).t().contiguous(),
        "spectra: 2-D transpose copy": lambda: flat.t().contiguous(),
        "spectra: 3-D permute copy": lambda: spectrum.permute(2, 0, 1).contiguous(),
        "GEMM k x k, rows-major out": lambda: torch.mm(y.view(rows * blocks, k), A),
        "nn.Linear's GEMM (512->2048)": lambda: torch.mm(x, w),
    }
    flops = {name: 2 * rows * blocks * k * k for name in cases if "GEMM (k x k)" in name or "rows-major" in name}
    flops["nn.Linear's GEMM (512->2048)"] = 2 * rows * 512 * blocks * k
    torch.testing.assert_close(fft_pack(), gemm_pack(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fft_unpack(), gemm_unpack(), atol=1e-4, rtol=1e-4)
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(3):
        for name, ms in _median_ms(cases, clock, 15).items():
            results[name].append(ms)
    print(f"{threads} thread(s), {'thread CPU' if threads == 1 else 'wall'} time")
    for name, ms in results.items():
        med = statistics.median(ms)
        rate = f"  {flops[name] / med / 1e6:6.1f} GFLOP/s" if name in flops else ""
        print(f"{name:<30} {med:6.2f} ms  [{min(ms):.2f}-{max(ms):.2f}]{rate}")


if __name__ == "__main__":
    main()
