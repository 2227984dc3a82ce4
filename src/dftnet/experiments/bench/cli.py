"""The command line of ``dftnet bench`` (also ``benchmarks/bench.py`` and ``python -m
dftnet.experiments.bench``): its flags, checked by the shared argparse types, and the run that prints
the table as cells finish, then the per-call overhead at batch 1 and the end-to-end training step, and
writes the outputs (bench.csv, bench.json, bench.png, end_to_end.csv)."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..argtypes import Parser, UsageError, comma_list, device, one_of, positive_float, positive_int
from ..configflags import add_run_flags
from ..harness.allocator import keep_freed_memory
from ..harness.runfolder import RunFolderError, claim
from ..harness.writes import WriteError
from ..mnist.models import SEED_WIDTHS
from .cases import sweep
from .end_to_end import E2E_BATCH, bench_end_to_end, format_end_to_end
from .grid import DEFAULT_BATCHES, DEFAULT_WIDTHS, DTYPES, MODES, parse_widths
from .report import STATS, format_overhead, format_row, machine_info, table_header, write_outputs
from .timing import CLOCKS, DEFAULT_BUDGET_S, DEFAULT_REPEATS, MIN_REPEATS
from .transformer import (
    BLOCK_SIZES,
    QUICK_BLOCKS,
    QUICK_DIMS,
    QUICK_ROWS,
    TRANSFORMER_DIMS,
    TRANSFORMER_ROWS,
    c3a_operation,
    format_transformer,
    transformer_cells,
    transformer_sweep,
    write_transformer,
)

__all__ = ["QUICK_WIDTHS", "QUICK_BATCHES", "configure_parser", "run", "main"]

QUICK_WIDTHS: tuple = (256, 1024, 4096, 785, (785, 300))
QUICK_BATCHES = (1, 8, 128)
QUICK_BUDGET_S = 0.4
QUICK_REPEATS = 11
PRESETS = ("layers", "transformer")
TRANSFORMER_BUDGET_S = 6.0  # seconds per cell of the transformer preset: it has up to 14 contenders
QUICK_TRANSFORMER_BUDGET_S = 3.0
E2E_BUDGET_FACTOR = 4  # the end-to-end row's timing budget, in cell budgets (--budget)
E2E_WIDTHS: tuple = SEED_WIDTHS  # the end-to-end row's net


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's flags to ``parser``; argparse checks their values."""
    parser.description = parser.description or (
        "Time DFTLinear against a plain torch.fft layer, nn.Linear and the FFT floor, per layer shape, "
        "batch and mode; then the per-call overhead at batch 1 (DFTLinear less its floor, in µs) and the "
        "end-to-end AdamW training step of the seed MLP (784-4096-1024-256-64-10, batch 128): DFT net "
        "against dense net, the DFT net's floor and its optimizer step. Outputs in --out: bench.csv (a "
        "row per cell), end_to_end.csv (one row), bench.json (both, key \"end_to_end\"), bench.png."
    )
    parser.add_argument("--preset", type=one_of(PRESETS), default="layers",
                        help="layers (default: the sweep over --widths and --batches) or transformer: the MLP "
                             "shapes d->4d and 4d->d at d=512,1024,2048,4096 on 1024 and 8192 rows, DFTLinear "
                             "and BlockDFTLinear k=8,16,32,64 against nn.Linear, their FFT floors and PEFT's "
                             "C3A op when peft is installed (with --quick: d=512, 1024 rows, k=16,64)")
    parser.add_argument("--dims", type=comma_list(positive_int, "width"), default=None, metavar="LIST",
                        help="--preset transformer: the model widths d (default 512,1024,2048,4096)")
    parser.add_argument("--rows", type=comma_list(positive_int, "rows"), default=None, metavar="LIST",
                        help="--preset transformer: rows per call (default 1024,8192)")
    parser.add_argument("--blocks", type=comma_list(positive_int, "block size"), default=None, metavar="LIST",
                        help="--preset transformer: block sizes k of BlockDFTLinear (default 8,16,32,64)")
    parser.add_argument("--quick", action="store_true",
                        help="a small subset (widths 256,1024,4096,785,785x300; batches 1,8,128; the "
                             "end-to-end row) with a short time budget: under a minute on a 2-core CPU")
    parser.add_argument("--widths", type=parse_widths, default=None, metavar="LIST",
                        help="comma-separated layer widths: N (square), PxQ (non-square), 2^a..2^b "
                             "(powers of two); default 2^6..2^20,785,1000,1009,4099,10007,785x300")
    parser.add_argument("--batches", type=comma_list(positive_int, "batch"), default=None, metavar="LIST",
                        help="comma-separated batch sizes (default 1,32,128,1024)")
    parser.add_argument("--modes", type=comma_list(one_of(MODES), "mode"), default=list(MODES), metavar="LIST",
                        help="comma-separated among fwd, fwd+bwd (default both)")
    add_run_flags(parser, "device")
    parser.add_argument("--dtype", type=one_of(DTYPES), default="float32", help="float32 (default) or float64")
    add_run_flags(parser, "out")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help=f"most timed turns per contender and cell (default {DEFAULT_REPEATS}, "
                             f"{QUICK_REPEATS} with --quick); fewer when they would exceed the "
                             f"contender's share of --budget, but at least {MIN_REPEATS} unless this is "
                             "smaller")
    parser.add_argument("--budget", type=positive_float, default=None, metavar="SECONDS",
                        help=f"target timing seconds per cell, shared by the contenders (default "
                             f"{DEFAULT_BUDGET_S}, {QUICK_BUDGET_S} with --quick)")
    parser.add_argument("--stat", type=one_of(STATS), default="median",
                        help="statistic shown in the table and plot: median (default) or min (the "
                             "fastest turn: steadier on a machine shared with other work); the csv "
                             "and json hold both")
    parser.add_argument("--clock", type=one_of(CLOCKS), default="wall",
                        help="--preset transformer: wall (default) or cpu, the thread's CPU time, with "
                             "--threads 1 on the CPU (steadier on a machine that other processes load)")
    parser.add_argument("--max-mem-gb", type=positive_float, default=4.0, metavar="GB",
                        help="skip cells whose activations (B * max(n, L) * 10 elements) exceed this "
                             "(default 4)")
    parser.add_argument("--linear-max-gb", type=positive_float, default=2.0, metavar="GB",
                        help="skip nn.Linear when 3 * p * q values (weight, gradient, one more) "
                             "exceed this (default 2)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch.set_num_threads for the run (default: leave torch's setting)")
    parser.add_argument("--no-end-to-end", action="store_true",
                        help="skip the end-to-end row (the seed MLP's AdamW step at batch 128, DFT "
                             f"against dense; timed for {E2E_BUDGET_FACTOR} x --budget) and end_to_end.csv")
    parser.add_argument("--no-plot", action="store_true", help="do not write bench.png")
    add_run_flags(parser, "overwrite")


