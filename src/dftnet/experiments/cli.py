"""The ``dftnet`` command line: ``train``, ``eval``, ``sweep``, ``bench``, ``lm``, ``study``.

User mistakes (bad flags, missing data, unusable files, an --out folder that holds another run or
that a live run is writing) end with exit status 2 and one line on stderr; a failed write (disk full,
permission denied, read-only file system, a file in the way) with exit status 1 and one line.
Long runs (docs/runs.md): a run refused by the memory estimate exits 2; memory running out during a
step 1; a diverged run (non-finite loss or gradient norm) 3; Ctrl-C 130 and SIGTERM 143, each after a
resumable checkpoint. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from .argtypes import (Parser, UsageError, comma_list, mlp_variant, mlp_widths, nonneg_float, nonneg_int,
                       positive_float, positive_int, train_layer)
from .interrupt import exit_status, stopped_line

__all__ = ["main", "build_parser"]


def _add_run_flags(p: argparse.ArgumentParser, default_out: str) -> None:
    """The flags every training command shares: seed, device and its run folder (--out, --resume, --overwrite)."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", metavar="DIR", help=f"output folder (default {default_out})")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoints in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run that --out holds (its outputs are deleted first)")
    p.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                   help="skip the estimate of peak memory that refuses a run too big for the device")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train DFT and dense MLPs side by side (the note's MNIST experiment)",
                       description="Train the original note's MNIST classifier: a DFT net and the dense net "
                                   "of the same widths, one after the other, and compare them.")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the four IDX files (raw or .gz)")
    p.add_argument("--layer", type=train_layer, default="both", metavar="{dft,dense,both,dft-sign,block-K}",
                   help="which net(s): both = dft then dense (default); also dft-sign, block-32, ...")
    p.add_argument("--widths", type=mlp_widths, default=None, metavar="784,4096,...",
                   help="layer widths, input first (default 784,4096,1024,256,64,10)")
    p.add_argument("--epochs", type=positive_int, default=10,
                   help="(default 10: both nets in under 6 min on 2 cores)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate of the one-cycle schedule (default: 6e-3 DFT, 1e-3 dense)")
    p.add_argument("--weight-decay", type=nonneg_float, default=1e-2,
                   help="AdamW weight decay (default 0.01, torch.optim.AdamW's own)")
    p.add_argument("--label-smoothing", type=nonneg_float, default=0.1, help="(default 0.1)")
    p.add_argument("--shift", type=nonneg_int, default=1, metavar="PIXELS",
                   help="shift each training image by a random 0..PIXELS pixels per axis, anew each epoch "
                        "(default 1; 0: no augmentation)")
    p.add_argument("--dropout", type=nonneg_float, default=0.0, metavar="P",
                   help="dropout on each hidden layer's output, in [0, 1) (default 0)")
    _add_run_flags(p, "runs/<timestamp>-<dataset>")
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop each net after this many steps")
    p.add_argument("--checkpoint-every", type=nonneg_int, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS steps (default: at epoch ends)")
    p.add_argument("--limit", type=positive_int, default=None, help="use at most this many training images")
    p.add_argument("--recompute-spectrum", action="store_true",
                   help="DFT layers keep only their input for backward (less memory, one more FFT)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from .models import SEED_WIDTHS
    from .train import TrainConfig, TrainingInterrupted, run

    cfg = TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, layer=args.layer,
        widths=args.widths or SEED_WIDTHS, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, shift=args.shift, dropout=args.dropout, seed=args.seed, device=args.device, out=args.out,
        resume=args.resume, overwrite=args.overwrite, max_steps=args.max_steps, quiet=args.quiet, limit=args.limit,
        recompute_spectrum=args.recompute_spectrum, checkpoint_every=args.checkpoint_every,
        memory_check=args.memory_check,
    )
    log = (lambda *a, **k: None) if args.quiet else print
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 speaks
    try:
        summary = run(cfg, log=log)
    except TrainingInterrupted as e:
        if main_rank:
            print(f"\n{stopped_line(e, 'train', e.path.parent.parent)}", file=sys.stderr)
        return exit_status(e.signum)
    if args.quiet and main_rank:
        print(summary["table"])
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="test accuracy and confusion matrix of a checkpoint")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a .pt checkpoint (best.pt, last.pt) or a model.safetensors export")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default=None,
                   help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--limit", type=positive_int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from .evaluate import evaluate_checkpoint, format_confusion

    result = evaluate_checkpoint(args.checkpoint, args.dataset, args.data_dir, args.device, args.limit)
    print(f"{result['checkpoint']}: {result['model']} on {result['dataset']} test set "
          f"({result['examples']} images)")
    print(f"test accuracy {result['accuracy']:.2%}   test loss {result['loss']:.4f}\n")
    print(format_confusion(result["confusion"], result["class_names"]))
    return 0


def _add_bench(sub) -> None:
    from . import bench

    p = sub.add_parser("bench", help="time DFTLinear against nn.Linear, a plain torch.fft version and the FFT floor")
    bench.configure_parser(p)
    p.set_defaults(func=bench.run)


def _add_sweep(sub) -> None:
    from . import sweep

    p = sub.add_parser("sweep", help="train across widths (--W) or layer variants (--frontier); table + plot",
                       description=sweep.__doc__.splitlines()[0])
    sweep.configure_parser(p)
    p.set_defaults(func=sweep.run)


