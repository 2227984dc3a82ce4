"""Sweeps over widths and layer variants: does width buy accuracy, and what does each parameter buy?

``dftnet sweep --widths 784,W,W,10 --W 1024,4096,16384`` trains each variant at each width;
``dftnet sweep --frontier`` trains the seed widths with dense, DFT, DFT + sign flips and
block-circulant layers on MNIST and Fashion-MNIST. Each run is an ordinary ``dftnet train`` run
in its own folder; the sweep collects them into ``sweep.csv``/``sweep.json`` and a plot.
The sweep holds its folder's lock while it runs, and refuses a folder that holds outputs unless
``--overwrite`` is given. Ctrl-C or SIGTERM stops the run in progress at a step boundary with a
checkpoint (exit 130 / 143); ``--resume`` then re-reads the finished runs and continues that one exactly.
A run that diverges or that the memory estimate refuses is a row of the table ("diverged", "skipped"),
and the sweep goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..argtypes import comma_list, layer_spec, one_of, positive_float, positive_int
from ..configflags import add_run_flags, config_from
from ..harness.guard import TrainingDiverged
from ..harness.interrupt import TrainingInterrupted, exit_status, stopped_line
from ..harness.runfolder import claim
from ..harness.writes import atomic_path, write_text_atomic
from ..tables import write_csv
from .models import SEED_WIDTHS
from .report import plot_accuracy_frontier, plot_widths, sweep_table

__all__ = ["configure_parser", "run", "expand_widths", "dense_parameters", "FRONTIER_VARIANTS"]

FRONTIER_VARIANTS = ("dense", "dft", "dft-sign", "block-8", "block-32", "block-128", "block-512")


def expand_widths(template: str, values: list[int]) -> list[tuple[int, ...]]:
    """``"784,W,W,10"`` with W in [1024, 4096] -> [(784,1024,1024,10), (784,4096,4096,10)]."""
    parts = [p.strip() for p in template.split(",") if p.strip()]
    if len(parts) < 2:
        raise ValueError(f"--widths needs at least an input and an output size, got {template!r}")
    out = []
    for v in (values if any(p.upper() == "W" for p in parts) else [None]):
        try:
            out.append(tuple(v if p.upper() == "W" else int(p) for p in parts))
        except ValueError:
            raise ValueError(f"--widths must be integers or W, got {template!r}") from None
    for widths in out:
        if min(widths) < 1:
            raise ValueError(f"widths must be positive, got {widths}")
    return out


def dense_parameters(widths) -> int:
    return sum(p * q + q for p, q in zip(widths[:-1], widths[1:]))


DATASETS = ("mnist", "fashion-mnist")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--widths", default="784,W,W,10", help="width template; W takes each --W value")
    p.add_argument("--W", type=comma_list(positive_int, "width"), default=[1024, 4096, 16384, 65536],
                   metavar="1024,4096,...")
    p.add_argument("--variants", type=comma_list(layer_spec, "variant"), default=["dft", "dense"],
                   help="comma-separated: dense, dft, dft-sign, block-K, block-K-sign")
    p.add_argument("--datasets", type=comma_list(one_of(DATASETS), "dataset"), default=["mnist"])
    p.add_argument("--frontier", action="store_true",
                   help=f"seed widths, variants {','.join(FRONTIER_VARIANTS)}, MNIST and Fashion-MNIST")
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=None)
    p.add_argument("--max-steps", type=positive_int, default=None)
    p.add_argument("--limit", type=positive_int, default=None)
    p.add_argument("--dense-max-params", type=positive_float, default=60e6,
                   help="skip dense nets with more parameters than this (default 60e6)")
    add_run_flags(p, "seed", "device", "out", "overwrite", "resume", "memory_check", "quiet",
                  resume="continue a stopped sweep in --out: finished runs are re-read, a stopped one resumes",
                  memory_check="the memory estimate that skips a run too big for the device")


def plan_runs(args) -> list[dict]:
    if args.frontier:
        args.widths, args.variants = ",".join(map(str, SEED_WIDTHS)), list(FRONTIER_VARIANTS)
        if args.datasets == ["mnist"]:
            args.datasets = ["mnist", "fashion-mnist"]
    runs = []
    for dataset in args.datasets:
        for widths in expand_widths(args.widths, args.W):
            for variant in args.variants:
                skip = None
                if variant == "dense" and dense_parameters(widths) > args.dense_max_params:
                    gib = dense_parameters(widths) * 4 / 2**30
                    skip = f"dense needs {dense_parameters(widths):,} parameters ({gib:.1f} GiB of float32 weights)"
                runs.append({"dataset": dataset, "widths": widths, "variant": variant, "skip": skip})
    return runs


def run(args) -> int:
    from datetime import datetime

    runs = plan_runs(args)
    out = Path(args.out or Path("runs") / f"sweep-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    log = (lambda *a, **k: None) if args.quiet else print
    resume = getattr(args, "resume", False)
    if resume and not out.is_dir():
        raise ValueError(f"--resume: output folder {out} does not exist (give the --out of the sweep to resume)")
    try:
        with claim(out, "sweep", resume=resume, overwrite=getattr(args, "overwrite", False), command="dftnet sweep",
                   log=log):
            rows = _train_all(runs, out, args, log)
            write_outputs(rows, out, args)
    except TrainingInterrupted as e:
        print(f"\n{stopped_line(e, 'sweep', out)}", file=sys.stderr)
        return exit_status(e.signum)
    log("\n" + sweep_table(rows) + f"\n\nwrote {out}/sweep.csv sweep.json "
        + ("frontier.png" if args.frontier else "sweep.png"))
    return 0


def _train_all(runs: list[dict], out: Path, args, log) -> list[dict]:
    from ..harness.preflight import MemoryRefused
    from .train import TrainConfig
    from .train import run as train_run

    rows = []
    for i, r in enumerate(runs, 1):
        name = f"{r['dataset']}/{r['variant']}-{'-'.join(map(str, r['widths']))}"
        row = {"dataset": r["dataset"], "variant": r["variant"], "widths": "-".join(map(str, r["widths"])),
               "W": max(r["widths"][1:-1], default=0), "dense_parameters": dense_parameters(r["widths"])}
        if r["skip"]:
            log(f"[{i}/{len(runs)}] {name}: skipped: {r['skip']}")
            rows.append({**row, "skipped": r["skip"]})
            continue
        log(f"[{i}/{len(runs)}] {name}")
        cfg = config_from(TrainConfig, args, dataset=r["dataset"], layer=r["variant"], widths=tuple(r["widths"]),
                          out=str(out / name), quiet=True,
                          resume=getattr(args, "resume", False) and (out / name).is_dir())
        try:
            res = train_run(cfg, log=lambda *a, **k: None)["results"][0]
        except (TrainingDiverged, MemoryRefused) as e:  # a finding of the sweep, not the end of it
            log(f"    {'diverged' if isinstance(e, TrainingDiverged) else 'skipped'}: {e}")
            rows.append({**row, "skipped": str(e), **({"diverged": True} if isinstance(e, TrainingDiverged) else {})})
            continue
        rows.append({**row, **{k: res[k] for k in ("parameters", "test_acc", "best_val_acc", "seconds_per_epoch",
                                                   "examples_per_s", "peak_memory_bytes", "steps")}})
        log(f"    {res['parameters']:,} parameters, test acc {res['test_acc']:.2%}, "
            f"{res['seconds_per_epoch']:.1f} s/epoch")
    return rows


def write_outputs(rows: list[dict], out: Path, args) -> None:
    keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    with atomic_path(out / "sweep.csv") as tmp:
        write_csv(tmp, rows, keys)
    write_text_atomic(out / "sweep.json", json.dumps({"args": {k: v for k, v in vars(args).items() if k != "func"},
                                                      "rows": rows}, indent=2, default=str) + "\n")
    done = [r for r in rows if "skipped" not in r]
    if done:
        name = "frontier.png" if args.frontier else "sweep.png"
        with atomic_path(out / name) as tmp:
            (plot_accuracy_frontier if args.frontier else plot_widths)(done, tmp)
