#!/usr/bin/env python
"""Is the memory estimate of ``dftnet train`` / ``dftnet lm`` right? Estimate against two measurements.

    python benchmarks/preflight_memory.py              # seed nets, a 16384-wide DFT net, the lm default
    python benchmarks/preflight_memory.py --json out.json

For each net, in a fresh process (so no memory freed by an earlier net is reused):

* **estimate**: :func:`dftnet.experiments.harness.preflight.estimate`, one training step on fake tensors (nothing
  allocated), counted by the memory report's accounting (``MemTracker``);
* **memory report**: :func:`dftnet.experiments.harness.memory.peak_step_memory`, the same step on real tensors
  (the "peak memory" column of ``dftnet train`` and ``dftnet lm``);
* **RSS**: the process's peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs``) over
  three real training steps of the command's own step function (AdamW, label smoothing, clipping), less
  the resident memory before the model was built (after two steps of a tiny net of the same kind, which
  load the kernels' code and thread pools): everything the step really took from the OS,
  allocator slack, FFT plans and workspaces included. glibc keeps freed memory, as the command line does,
  so this is measured first, in a process that has not yet run a step.

The batch is the command's default (128 images, 32 sequences of 128 bytes).
"""

import argparse
import json
import subprocess
import sys

NETS = {
    "seed net, DFT (784-4096-1024-256-64-10)": ("train", "dft", "784,4096,1024,256,64,10"),
    "seed net, dense": ("train", "dense", "784,4096,1024,256,64,10"),
    "16384-wide DFT (784-16384-16384-10)": ("train", "dft", "784,16384,16384,10"),
    "lm default, dense MLP": ("lm", "dense", ""),
    "lm default, block-16 MLP": ("lm", "block-16", ""),
    "lm default, DFT MLP": ("lm", "dft", ""),
}

CHILD = r"""
import json, sys
import torch
import torch.nn.functional as F
from dftnet.experiments.harness.allocator import keep_freed_memory
from dftnet.experiments.harness import preflight
from dftnet.experiments.harness.memory import peak_step_memory

keep_freed_memory()
torch.set_num_threads(1)
command, kind, widths = sys.argv[1], sys.argv[2], sys.argv[3]

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))

torch.manual_seed(0)
if command == "train":
    from dftnet.experiments.mnist.models import build_model
    widths = tuple(int(w) for w in widths.split(","))
    build = lambda: build_model(kind, widths)
    x, y = torch.randn(128, widths[0]), torch.randint(0, 10, (128,))
    batch = lambda n: (torch.empty(n, widths[0]), torch.zeros(n, dtype=torch.long))
    est_of = lambda: preflight.estimate(build, batch, 128, max(16, min(1000, 2**27 // max(widths))))
    loss_of = lambda m, x, y: F.cross_entropy(m(x), y, label_smoothing=0.1)
    clip = False
    tiny = lambda: build_model(kind, (widths[0], 16, 10))
    tiny_batch = (torch.randn(4, widths[0]), torch.randint(0, 10, (4,)))
else:
    from dftnet.experiments.lm.gpt import GPT
    from dftnet.experiments.lm.config import LMConfig
    from dftnet.experiments.lm.measure import _FlatLogits
    cfg = LMConfig()
    build = lambda: _FlatLogits(GPT(cfg.gpt(kind), seed=0))
    x, y = torch.randint(0, 256, (32, 128)), torch.randint(0, 256, (32 * 128,))
    batch = lambda n: (torch.zeros(n, 128, dtype=torch.long), torch.zeros(n * 128, dtype=torch.long))
    est_of = lambda: preflight.estimate(build, batch, 32, 64)
    loss_of = lambda m, x, y: F.cross_entropy(m(x), y)
    clip = True
    tiny = lambda: _FlatLogits(GPT(type(cfg.gpt(kind))(16, 32, 1, 2, cfg.gpt(kind).mlp), seed=0))
    tiny_batch = (torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (32,)))
def steps(model, x, y, n):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(n):
        loss = loss_of(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

steps(tiny(), *tiny_batch, 2)  # load the kernels' code and thread pools on a tiny net of the same kind
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
before = status("VmRSS")
model = build()
steps(model, x, y, 3)
rss = status("VmHWM") - before
del model  # the estimate and the report after the RSS (glibc keeps freed pages)
est = est_of()
report = peak_step_memory(build(), x, y)
print(json.dumps({"estimate": est.step, "run_estimate": est.run(), "report": report, "rss": rss}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    rows = []
    mib = 2**20
    print("| net | estimate (step) | memory report (same step, real tensors) | RSS growth, 3 real steps | "
          "estimate / RSS | run's peak estimate |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (command, kind, widths) in NETS.items():
        out = subprocess.run([sys.executable, "-c", CHILD, command, kind, widths], capture_output=True, text=True,
                             check=True).stdout
        r = {"net": name, **json.loads(out.strip().splitlines()[-1])}
        rows.append(r)
        print(f"| {name} | {r['estimate'] / mib:.1f} MiB | {r['report'] / mib:.1f} MiB | {r['rss'] / mib:.1f} MiB | "
              f"{r['estimate'] / r['rss']:.2f} | {r['run_estimate'] / mib:.1f} MiB |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