def _add_lm(sub) -> None:
    p = sub.add_parser("lm", help="dense, block-circulant and DFT MLPs in a small byte-level GPT (offline corpus)",
                       description="Train a small GPT on the bytes of this Python's standard library, once per "
                                   "MLP variant (same steps, data order and recipe), and compare them.")
    p.add_argument("--variants", type=comma_list(mlp_variant, "variant"), default=["dense", "block-16", "dft"],
                   metavar="dense,block-16,dft", help="MLP layers, comma-separated: dense, dft, block-K "
                   "(and dft-sign, block-K-sign), lowrank-K (rank d/K), monarch-B (B blocks); NAME@R gives a "
                   "variant its own MLP ratio R; default dense,block-16,dft")
    p.add_argument("--d-model", type=positive_int, default=128, help="width d; the MLP is d -> R*d -> d (default 128)")
    p.add_argument("--mlp-ratio", type=positive_int, default=4, metavar="R",
                   help="the MLP's width as a multiple of d, for variants without @R (default 4)")
    p.add_argument("--layers", type=positive_int, default=4, help="(default 4)")
    p.add_argument("--heads", type=positive_int, default=4, help="(default 4)")
    p.add_argument("--context", type=positive_int, default=128, help="bytes per sequence (default 128)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="sequences per step, global (default 32)")
    p.add_argument("--max-steps", type=positive_int, default=400,
                   help="steps per variant (default 400: three variants in under 10 min on 2 cores)")
    p.add_argument("--lr", type=positive_float, default=2e-3,
                   help="peak AdamW learning rate, warmup then cosine, the same for every variant (default 2e-3)")
    p.add_argument("--eval-every", type=positive_int, default=40, metavar="STEPS",
                   help="validation bits per byte every STEPS steps (default 40)")
    _add_run_flags(p, "runs/<timestamp>-lm")
    p.add_argument("--quiet", action="store_true", help="no progress bar or validation lines")
    p.add_argument("--limit", type=positive_int, default=None, help=argparse.SUPPRESS)  # bytes per stream (tests)
    p.set_defaults(func=_run_lm)


def _run_lm(args) -> int:
    from .lm import LMConfig, TrainingInterrupted, run

    cfg = LMConfig(variants=tuple(args.variants), d_model=args.d_model, mlp_ratio=args.mlp_ratio,
                   layers=args.layers, heads=args.heads,
                   context=args.context, batch_size=args.batch_size, max_steps=args.max_steps, lr=args.lr,
                   seed=args.seed, device=args.device, out=args.out, resume=args.resume,
                   overwrite=args.overwrite, quiet=args.quiet, eval_every=args.eval_every, limit=args.limit,
                   memory_check=args.memory_check)
    log = (lambda *a, **k: None) if args.quiet else print
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        summary = run(cfg, log=log)
    except TrainingInterrupted as e:
        if main_rank:
            print(f"\n{stopped_line(e, 'lm', e.path.parent.parent)}", file=sys.stderr)
        return exit_status(e.signum)
    if args.quiet and main_rank:
        print(summary["table"])
    return 0


def _add_study(sub) -> None:
    from . import study

    p = sub.add_parser("study", help="compute-matched GPT study: MLP variants x sizes, frontier against dense",
                       description=study.__doc__.splitlines()[0])
    study.configure_parser(p)
    p.set_defaults(func=study.run)


def build_parser() -> argparse.ArgumentParser:
    from dftnet import __version__

    parser = Parser(prog="dftnet", description="DFTnet: circulant dense layers computed with the FFT.")
    parser.add_argument("--version", action="version", version=f"dftnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _add_train(sub)
    _add_eval(sub)
    _add_sweep(sub)
    _add_bench(sub)
    _add_lm(sub)
    _add_study(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    from . import EXTRA_HINT, missing_dependencies

    missing = missing_dependencies()
    if missing:  # the core is installed without the application's extra
        print(f"dftnet: the experiments need {', '.join(missing)}: {EXTRA_HINT}", file=sys.stderr)
        return 2
    from .allocator import keep_freed_memory
    from .reproduce import pin_numerics
    from .checkpoint import CheckpointError
    from .data import DataError
    from .guard import EXIT_DIVERGED, EXIT_OUT_OF_MEMORY, OutOfMemory, TrainingDiverged
    from .interrupt import Terminated, terminate_on_sigterm
    from .preflight import MemoryRefused
    from .runfolder import RunFolderError
    from .writes import WriteError, write_error

    user_errors = (UsageError, ValueError, DataError, CheckpointError, RunFolderError, MemoryRefused,
                   PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)
    write_errnos = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    speak = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 prints the error
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        pin_numerics()  # before the first MKL call: same command, same bits (docs/runs.md, "Reproducibility")
        keep_freed_memory()
        with terminate_on_sigterm():
            return int(args.func(args) or 0)
    except (TrainingDiverged, OutOfMemory) as e:
        if debug:
            raise
        if speak:
            print(f"dftnet: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED if isinstance(e, TrainingDiverged) else EXIT_OUT_OF_MEMORY
    except WriteError as e:
        if debug:
            raise
        if speak:
            print(f"dftnet: error: {e}", file=sys.stderr)
        return 1
    except user_errors as e:
        if debug:
            raise
        prefix = "" if isinstance(e, UsageError) else "dftnet: error: "
        if speak:
            print(f"{prefix}{e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write that no writer turned into a WriteError
        if debug or e.errno not in write_errnos:
            raise
        if speak:
            print(f"dftnet: error: {write_error(e.filename or '?', e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Terminated:
        if debug:
            raise
        if speak:
            print("\ndftnet: terminated (SIGTERM) outside the training steps; the checkpoints written so far "
                  "are whole (--resume continues a run)", file=sys.stderr)
        return 143


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
