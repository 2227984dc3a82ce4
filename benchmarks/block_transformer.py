"""``benchmarks/block_routes.py --preset transformer``: BlockDFTLinear against nn.Linear at transformer MLP
shapes, interleaved, with a profile of where each block layer's fwd+bwd time goes."""

from __future__ import annotations

import torch

from dftnet import BlockDFTLinear
from dftnet.experiments.bench.timing import time_contenders
from dftnet.experiments.harness.reproduce import cpu_model

SHAPES = [(512, 2048), (2048, 512), (2048, 8192)]
BLOCKS = (4, 16, 64)
# aten ops of the GEMM kernel (dftnet.kernels.block_gemm): the transforms and the weight's k x k map are
# mm, the per-frequency products bmm / baddbmm_; the torch.fft kernel's transforms are _fft_r2c / _fft_c2r
# and its products bmm (real, on (real, imaginary) pairs)
TRANSFORM_OPS = {"aten::mm", "aten::_fft_r2c", "aten::_fft_c2r"}
PRODUCT_OPS = {"aten::bmm", "aten::baddbmm_"}


def profile_shares(fn, calls: int = 3) -> dict:
    """Self CPU time of ``fn`` per call by op family: transforms, products, the rest (seconds)."""
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    total = transforms = products = 0.0
    for e in prof.key_averages():
        t = e.self_cpu_time_total / 1e6 / calls
        total += t
        transforms += t if e.key in TRANSFORM_OPS else 0.0
        products += t if e.key in PRODUCT_OPS else 0.0
    return dict(total=total, transforms=transforms, products=products)


def run_transformer(rows: int, repeats: int, budget: float) -> list[dict]:
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {rows} rows, float32; "
          "ms per call, median [q1, q3] of interleaved turns; speed-up = nn.Linear / block")
    out = []
    for p, q in SHAPES:
        torch.manual_seed(0)
        linear = torch.nn.Linear(p, q)
        layers = {k: BlockDFTLinear(p, q, k, diagonal=False) for k in BLOCKS}
        for mode in ("fwd", "fwd+bwd"):
            grad = mode == "fwd+bwd"
            x = torch.randn(rows, p, requires_grad=grad)
            g = torch.randn(rows, q)

            def call(layer, params):
                if grad:
                    return lambda: torch.autograd.grad(layer(x), (x, *params), g)
                return lambda: layer(x)

            fns = {"linear": call(linear, (linear.weight, linear.bias))}
            fns.update({f"block-{k}": call(m, (m.spectrum, m.bias)) for k, m in layers.items()})
            with torch.set_grad_enabled(grad):
                stats = time_contenders(fns, repeats=repeats, budget=budget)
                lin = stats["linear"]["median"]
                for k, m in layers.items():
                    s = stats[f"block-{k}"]
                    route = m.route(rows, training=grad)
                    kernel = m._get_structure().kernel(rows, "cpu", grad) if route == "fft" else "-"
                    row = dict(p=p, q=q, k=k, rows=rows, mode=mode, threads=torch.get_num_threads(),
                               route=route, kernel=kernel, linear_ms=lin * 1e3,
                               linear_q1_ms=stats["linear"]["q1"] * 1e3, linear_q3_ms=stats["linear"]["q3"] * 1e3,
                               block_ms=s["median"] * 1e3, block_q1_ms=s["q1"] * 1e3, block_q3_ms=s["q3"] * 1e3,
                               speedup=lin / s["median"])
                    if grad and route == "fft":
                        sh = profile_shares(fns[f"block-{k}"])
                        C, R = -(-p // k), -(-q // k)
                        macs = 3 * rows * C * R * (2 * k if kernel == "gemm" else 4 * (k // 2 + 1))
                        row.update(transform_share=sh["transforms"] / sh["total"],
                                   product_share=sh["products"] / sh["total"],
                                   product_gmacs=macs / max(sh["products"], 1e-9) / 1e9,
                                   linear_gmacs=3 * rows * p * q / lin / 1e9)
                    out.append(row)
                    extra = ""
                    if "transform_share" in row:
                        extra = (f"  transforms {row['transform_share']:.0%}, products {row['product_share']:.0%} "
                                 f"at {row['product_gmacs']:.1f} GMAC/s (nn.Linear {row['linear_gmacs']:.1f})")
                    print(f"{p:>5}->{q:<5} k={k:<3} {mode:>7}  linear {lin * 1e3:8.2f} "
                          f"[{row['linear_q1_ms']:.2f}, {row['linear_q3_ms']:.2f}]  block {s['median'] * 1e3:8.2f} "
                          f"[{row['block_q1_ms']:.2f}, {row['block_q3_ms']:.2f}]  {row['speedup']:5.2f}x  "
                          f"{route}/{kernel}{extra}", flush=True)
    return out


def table(rows: list[dict]) -> str:
    """The markdown table of docs/performance.md from the rows of one or more runs."""
    lines = ["| p→q | k | threads | fwd: nn.Linear | block | speed-up | fwd+bwd: nn.Linear | block | speed-up "
             "| kernel (fwd+bwd) | transforms / products, share of fwd+bwd | products GMAC/s (nn.Linear) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cell = {(r["p"], r["q"], r["k"], r["threads"], r["mode"]): r for r in rows}
    ms = lambda r, who: f"{r[who + '_ms']:.1f} [{r[who + '_q1_ms']:.1f}–{r[who + '_q3_ms']:.1f}]"  # noqa: E731
    for (p, q, k, t, mode), f in sorted(cell.items(), key=lambda kv: (kv[0][3], kv[0][0] * kv[0][1], kv[0][:3])):
        if mode != "fwd":
            continue
        b = cell[(p, q, k, t, "fwd+bwd")]
        shares = (f"{b['transform_share']:.0%} / {b['product_share']:.0%}" if "transform_share" in b else "–")
        speed = f"{b['product_gmacs']:.1f} ({b['linear_gmacs']:.1f})" if "product_gmacs" in b else "–"
        kernel = b["kernel"] if b["route"] == "fft" else "dense"
        lines.append(f"| {p}→{q} | {k} | {t} | {ms(f, 'linear')} | {ms(f, 'block')} | **{f['speedup']:.2f}×** "
                     f"| {ms(b, 'linear')} | {ms(b, 'block')} | **{b['speedup']:.2f}×** | {kernel} | {shares} "
                     f"| {speed} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    print(table([r for path in sys.argv[1:] for r in json.load(open(path))]))
