#!/usr/bin/env python
"""The recipe table of docs/training.md: each lever of the MNIST recipe, measured over seeds.

    python benchmarks/mnist_recipe.py run shift2 --net dft --seeds 1,2,3 -- --shift 2
    python benchmarks/mnist_recipe.py table               # redraws the table from the CSV

``run`` trains ``dftnet train --layer NET --seed S --quiet [flags]`` once per seed, one process at a time
(1 thread unless --threads says otherwise), and appends one row per run to
docs/results/mnist_recipe.csv: the lever's name, dataset, net, seed, test accuracy (of the epoch that
validation picked), its validation and train accuracy, wall seconds and the command. ``table`` prints
the markdown table of docs/training.md from that file: per lever and dataset, each net's accuracies by
seed and their median, and the gap to dense.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSV = ROOT / "docs" / "results" / "mnist_recipe.csv"
FIELDS = ["lever", "dataset", "net", "seed", "test_acc", "val_acc", "train_acc", "best_epoch", "epochs",
          "seconds", "threads", "command"]


def run(args) -> None:
    flags = args.flags
    for seed in args.seeds:
        out = Path(args.runs) / f"{args.lever}-{args.dataset}-{args.net}-s{seed}"
        cmd = ["dftnet", "train", "--layer", args.net, "--seed", str(seed), "--quiet", "--overwrite",
               "--out", str(out)] + (["--dataset", args.dataset] if args.dataset != "mnist" else []) + flags
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        summary = json.loads((out / "summary.json").read_text())
        res = summary["results"][0]
        with open(out / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        best = next(r for r in rows if int(r["epoch"]) == res["best_epoch"])
        shown = ["dftnet", "train", "--layer", args.net, "--seed", str(seed)] + \
            (["--dataset", args.dataset] if args.dataset != "mnist" else []) + flags
        row = {"lever": args.lever, "dataset": args.dataset, "net": args.net, "seed": seed,
               "test_acc": f"{res['test_acc']:.4f}", "val_acc": f"{res['best_val_acc']:.4f}",
               "train_acc": f"{float(best['train_acc']):.4f}", "best_epoch": res["best_epoch"],
               "epochs": summary["config"]["epochs"], "seconds": f"{seconds:.0f}",
               "threads": summary["config"]["threads"], "command": shlex.join(shown)}
        new = not CSV.exists()
        CSV.parent.mkdir(parents=True, exist_ok=True)
        with open(CSV, "a", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            if new:
                w.writeheader()
            w.writerow(row)
        print(", ".join(f"{k} {row[k]}" for k in FIELDS[:-1]), flush=True)


def _flags(command: str) -> str:
    """The command's recipe flags: what follows --seed S (and --dataset D)."""
    parts = shlex.split(command)
    i = parts.index("--seed") + 2
    if i < len(parts) and parts[i] == "--dataset":
        i += 2
    return " ".join(parts[i:]) or "(defaults)"


def table(args) -> str:
    with open(args.csv) as f:
        rows = list(csv.DictReader(f))
    groups: dict[tuple[str, str], dict] = {}
    for r in rows:
        g = groups.setdefault((r["dataset"], r["lever"]), {"flags": {}, "nets": {}})
        g["flags"].setdefault(r["net"], _flags(r["command"]))
        g["nets"].setdefault(r["net"], {})[int(r["seed"])] = r  # a rerun of a seed replaces it
    lines = ["| dataset | lever | flags (`dftnet train --layer NET --seed S ...`) | DFT test acc by seed | "
             "DFT median | DFT train / val (median) | dense test acc by seed | dense median | gap |",
             "|---|---|---|---|---:|---|---|---:|---:|"]

    def cells(runs):
        if not runs:
            return "", "", "", None
        accs = [float(runs[s]["test_acc"]) * 100 for s in sorted(runs)]
        med = statistics.median(accs)
        tr = statistics.median(float(r["train_acc"]) * 100 for r in runs.values())
        va = statistics.median(float(r["val_acc"]) * 100 for r in runs.values())
        by_seed = " / ".join(f"{a:.2f}" for a in accs) + f" (seeds {','.join(map(str, sorted(runs)))})"
        return by_seed, f"{med:.2f}%", f"{tr:.1f} / {va:.2f}%", med

    for (dataset, lever), g in groups.items():
        d_seeds, d_med, d_fit, d = cells(g["nets"].get("dft", {}))
        n_seeds, n_med, _, n = cells(g["nets"].get("dense", {}))
        gap = f"{n - d:.2f}" if d is not None and n is not None else ""
        nets = sorted(g["flags"], key=lambda k: k != "dft")  # DFT's flags first; dense's too where they differ
        shown = dict.fromkeys(g["flags"][k] for k in nets)
        flags = "; ".join(f"`{f}`" if i == 0 else f"dense `{f}`" for i, f in enumerate(shown))
        lines.append(f"| {dataset} | {lever} | {flags} | {d_seeds} | {d_med} | {d_fit} | {n_seeds} | "
                     f"{n_med} | {gap} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train one lever over seeds and append to the CSV")
    r.add_argument("lever")
    r.add_argument("--net", default="dft")
    r.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    r.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--runs", default="/tmp/mnist_recipe", help="run folders go here")
    t = sub.add_parser("table", help="print the markdown recipe table")
    t.add_argument("--csv", default=str(CSV))
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    args.flags = argv[cut + 1:]
    if args.cmd == "run":
        run(args)
    else:
        print(table(args))


if __name__ == "__main__":
    sys.exit(main())
