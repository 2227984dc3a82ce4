"""Command-line flags generated from the config dataclasses, so each setting is declared once.

A field made with :func:`option` carries its flag's help, type, metavar and choices; :func:`add_flags` turns
every such field of a config class into ``--field-name`` with the field's own default (shown in the help),
and :func:`config_from` builds the config from the parsed flags. Booleans become switches: ``--name`` for a
field that defaults to False, ``--no-name`` for one that defaults to True. The flags every training command
shares (seed, device, run folder, quiet, memory check) are declared here, once, by :func:`run_option`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import MISSING, Field, asdict, field, fields

from .argtypes import device_name

__all__ = ["option", "run_option", "add_flags", "add_run_flags", "config_from", "config_dict", "json_value", "HIDDEN"]

HIDDEN = argparse.SUPPRESS  # an option's help for a flag the --help text leaves out (tests, demos)


def option(default=MISSING, help: str = "", *, type: Callable | None = None, metavar: str | None = None,
           choices=None, show_default: bool = True, default_factory=MISSING) -> Field:
    """A dataclass field that is also a command-line flag."""
    meta = {"help": help, "type": type, "metavar": metavar, "choices": choices, "show_default": show_default}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"flag": meta})
    return field(default=default, metadata={"flag": meta})


_RUN_OPTIONS: dict[str, Callable[[], Field]] = {
    "seed": lambda: option(0, "random seed: initialisation, data order and augmentation", type=int),
    "device": lambda: option("auto", "cpu, cuda, cuda:N or auto (cuda when available)", type=device_name,
                             metavar="DEVICE"),
    "out": lambda: option(None, "output folder (default runs/<timestamp>-<command>)", metavar="DIR",
                          show_default=False),
    "resume": lambda: option(False, "continue from the last checkpoints in --out"),
    "overwrite": lambda: option(False, "replace the run that --out holds (its outputs are deleted first)"),
    "quiet": lambda: option(False, "no progress bars or per-epoch lines"),
    "memory_check": lambda: option(True, "the estimate of peak memory that refuses a run too big for the device"),
}


def run_option(name: str) -> Field:
    """One of the flags every training command shares, as a field of its config."""
    return _RUN_OPTIONS[name]()


def add_run_flags(parser: argparse.ArgumentParser, *names: str, **helps: str) -> None:
    """The shared flags ``names`` for a command without a config class (their help replaced by
    ``helps[name]`` where that command means something more specific)."""
    for name in names:
        f = _RUN_OPTIONS[name]()
        meta = f.metadata["flag"]
        _add_flag(parser, name, _default(f), {**meta, "help": helps.get(name, meta["help"])})


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default(f: Field):
    return f.default_factory() if f.default is MISSING else f.default


def add_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """``--name`` for every :func:`option` field of ``cls`` (except ``skip``), with the field's default."""
    for f in fields(cls):
        meta = f.metadata.get("flag")
        if meta is not None and f.name not in skip:
            _add_flag(parser, f.name, _default(f), meta)


def _add_flag(parser: argparse.ArgumentParser, dest: str, default, meta: dict) -> None:
    name = dest.replace("_", "-")
    help = meta["help"]
    if help is not HIDDEN and meta["show_default"] and not isinstance(default, bool) and default is not None:
        help = f"{help} (default {_shown(default)})" if help else f"(default {_shown(default)})"
    if isinstance(default, bool):
        what = "skip " + help if default and help is not HIDDEN else help
        parser.add_argument(f"--no-{name}" if default else f"--{name}", dest=dest,
                            action="store_false" if default else "store_true", help=what)
        return
    kwargs = {"default": default, "help": help, "metavar": meta["metavar"], "choices": meta["choices"]}
    if meta["type"] is not None:
        kwargs["type"] = meta["type"]
    parser.add_argument(f"--{name}", dest=dest, **kwargs)


def config_from(cls, args: argparse.Namespace, **extra):
    """``cls`` built from the parsed flags of its :func:`option` fields (and ``extra``)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if "flag" in f.metadata and hasattr(args, f.name)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**{**values, **extra})


def json_value(value):
    return [json_value(v) for v in value] if isinstance(value, (tuple, list)) else value


def config_dict(cfg) -> dict:
    """A config dataclass as plain JSON values (tuples as lists, nested too): what ``config.json`` and the
    checkpoints record."""
    return {k: json_value(v) for k, v in asdict(cfg).items()}
