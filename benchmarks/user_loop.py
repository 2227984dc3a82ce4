#!/usr/bin/env python
"""A user's own training loop on a wide DFT net: plain AdamW, one parameter group, no schedule.

    python benchmarks/user_loop.py                       # 784-16384-16384-10, lr 1e-3 and 3e-3, 300 steps
    python benchmarks/user_loop.py --widths 784,4096,4096,10 --lrs 3e-3 --steps 100

What docs/training.md's "A user's own loop" reports: test accuracy on MNIST after the steps, and the
fraction of each hidden layer's units that are alive (positive for at least one test image). With the
weight itself as the parameter (dftnet 0.1), the second hidden layer of the 16384-wide net died in the
first step at lr 3e-3.
"""

import argparse
import json
import time

import torch
from torch import nn

from dftnet import DFTLinear
from dftnet.experiments.mnist.data import load_splits


@torch.no_grad()
def evaluate(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list[float]]:
    correct, alive = 0, None
    for s in range(0, len(x), 1000):
        h, hidden = x[s : s + 1000], []
        for m in model:
            h = m(h)
            if isinstance(m, nn.ReLU):
                hidden.append((h > 0).any(0))
        correct += (h.argmax(1) == y[s : s + 1000]).sum().item()
        alive = hidden if alive is None else [a | b for a, b in zip(alive, hidden)]
    return correct / len(x), [a.float().mean().item() for a in alive]


def run(widths: list[int], lr: float, steps: int, batch: int, seed: int, splits) -> dict:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (p, q) in enumerate(zip(widths[:-1], widths[1:])):
        layers += ([nn.ReLU()] if i else []) + [DFTLinear(p, q)]
    model = nn.Sequential(*layers)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)  # one group, torch's defaults otherwise
    g = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(splits.train_x), (batch,), generator=g)
        loss = nn.functional.cross_entropy(model(splits.train_x[idx]), splits.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    acc, alive = evaluate(model.eval(), splits.test_x, splits.test_y)
    return {"widths": widths, "lr": lr, "steps": steps, "test_acc": acc, "alive": alive,
            "loss_first": losses[0], "loss_last_20": sum(losses[-20:]) / 20, "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=lambda s: [int(v) for v in s.split(",")], default=[784, 16384, 16384, 10])
    parser.add_argument("--lrs", type=lambda s: [float(v) for v in s.split(",")], default=[1e-3, 3e-3])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    splits = load_splits("mnist", seed=args.seed)
    for lr in args.lrs:
        print(json.dumps(run(args.widths, lr, args.steps, args.batch_size, args.seed, splits)), flush=True)


if __name__ == "__main__":
    main()
