"""The results tables of the README and docs/, drawn from the committed data in ``docs/results/``.

Each table sits between ``<!-- NAME -->`` and ``<!-- /NAME -->`` in a Markdown file and is redrawn from
its data by one command, which also says which blocks were stale; a test runs the check, so a shown
number cannot drift from the data::

    python -m dftnet.experiments.docblocks           # redraw every block
    python -m dftnet.experiments.docblocks --check   # list stale blocks, exit 1 if any
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["BLOCKS", "render", "update", "main"]

ROOT = Path(__file__).resolve().parents[3]


def _rows(root: Path, name: str) -> list[dict]:
    with open(root / "docs" / "results" / name, newline="") as f:
        return list(csv.DictReader(f))


def _params(layer: str) -> int:
    from .mnist.models import SEED_WIDTHS, build_model

    return sum(p.numel() for p in build_model(layer, SEED_WIDTHS).parameters())


def mnist_table(root: Path) -> str:
    """The default recipe's MNIST runs (lever ``DEFAULT_LEVER`` of mnist_recipe.csv), both nets, by seed."""
    rows = [r for r in _rows(root, "mnist_recipe.csv") if r["lever"] == DEFAULT_LEVER and r["dataset"] == "mnist"]
    dense_params = _params("dense")
    out = ["| net | parameters | test acc, seeds " + " / ".join(sorted({r["seed"] for r in rows})) + " | median |",
           "|---|---:|---:|---:|"]
    medians = {}
    for net in ("dft", "dense"):
        accs = [float(r["test_acc"]) for r in sorted(rows, key=lambda r: int(r["seed"])) if r["net"] == net]
        medians[net] = statistics.median(accs)
        params = _params(net)
        shown = f"{params:,}" + (f" ({dense_params / _params('dft'):.0f}×)" if net == "dense" else "")
        by_seed = " / ".join(f"{100 * a:.2f}" for a in accs)
        out.append(f"| {net} | {shown} | {by_seed}% | {100 * medians[net]:.2f}% |")
    out.append("")
    out.append(f"Gap between the medians: {100 * (medians['dense'] - medians['dft']):.2f} points.")
    return "\n".join(out) + "\n"