def _config_from_args(args: argparse.Namespace) -> dict:
    """The run's settings: the parsed flags, with --quick's defaults where a flag was not given."""
    quick = args.quick
    preset = getattr(args, "preset", "layers")
    if preset == "transformer" and (args.widths or args.batches or args.no_end_to_end):
        raise ValueError("--widths, --batches and --no-end-to-end do not apply to --preset transformer")
    if preset != "transformer" and (getattr(args, "dims", None) or getattr(args, "rows", None)
                                    or getattr(args, "blocks", None)):
        raise ValueError("--dims, --rows and --blocks need --preset transformer")
    clock = getattr(args, "clock", "wall")
    if clock != "wall" and (preset != "transformer" or args.threads != 1):
        raise ValueError("--clock cpu needs --preset transformer and --threads 1")
    cfg = {
        "preset": preset,
        "quick": quick,
        "widths": args.widths or parse_widths(QUICK_WIDTHS if quick else DEFAULT_WIDTHS),
        "batches": args.batches or list(QUICK_BATCHES if quick else DEFAULT_BATCHES),
        "modes": args.modes,
        "device": device(args.device),
        "dtype": DTYPES[args.dtype],
        "repeats": args.repeats or (QUICK_REPEATS if quick else DEFAULT_REPEATS),
        "budget": args.budget or (
            (QUICK_TRANSFORMER_BUDGET_S if quick else TRANSFORMER_BUDGET_S) if preset == "transformer"
            else (QUICK_BUDGET_S if quick else DEFAULT_BUDGET_S)),
        "max_mem_gb": args.max_mem_gb,
        "linear_max_gb": args.linear_max_gb,
        "threads": args.threads,
        "plot": not args.no_plot,
        "end_to_end": not args.no_end_to_end,
        "stat": args.stat,
        "clock": clock,
        "dims": getattr(args, "dims", None) or list(QUICK_DIMS if quick else TRANSFORMER_DIMS),
        "rows": getattr(args, "rows", None) or list(QUICK_ROWS if quick else TRANSFORMER_ROWS),
        "blocks": getattr(args, "blocks", None) or list(QUICK_BLOCKS if quick else BLOCK_SIZES),
    }
    out = args.out
    if out is None:
        out = Path("runs") / f"bench-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    elif not str(out).strip():
        raise ValueError(f"bad --out {out!r}: empty path")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"bad --out {str(out)!r}: exists and is not a directory")
    cfg["out"] = out
    return cfg


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed flags: print the table, write the outputs; returns 0.

    Flag values are checked by the parser (``configure_parser``); a bad ``--out`` raises ValueError
    before any timing, and so does (RunFolderError) a folder that holds outputs (without
    ``--overwrite``) or that a live run is writing. The folder stays locked until the outputs are written.
    """
    cfg = _config_from_args(args)
    with claim(cfg["out"], "bench", overwrite=getattr(args, "overwrite", False), command="dftnet bench"):
        return _run_transformer(cfg) if cfg["preset"] == "transformer" else _run(cfg)


def _run(cfg: dict) -> int:
    if cfg["threads"] is not None:
        torch.set_num_threads(cfg["threads"])
    device = cfg["device"]
    machine = machine_info(device)
    t_start = time.perf_counter()
    print(f"dftnet bench: {machine['device_name']} ({device}), {cfg['dtype']}, torch "
          f"{machine['torch_version']}, {machine['torch_threads']} threads, "
          f"{machine['cpu_count']} CPUs, load {machine.get('loadavg', ['?'])[0]}", flush=True)
    print(f"times: {cfg['stat']} ms per call; fwd under no_grad, fwd+bwd = forward + grads of input, weight, "
          "bias; floor = rfft+irfft of (B, L) x1 (fwd) or x2 (fwd+bwd) at DFTLinear's FFT length L; "
          "± = half the interquartile range of the turns over the median (of dftnet; of dft/floor from "
          "dftnet's q1..q3 over the floor's q3..q1)", flush=True)
    load = machine.get("loadavg", [0.0])[0]
    if device.type == "cpu" and load + machine["torch_threads"] > (machine["cpu_affinity"] or
                                                                  machine["cpu_count"] or 1) + 0.5:
        print(f"WARNING: load average {load:.1f} with {machine['torch_threads']} torch threads on "
              f"{machine['cpu_affinity'] or machine['cpu_count']} CPUs: other processes compete for "
              "the cores, and multi-threaded ops then stall (a thread waits to be scheduled); "
              "times will be noisy. " + ("Try --threads 1, or a quieter machine."
                                         if machine["torch_threads"] > 1 else "Use a quieter machine."),
              flush=True)
    print(table_header(), flush=True)
    rows = sweep(cfg["widths"], cfg["batches"], cfg["modes"], device=device, dtype=cfg["dtype"],
                 repeats=cfg["repeats"], budget=cfg["budget"], max_mem_gb=cfg["max_mem_gb"],
                 linear_max_gb=cfg["linear_max_gb"], callback=lambda r: print(format_row(r, cfg["stat"]), flush=True))
    overhead = format_overhead(rows, cfg["stat"])
    if overhead:
        print("\n" + overhead, flush=True)
    e2e = None
    if cfg["end_to_end"]:
        e2e = bench_end_to_end(E2E_WIDTHS, E2E_BATCH, device=device, dtype=cfg["dtype"],
                               repeats=cfg["repeats"], budget=E2E_BUDGET_FACTOR * cfg["budget"])
        print("\n" + format_end_to_end(e2e, cfg["stat"]), flush=True)
    elapsed = time.perf_counter() - t_start
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    config = {k: (str(v) if isinstance(v, (Path, torch.device, torch.dtype)) else v)
              for k, v in cfg.items()}
    config["widths"] = [list(w) for w in cfg["widths"]]
    config["elapsed_s"] = round(elapsed, 2)
    config["argv"] = sys.argv
    paths = write_outputs(rows, cfg["out"], {"machine": machine, "config": config},
                          make_plot=cfg["plot"], stat=cfg["stat"], end_to_end=e2e)
    bad = [r for r in rows if r.get("rel_err") is not None
           and r["rel_err"] > (1e-4 if cfg["dtype"] == torch.float32 else 1e-10)]
    for r in bad:
        print(f"WARNING: DFTLinear and the plain FFT layer disagree at {r['p']}x{r['q']} batch "
              f"{r['batch']}: relative error {r['rel_err']:.2e}", flush=True)
    n_skip = sum(1 for r in rows if r.get("skipped"))
    print(f"{len(rows) - n_skip} cells timed, {n_skip} skipped, in {elapsed:.1f} s; wrote "
          + ", ".join(str(p) for p in paths.values()), flush=True)
    return 0


def _run_transformer(cfg: dict) -> int:
    """The transformer preset (:mod:`dftnet.experiments.bench.transformer`): a line per row as cells
    finish, then the table; bench.csv and bench.json in the output folder."""
    if cfg["threads"] is not None:
        torch.set_num_threads(cfg["threads"])
    device = cfg["device"]
    machine = machine_info(device)
    c3a = c3a_operation() is not None
    dims, rows, blocks = cfg["dims"], cfg["rows"], cfg["blocks"]
    t_start = time.perf_counter()
    print(f"dftnet bench --preset transformer: {machine['device_name']} ({device}), {cfg['dtype']}, torch "
          f"{machine['torch_version']}, {machine['torch_threads']} threads, {machine['cpu_count']} CPUs, load "
          f"{machine.get('loadavg', [float('nan')])[0]:.1f}; PEFT's C3A "
          + ("included" if c3a else "left out (peft is not installed)"), flush=True)
    print(f"times: {cfg['stat']} ms per call ({cfg['clock']} clock); lin/layer = nn.Linear's time over the "
          "layer's (its speed-up); "
          "layer/floor = the layer's time over the transforms its FFT route must do; c3a/layer = PEFT's C3A "
          "op over the block layer", flush=True)
    result = transformer_sweep(dims, rows, cfg["modes"], blocks=blocks, device=device, dtype=cfg["dtype"],
                               repeats=cfg["repeats"], budget=cfg["budget"], max_mem_gb=cfg["max_mem_gb"], c3a=c3a,
                               clock=cfg["clock"],
                               callback=lambda r: print("  ".join(transformer_cells(r, cfg["stat"])), flush=True))
    print("\n" + format_transformer(result, cfg["stat"]), flush=True)
    elapsed = time.perf_counter() - t_start
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    config = {k: (str(v) if isinstance(v, (Path, torch.device, torch.dtype)) else v) for k, v in cfg.items()
              if k not in ("widths", "batches", "end_to_end", "plot")}
    config.update(c3a=c3a, elapsed_s=round(elapsed, 2), argv=sys.argv)
    paths = write_transformer(result, cfg["out"], {"machine": machine, "config": config})
    print(f"{len(result)} rows in {elapsed:.1f} s; wrote " + ", ".join(str(p) for p in paths.values()), flush=True)
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Stand-alone entry point (``python -m dftnet.experiments.bench``, ``benchmarks/bench.py``)."""
    parser = Parser(prog=prog or "dftnet bench")
    configure_parser(parser)
    try:
        args = parser.parse_args(argv)
        keep_freed_memory()
        return run(args)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    except (ValueError, RunFolderError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except WriteError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
