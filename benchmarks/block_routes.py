"""Time BlockDFTLinear's routes against nn.Linear and textbook implementations of the same layer.

    python benchmarks/block_routes.py [--threads N] [--batches 1,32,128] [--out block_routes.json]
    python benchmarks/block_routes.py --preset transformer [--threads N] [--rows 1024] [--out rows.json]

For each block layer shape (p -> q, block size k), batch and mode ("fwd" under no_grad; "fwd+bwd": the
forward and the gradients of input, weight and bias), interleaved by ``time_contenders`` (medians of
repeated turns, with the q1..q3 spread):

* ``auto``, ``dense``, ``fft``: ``BlockDFTLinear(p, q, k, diagonal=False)`` with ``method`` auto (the route
  the cost model picks), dense and fft;
* ``gather``: the textbook dense form, ``F.linear`` of the matrix gathered from the weight by an index
  tensor (``w[..., (i + j) % k]``), autograd for backward;
* ``plain``: the textbook FFT form, rfft of the input blocks, a complex einsum over blocks, irfft,
  autograd for backward;
* ``linear``: ``nn.Linear(p, q)``.

Prints one row per cell with the times in microseconds and the ratios linear/auto, gather/dense and
plain/fft (above 1: DFTnet's form is faster); ``--out`` also writes the rows as JSON.

``--preset transformer`` (:mod:`block_transformer`): the MLP shapes 512 -> 2048, 2048 -> 512 and
2048 -> 8192, ``nn.Linear`` against ``BlockDFTLinear`` with k = 4, 16, 64 (method auto), interleaved,
fwd and fwd+bwd, with each block layer's route and kernel, and a profile of its fwd+bwd: the share of
the transforms and the speed of the per-frequency product GEMMs against nn.Linear's GEMM.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from dftnet import BlockDFTLinear
from dftnet.experiments.argtypes import comma_list, positive_int
from dftnet.experiments.bench.timing import time_contenders
from dftnet.experiments.harness.allocator import keep_freed_memory

SHAPES = [(256, 256, 16), (256, 256, 64), (784, 300, 32), (1024, 1024, 64), (4096, 4096, 256)]
CONTENDERS = ("auto", "dense", "fft", "gather", "plain", "linear")


def gather_layer(x, w, b, p, q):
    """``x W^T + b`` with W gathered from the (R, C, k) weight: block (r, c) is ``w[r, c, (i + j) % k]``."""
    R, C, k = w.shape
    i = torch.arange(k, device=w.device)
    W = w[..., (i[:, None] + i[None, :]) % k].transpose(1, 2).reshape(R * k, C * k)[:q, :p]
    return F.linear(x, W, b)


def plain_layer(x, w, b, p, q):
    """``x W^T + b`` by the FFT: per block a circular correlation, summed over input blocks."""
    R, C, k = w.shape
    xb = F.pad(x, (0, C * k - p)).reshape(x.shape[0], C, k)
    Z = torch.einsum("bcf,rcf->brf", torch.fft.rfft(xb).conj(), torch.fft.rfft(w))
    return torch.fft.irfft(Z, k).reshape(x.shape[0], R * k)[:, :q] + b


def cell(p: int, q: int, k: int, batch: int, mode: str, repeats: int, budget: float) -> dict:
    torch.manual_seed(0)
    layers = {m: BlockDFTLinear(p, q, block_size=k, diagonal=False, method=m) for m in ("auto", "dense", "fft")}
    for layer in layers.values():
        layer.load_state_dict(layers["auto"].state_dict())
    w = layers["auto"].weight.detach().clone()
    b = layers["auto"].bias.detach().clone()
    linear = torch.nn.Linear(p, q)
    grad = mode == "fwd+bwd"
    x = torch.randn(batch, p, requires_grad=grad)
    g = torch.randn(batch, q)
    w.requires_grad_(grad)
    b.requires_grad_(grad)

    def run(forward, params):
        if grad:
            return lambda: torch.autograd.grad(forward(), (x, *params), g)
        return forward

    fns = {name: run(lambda layer=layer: layer(x), (layer.spectrum, layer.bias)) for name, layer in layers.items()}
    fns["gather"] = run(lambda: gather_layer(x, w, b, p, q), (w, b))
    fns["plain"] = run(lambda: plain_layer(x, w, b, p, q), (w, b))
    fns["linear"] = run(lambda: linear(x), (linear.weight, linear.bias))
    with torch.no_grad():  # the textbook forms compute the same layer
        ref = gather_layer(x, w, b, p, q)
        errs = [float((f().detach() - ref).norm() / ref.norm()) for f in
                (lambda: layers["auto"](x), lambda: plain_layer(x, w, b, p, q))]
    with torch.set_grad_enabled(grad):
        stats = time_contenders(fns, repeats=repeats, budget=budget)
    row = dict(p=p, q=q, k=k, batch=batch, mode=mode, max_rel_err=max(errs),
               route=layers["auto"].route(batch, training=grad))
    for name in CONTENDERS:
        s = stats[name]
        row[f"{name}_us"] = s["median"] * 1e6
        row[f"{name}_q1_us"], row[f"{name}_q3_us"] = s["q1"] * 1e6, s["q3"] * 1e6
    row["linear_over_auto"] = row["linear_us"] / row["auto_us"]
    row["gather_over_dense"] = row["gather_us"] / row["dense_us"]
    row["plain_over_fft"] = row["plain_us"] / row["fft_us"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--batches", type=comma_list(positive_int), default=[1, 32, 128])
    ap.add_argument("--repeats", type=positive_int, default=9)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per cell (shared by the contenders)")
    ap.add_argument("--out", default=None, help="write the rows to this JSON file")
    ap.add_argument("--preset", choices=["layers", "transformer"], default="layers")
    ap.add_argument("--rows", type=positive_int, default=1024, help="--preset transformer: rows per call")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    if args.preset == "transformer":
        from block_transformer import run_transformer  # noqa: PLC0415

        rows = run_transformer(args.rows, args.repeats, args.budget)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times in us (median of turns); "
          "ratios above 1: DFTnet's form is faster")
    head = (f"{'p x q':>11} {'k':>4} {'B':>4} {'mode':>7} {'route':>5} " + " ".join(f"{c:>8}" for c in CONTENDERS)
            + f" {'lin/auto':>8} {'gath/dns':>8} {'plain/fft':>9}")
    print(head)
    rows = []
    for p, q, k in SHAPES:
        for batch in args.batches:
            for mode in ("fwd", "fwd+bwd"):
                r = cell(p, q, k, batch, mode, args.repeats, args.budget)
                rows.append(r)
                print(f"{f'{p}x{q}':>11} {k:>4} {batch:>4} {mode:>7} {r['route']:>5} "
                      + " ".join(f"{r[c + '_us']:8.1f}" for c in CONTENDERS)
                      + f" {r['linear_over_auto']:8.2f} {r['gather_over_dense']:8.2f} {r['plain_over_fft']:9.2f}",
                      flush=True)
                assert r["max_rel_err"] < 1e-4, r
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
