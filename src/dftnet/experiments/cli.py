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
import sys

from .argtypes import Parser, UsageError, positive_int
from .configflags import add_flags, add_run_flags, config_from
from .harness.distributed import launched_rank
from .harness.interrupt import exit_status, stopped_line

__all__ = ["main", "build_parser"]


def _add_train(sub) -> None:
    from .mnist.config import TrainConfig

    p = sub.add_parser("train", help="train DFT and dense MLPs side by side (the note's MNIST experiment)",
                       description="Train the original note's MNIST classifier: a DFT net and the dense net "
                                   "of the same widths, one after the other, and compare them.")
    add_flags(p, TrainConfig)
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from .mnist.train import TrainConfig, TrainingInterrupted, run

    return _run_job("train", run, config_from(TrainConfig, args), args.quiet, TrainingInterrupted)


def _run_job(command: str, run, cfg, quiet: bool, interrupted: type[BaseException]) -> int:
    """A training job (``train``, ``lm``): run it, turn an interrupt into its exit status, print the table
    when ``--quiet``. Under torchrun only rank 0 speaks."""
    log = (lambda *a, **k: None) if quiet else print
    main_rank = launched_rank() == 0
    try:
        summary = run(cfg, log=log)
    except interrupted as e:
        if main_rank:
            print(f"\n{stopped_line(e, command, e.path.parent.parent)}", file=sys.stderr)
        return exit_status(e.signum)
    if quiet and main_rank:
        print(summary["table"])
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="test accuracy and confusion matrix of a checkpoint")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a .pt checkpoint (best.pt, last.pt) or a model.safetensors export")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default=None,
                   help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-dir", metavar="DIR")
    add_run_flags(p, "device")
    p.add_argument("--limit", type=positive_int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from .mnist.evaluate import evaluate_checkpoint, format_confusion

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
    from .mnist import sweep

    p = sub.add_parser("sweep", help="train across widths (--W) or layer variants (--frontier); table + plot",
                       description=sweep.__doc__.splitlines()[0])
    sweep.configure_parser(p)
    p.set_defaults(func=sweep.run)


def _add_lm(sub) -> None:
    from .lm.config import LMConfig

    p = sub.add_parser("lm", help="dense, block-circulant and DFT MLPs in a small byte-level GPT (offline corpus)",
                       description="Train a small GPT on the bytes of this Python's standard library, once per "
                                   "MLP variant (same steps, data order and recipe), and compare them.")
    add_flags(p, LMConfig)
    p.set_defaults(func=_run_lm)


def _run_lm(args) -> int:
    from .lm.config import LMConfig
    from .lm.train import TrainingInterrupted, run

    return _run_job("lm", run, config_from(LMConfig, args), args.quiet, TrainingInterrupted)


def _add_study(sub) -> None:
    from .study import cli as study_cli
    from .study import plan as study

    p = sub.add_parser("study", help="equal-compute GPT study: MLP variants x sizes x budgets, frontier against dense",
                       description=study.__doc__.splitlines()[0])
    study_cli.configure_parser(p)
    p.set_defaults(func=study_cli.run)


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
    from .harness.allocator import keep_freed_memory
    from .harness.checkpoint import CheckpointError
    from .harness.errors import DataError
    from .harness.guard import EXIT_DIVERGED, EXIT_OUT_OF_MEMORY, OutOfMemory, TrainingDiverged
    from .harness.interrupt import Terminated, terminate_on_sigterm
    from .harness.preflight import MemoryRefused
    from .harness.reproduce import pin_numerics
    from .harness.runfolder import RunFolderError
    from .harness.writes import WriteError, write_error

    user_errors = (UsageError, ValueError, DataError, CheckpointError, RunFolderError, MemoryRefused,
                   PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)
    write_errnos = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    speak = launched_rank() == 0  # under torchrun only rank 0 prints the error
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
