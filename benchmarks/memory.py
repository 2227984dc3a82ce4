#!/usr/bin/env python
"""Memory of one training step of the seed network (784-4096-1024-256-64-10, batch 128), per layer mode.

Reports, for DFT layers in the default mode (``recompute_spectrum=None``: auto), with the input's spectrum
kept (False) and recomputed (True), for a plain
``torch.fft`` autograd implementation and for dense ``nn.Linear``:
  - what autograd saves for backward (``saved_tensors_hooks``: every saved tensor in full, and each
    storage once), and
  - the peak tensor memory of one AdamW step (``dftnet.experiments.harness.memory.peak_step_memory``), and
  - the median time of a training step (interleaved turns, ``dftnet.experiments.bench.timing``).

    python benchmarks/memory.py [--batch 128] [--widths 784,4096,1024,256,64,10] [--repeats 15]
"""

import argparse

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

import dftnet
from dftnet.experiments.bench.timing import time_contenders
from dftnet.experiments.harness.memory import peak_step_memory, saved_tensor_bytes
from dftnet.experiments.mnist.models import MLP


class PlainDFTLinear(nn.Module):
    """The baseline: rfft, multiply, irfft, and autograd does the rest."""

    def __init__(self, p, q):
        super().__init__()
        self.p, self.q, self.n = p, q, max(p, q)
        self.weight = nn.Parameter(dftnet.DFTLinear(p, q).weight.detach().clone())
        self.bias = nn.Parameter(torch.zeros(q))

    def forward(self, x):
        X = torch.fft.rfft(x, self.n)
        return torch.fft.irfft(X.conj() * torch.fft.rfft(self.weight, self.n), self.n)[..., : self.q] + self.bias


class Checkpointed(nn.Module):
    """Runs each hidden layer + ReLU under torch.utils.checkpoint: activations recomputed in backward."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        self.seq = seq

    def forward(self, x):
        mods = list(self.seq)
        for i in range(0, len(mods) - 1, 2):  # (layer, ReLU) pairs
            block = nn.Sequential(*mods[i : i + 2])
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return mods[-1](x)


def plain_mlp(widths):
    mods = []
    for i, (p, q) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            mods.append(nn.ReLU())
        mods.append(PlainDFTLinear(p, q))
    return nn.Sequential(*mods)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--widths", default="784,4096,1024,256,64,10")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    widths = tuple(int(w) for w in args.widths.split(","))
    torch.manual_seed(0)
    x = torch.randn(args.batch, widths[0])
    y = torch.randint(0, widths[-1], (args.batch,))
    models = {
        "dft (default: auto)": MLP(widths, "dft"),
        "dft (keep spectrum)": MLP(widths, "dft", recompute_spectrum=False),
        "dft (recompute_spectrum)": MLP(widths, "dft", recompute_spectrum=True),
        "dft + utils.checkpoint": Checkpointed(MLP(widths, "dft")),
        "plain torch.fft": plain_mlp(widths),
        "dense nn.Linear": MLP(widths, "dense"),
    }
    opts = {k: torch.optim.AdamW(m.parameters()) for k, m in models.items()}

    def step(name):
        loss = F.cross_entropy(models[name](x), y)
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    # interleaved turns; a budget this large gives every model --repeats turns
    times = time_contenders({k: (lambda k=k: step(k)) for k in models}, repeats=args.repeats, budget=1e9,
                            min_repeats=args.repeats)
    rows = []
    for k, m in models.items():
        saved_sum = saved_tensor_bytes(lambda m=m: F.cross_entropy(m(x), y))
        saved_unique = saved_tensor_bytes(lambda m=m: F.cross_entropy(m(x), y), unique=True)
        rows.append((k, saved_sum, saved_unique, peak_step_memory(m, x, y), times[k]["median"]))
    print(f"one training step, widths {'-'.join(map(str, widths))}, batch {args.batch}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':26} {'saved (sum)':>12} {'saved (unique)':>15} {'peak step':>10} {'step ms':>8}")
    mib = 2**20
    for k, s, u, peak, t in rows:
        print(f"{k:26} {s / mib:9.1f} MiB {u / mib:12.1f} MiB {peak / mib:6.1f} MiB {t * 1e3:8.2f}")
    base, dense = rows[4], rows[5]
    print(f"\nsaved (sum) relative to plain: default {rows[0][1] / base[1]:.2f}, "
          f"keep spectrum {rows[1][1] / base[1]:.2f}; default/keep-spectrum step time {rows[0][4] / rows[1][4]:.2f}; "
          f"default/dense peak {rows[0][3] / dense[3]:.3f}")


if __name__ == "__main__":
    main()
