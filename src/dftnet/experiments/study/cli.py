"""``dftnet study``'s flags and job: the study (:mod:`.plan`), its resume, and its report. The README's and
docs/lm.md's study tables are redrawn from the committed folder by :mod:`.docblocks`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..configflags import add_run_flags
from ..harness.writes import atomic_path, write_text_atomic
from .plan import CELL_KEYS, QUICK, StudyConfig, config_dict, load_folder, run_study

__all__ = ["configure_parser", "run", "write_report"]


def _budgets(text: str) -> list[list[int]]:
    from ..argtypes import ArgumentValueError, comma_list, positive_int

    parts = [p for p in str(text).split("/")]
    try:
        return [comma_list(positive_int, "budget")(p) for p in parts]
    except ArgumentValueError as e:
        raise ArgumentValueError(f"--budgets: dense steps, comma-separated, one list per size separated by '/' "
                                 f"(e.g. 100,400,1600/100,400); {e}") from None


def configure_parser(p) -> None:
    from ..argtypes import comma_list, mlp_variant, positive_float, positive_int

    d = StudyConfig()
    shown = (lambda xs: ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in xs))
    p.add_argument("--quick", action="store_true",
                   help="a small grid through the same code (a few minutes on 2 cores; the tests use it)")
    p.add_argument("--sizes", type=comma_list(positive_int, "size"), metavar="D,D,...",
                   help=f"model widths d (default {shown(d.sizes)})")
    p.add_argument("--heads", type=comma_list(positive_int, "head count"), metavar="H,H,...",
                   help=f"attention heads, one per size (default {shown(d.heads)}; with --sizes alone, d/64)")
    p.add_argument("--budgets", type=_budgets, metavar="B,B/B,B",
                   help="budgets in dense's steps at each size, one comma list per size, '/' between sizes "
                        f"(default {'/'.join(shown(b) for b in d.budgets)})")
    p.add_argument("--variants", type=comma_list(mlp_variant, "variant"), metavar="dense,dft,...",
                   help=f"MLP variants, as in dftnet lm (default {shown(d.variants)})")
    variants = comma_list(mlp_variant, "variant")
    p.add_argument("--attn-variants", type=lambda t: [] if str(t).strip() == "none" else variants(t), metavar="dft,...",
                   help="variants also run with attention's projections structured (--structure mlp+attn) at "
                        f"the largest size (default {shown(d.attn_variants)}; 'none' for none)")
    p.add_argument("--lr-center", type=positive_float, help=f"the first rate search's centre (default {d.lr_center:g})")
    p.add_argument("--rates", type=positive_int, help=f"rates per search before widening (odd; default {d.rates})")
    p.add_argument("--seeds", type=positive_int, help=f"seeds at each best rate (default {d.seeds})")
    p.add_argument("--jobs", type=positive_int, help=f"cells trained side by side, one thread each (default {d.jobs})")
    add_run_flags(p, "out", "resume", resume="keep the finished cells in --out and train the rest")
    p.add_argument("--remeasure", type=comma_list(mlp_variant, "variant"), default=[], metavar="VARIANT,...",
                   help="with --resume: time these variants' steps again, beside dense, whose recorded time stays "
                        "the anchor of every budget (after a change to their layers; their cells whose step count "
                        "changes are trained again)")
    add_run_flags(p, "overwrite")
    p.add_argument("--report", metavar="PATH",
                   help="only redraw study.json, study.md and frontier.png from a study folder (finished or not) "
                        "or a study.json, into --out (default: its folder)")
    p.add_argument("--limit", type=positive_int, default=None, help=argparse.SUPPRESS)


def run(args) -> int:
    from datetime import datetime

    from ..harness.runfolder import claim, refuse_changed_config

    if args.report:
        return _redraw(Path(args.report), Path(args.out) if args.out else None)
    names = ("sizes", "heads", "budgets", "variants", "attn_variants", "lr_center", "rates", "seeds", "jobs", "limit")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.sizes is not None and args.heads is None:
        overrides["heads"] = tuple(max(1, d // 64) for d in args.sizes)
    cfg = StudyConfig(**{**(QUICK if args.quick else {}), **overrides})
    out = Path(args.out or Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-study")
    with claim(out, "study", resume=args.resume, overwrite=args.overwrite, command="dftnet study", log=print):
        if args.resume:  # finished cells are kept by name (size, arm, budget, steps, rate, seed): the rest must match
            refuse_changed_config(out, {"command": "study", **config_dict(cfg)}, CELL_KEYS)
        study = run_study(cfg, out, remeasure=tuple(args.remeasure))
    print("\n" + write_report(study, out) + " (and study.json, costs.json, cells/)")
    return 0


def write_report(study: dict, out: Path) -> str:
    from .report import plot_study, report_text

    text = report_text(study)
    write_text_atomic(out / "study.json", json.dumps(study) + "\n")
    write_text_atomic(out / "study.md", text)
    with atomic_path(out / "frontier.png") as tmp:
        plot_study(study, tmp)
    return text + f"\nwrote {out}/: study.json study.md frontier.png"


def _redraw(path: Path, out: Path | None) -> int:
    if path.is_dir():
        study = load_folder(path) if (path / "cells").is_dir() else json.loads((path / "study.json").read_text())
    elif path.is_file():
        study = json.loads(path.read_text())
    else:
        raise FileNotFoundError(f"--report: no study folder or study.json at {path}")
    folder = out or (path if path.is_dir() else path.parent)
    print(write_report(study, folder))
    return 0
