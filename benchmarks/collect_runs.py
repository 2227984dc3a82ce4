#!/usr/bin/env python
"""Collect finished training runs (any folder holding config.json + summary.json) into one table and plot.

    python benchmarks/collect_runs.py runs/i12/sweep-* --widths-plot docs/sweep.png
    python benchmarks/collect_runs.py runs/i12/seed-dft-* runs/i12/default

Prints one row per run (dataset, variant, widths, seed, epochs, lr, weight decay, parameters, test
accuracy, best epoch, s/epoch), then, per (dataset, variant, widths), the median test accuracy and its
range over seeds. With ``--widths-plot``, plots accuracy, time and parameters against the hidden width
(one line per seed) with ``dftnet.experiments.mnist.report.plot_widths``.
"""

import argparse
import json
import statistics
from pathlib import Path

from dftnet.experiments.mnist.report import plot_widths
from dftnet.experiments.tables import text_table


def find_runs(folders):
    for folder in folders:
        for summary in sorted(Path(folder).rglob("summary.json")):
            config = json.loads((summary.parent / "config.json").read_text())
            for result in json.loads(summary.read_text())["results"]:
                yield config, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--widths-plot", default=None, help="write accuracy/time/parameters against W here")
    args = parser.parse_args()
    rows = []
    for config, r in find_runs(args.folders):
        rows.append({"dataset": config["dataset"], "variant": r["layer"],
                     "widths": "-".join(map(str, config["widths"])),
                     "W": max(config["widths"][1:-1] or [0]), "seed": config["seed"], "epochs": config["epochs"],
                     "lr": config["lr"], "wd": config["weight_decay"], "parameters": r["parameters"],
                     "test_acc": r["test_acc"], "best_epoch": r["best_epoch"],
                     "seconds_per_epoch": r["seconds_per_epoch"]})
    cols = ["dataset", "variant", "widths", "seed", "epochs", "lr", "wd", "parameters", "test acc", "best", "s/epoch"]
    print(text_table(cols, [[r["dataset"], r["variant"], r["widths"], str(r["seed"]), str(r["epochs"]), str(r["lr"]),
                             str(r["wd"]), f"{r['parameters']:,}", f"{100 * r['test_acc']:.2f}%", str(r["best_epoch"]),
                             f"{r['seconds_per_epoch']:.1f}"] for r in rows]))
    groups = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["variant"], r["widths"], r["epochs"], r["lr"]), []).append(r["test_acc"])
    print()
    print(text_table(["dataset", "variant", "widths", "epochs", "lr", "runs", "median test acc", "range"],
                     [[d, v, w, str(e), str(lr), str(len(a)), f"{100 * statistics.median(a):.2f}%",
                       f"{100 * min(a):.2f}-{100 * max(a):.2f}%"] for (d, v, w, e, lr), a in groups.items()]))
    if args.widths_plot:
        plot_widths([{**r, "variant": f"{r['variant']} seed {r['seed']}"} for r in rows], Path(args.widths_plot))
        print(f"\nwrote {args.widths_plot}")


if __name__ == "__main__":
    main()