def width_table(root: Path) -> str:
    """The width sweep at the default recipe (width_sweep.csv): one row per width, by seed."""
    rows = [r for r in _rows(root, "width_sweep.csv") if r["dataset"] == "mnist" and r["variant"] == "dft"]
    out = ["| W | DFT params | dense params | MNIST test acc (seed 0) |", "|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: int(r["W"])):
        dense = int(r["dense_parameters"])
        shown = f"{dense / 1e6:.1f} M" if dense < 1e8 else f"{dense / 1e6:.0f} M"
        out.append(f"| {r['W']} | {int(r['parameters']):,} | {shown} | {100 * float(r['test_acc']):.2f}% |")
    return "\n".join(out) + "\n"


def _study(root: Path) -> dict | None:
    from .study.plan import load_folder

    folder = root / "docs" / "results" / "lm_study"
    return load_folder(folder) if (folder / "costs.json").is_file() else None


NO_STUDY = "(no study cell is committed yet)\n"


def study_headline(root: Path) -> str:
    from .study.report import headline_text

    study = _study(root)
    return headline_text(study) if study else NO_STUDY


def study_answer(root: Path) -> str:
    from .study.report import answer_text

    study = _study(root)
    return answer_text(study) if study else NO_STUDY


def study_full(root: Path) -> str:
    from .study.report import report_text

    study = _study(root)
    return report_text(study) if study else NO_STUDY


def _x(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def transformer_table(root: Path) -> str:
    """``dftnet bench --preset transformer`` at 1 thread (docs/results/bench_transformer/*/bench.json): per
    (shape, rows, mode) nn.Linear's time and each layer's speed-up over it (its route) and time over its floor."""
    import json

    rows, machine = [], {}
    for path in sorted((root / "docs" / "results" / "bench_transformer").glob("*/bench.json")):
        doc = json.loads(path.read_text())
        machine = doc.get("machine", machine)
        rows += [r for r in doc["rows"] if not r.get("skipped")]
    cells: dict[tuple, dict] = {}
    for r in rows:
        key = (r["p"], r["q"], r["rows"], r["mode"])
        cells.setdefault(key, {})[r["layer"]] = r
    kinds = {n for c in cells.values() for n in c}
    names = ["dft"] + sorted(kinds - {"dft"}, key=lambda n: (n.startswith("c3a"), int(n.split("-")[1])))
    head = ["shape", "rows", "mode", "nn.Linear ms"] + [
        f"{n.replace('c3a', 'C3A')} ×lin" if n.startswith("c3a") else f"{n} ×lin (route) / ×floor" for n in names]
    out = ["| " + " | ".join(head) + " |", "|---|---:|---|---:|" + "---:|" * len(names)]
    order = sorted(cells, key=lambda k: (max(k[0], k[1]), k[2], k[0] > k[1], k[3]))
    for key in order:
        c = cells[key]
        linear = next(iter(c.values()))["linear_ms"]
        row = [f"{key[0]}→{key[1]}", f"{key[2]:,}", key[3], f"{linear:.1f}"]
        for n in names:
            r = c.get(n)
            if r is None:
                row.append("–")
            elif n.startswith("c3a"):  # PEFT's op: no route, no floor of its own
                row.append(_x(r["linear_over_layer"]))
            else:
                row.append(f"{_x(r['linear_over_layer'])} ({r['route']}) / {_x(r['layer_over_floor'])}")
        out.append("| " + " | ".join(row) + " |")
    out += ["", f"{machine.get('cpu_name', '?')} ({machine.get('cpu_capability', '?')}), torch "
            f"{machine.get('torch_version', '?')}, {machine.get('torch_threads', '?')} thread, float32; medians of "
            "interleaved turns of thread CPU time (`--clock cpu`)."]
    return "\n".join(out) + "\n"


def _runs(values: list[float]) -> str:
    import statistics

    if len(values) == 1:
        return _x(values[0])
    return f"{_x(statistics.median(values))} [{_x(min(values))}–{_x(max(values))}]"


def quiet_table(root: Path) -> str:
    """fwd+bwd at 1,024 rows on an idle machine (docs/results/quiet/): each layer's speed-up over nn.Linear
    at 1 and 2 threads, median [range] over runs of ``benchmarks/block_routes.py --preset transformer``
    (block layers) and ``dftnet bench --preset transformer`` (DFTLinear, also its time over its floor)."""
    import json

    quiet = root / "docs" / "results" / "quiet"
    speed: dict[tuple, list[float]] = {}
    floor: dict[tuple, list[float]] = {}
    for path in sorted(quiet.glob("block_transformer_t*_r*.json")):
        for r in json.loads(path.read_text()):
            if r["mode"] == "fwd+bwd":
                speed.setdefault((r["p"], r["q"], r["k"], r["threads"]), []).append(r["speedup"])
    shapes = sorted({k[:2] for k in speed}, key=lambda s: (max(s), s[0] > s[1]))
    for path in sorted(quiet.glob("bench_t*_r*/bench.json")):
        doc = json.loads(path.read_text())
        for r in doc["rows"]:
            if r["mode"] == "fwd+bwd" and r["layer"] == "dft" and (r["p"], r["q"]) in shapes:
                key = (r["p"], r["q"], 0, doc["machine"]["torch_threads"])
                speed.setdefault(key, []).append(r["linear_over_layer"])
                floor.setdefault(key, []).append(r["layer_over_floor"])
    out = ["| shape | layer | 1 thread: ×nn.Linear | 2 threads: ×nn.Linear | DFTLinear ×floor (1 / 2 threads) |",
           "|---|---|---:|---:|---:|"]
    for p, q in shapes:
        for k in sorted({key[2] for key in speed if key[:2] == (p, q)}):
            cell = [speed.get((p, q, k, t)) for t in (1, 2)]
            floors = " / ".join(_runs(floor[(p, q, k, t)]) for t in (1, 2) if (p, q, k, t) in floor) or "–"
            out.append(f"| {p}→{q} | {'DFTLinear' if k == 0 else f'block-{k}'} | "
                       + " | ".join(_runs(c) if c else "–" for c in cell) + f" | {floors} |")
    return "\n".join(out) + "\n"


def gpt_step_table(root: Path) -> str:
    """The GPT's training step at d = 512 (the study's configuration, 1 thread) on an idle machine: per
    variant, its time and peak memory against dense's in the same run, median [range] over runs
    (docs/results/quiet/gpt_step_d512_r*.json, written by :func:`.study.cost.measure_costs`)."""
    import json

    ratios: dict[str, list[float]] = {}
    memory: dict[str, list[float]] = {}
    for path in sorted((root / "docs" / "results" / "quiet").glob("gpt_step_d512_r*.json")):
        costs = json.loads(path.read_text())
        dense = costs["dense@d512"]
        for key, c in costs.items():
            if key != "machine" and key != "dense@d512":
                ratios.setdefault(key, []).append(c["seconds"] / dense["seconds"])
                memory.setdefault(key, []).append(c["peak_memory_bytes"] / dense["peak_memory_bytes"])
    out = ["| MLP variant (structure) | step time vs dense | peak memory vs dense |", "|---|---:|---:|"]
    for key in ratios:
        name = key.split("@")[0].replace("+attn", " (mlp+attn)")
        out.append(f"| {name} | {_runs(ratios[key])} | {_runs(memory[key])} |")
    return "\n".join(out) + "\n"


DEFAULT_LEVER = "shift1-lr6e-3-ep10"  # the mnist_recipe.csv rows made with dftnet train's defaults

# block name -> (the files it appears in, what draws it)
BLOCKS: dict[str, tuple[tuple[str, ...], Callable[[Path], str]]] = {
    "mnist:default": (("README.md",), mnist_table),
    "width:default": (("README.md", "docs/training.md"), width_table),
    "study:headline": (("README.md",), study_headline),
    "study:answer": (("README.md",), study_answer),
    "study:full": (("docs/lm.md",), study_full),
    "bench:transformer": (("README.md", "docs/performance.md"), transformer_table),
    "bench:quiet": (("docs/performance.md",), quiet_table),
    "bench:quiet-gpt": (("docs/performance.md",), gpt_step_table),
}


def render(root: Path = ROOT) -> dict[str, str]:
    return {name: draw(root) for name, (_, draw) in BLOCKS.items()}


def update(root: Path = ROOT, check: bool = False, only: tuple[str, ...] | None = None) -> list[str]:
    """Redraw the blocks (``only`` these names, if given) in their files under ``root``; with ``check``,
    change nothing. Returns the stale ones as ``file: block``."""
    from .harness.writes import write_text_atomic

    names = [n for n in BLOCKS if only is None or n in only]
    bodies = {n: BLOCKS[n][1](root) for n in names}
    stale = []
    for rel in sorted({f for n in names for f in BLOCKS[n][0]}):
        path = root / rel
        text = new = path.read_text()
        for name in names:
            if rel not in BLOCKS[name][0]:
                continue
            pattern = re.compile(rf"(<!-- {re.escape(name)} -->\n)(.*?)(<!-- /{re.escape(name)} -->)", re.S)
            if not pattern.search(new):
                raise ValueError(f"{rel}: no block <!-- {name} --> ... <!-- /{name} -->")
            updated = pattern.sub(lambda m, body=bodies[name]: m.group(1) + body + m.group(3), new)
            if updated != new:
                stale.append(f"{rel}: {name}")
            new = updated
        if new != text and not check:
            write_text_atomic(path, new)
    return stale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dftnet.experiments.docblocks", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="change nothing; list the stale blocks, exit 1 if any")
    p.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this checkout)")
    args = p.parse_args(argv)
    stale = update(args.root, check=args.check)
    for s in stale:
        print(("stale: " if args.check else "redrew: ") + s)
    if not stale:
        print("every block is current")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
