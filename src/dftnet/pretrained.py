"""Save a converted Hugging Face model and load it back identical.

A converted model's checkpoint holds ``spectrum`` parameters where the architecture (rebuilt from
``config.json``) has ``nn.Linear`` weights, so ``from_pretrained`` alone cannot load it: it refuses with
a size mismatch, or with ``ignore_mismatched_sizes=True`` silently rebuilds those layers at random.
:func:`save_converted` writes, next to ``save_pretrained``'s files, a small ``dftnet.json`` that records
what was converted; :func:`load_converted` rebuilds the model from its config, converts exactly those
modules the same way, and loads every saved tensor strictly (an error names anything missing).

transformers and safetensors are imported only when these functions run: ``import dftnet`` needs torch alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .convert import ConversionReport, convert

__all__ = ["save_converted", "load_converted", "RECORD"]

RECORD = "dftnet.json"


def save_converted(model: nn.Module, directory, report: ConversionReport, **save_kwargs) -> None:
    """``model.save_pretrained(directory)`` plus ``dftnet.json`` describing the conversion ``report``."""
    if not report:
        raise ValueError("save_converted: the report lists no converted module; use save_pretrained")
    directory = Path(directory)
    model.save_pretrained(directory, **save_kwargs)  # type: ignore[operator]  # a Hugging Face model
    layers = {}
    for r in report:
        module = model.get_submodule(r["name"])
        layers[r["name"]] = {
            "layer": r["layer"], "in_features": r["in_features"], "out_features": r["out_features"],
            "block_size": r["block_size"], "sign_flip": getattr(module, "sign", None) is not None,
            "diagonal": getattr(module, "diagonal", None) is not None,
        }
    record = {"format": 1, "dftnet_version": _version(), "model_class": type(model).__name__, "layers": layers}
    (directory / RECORD).write_text(json.dumps(record, indent=1))


def load_converted(model_class, directory, **config_kwargs) -> nn.Module:
    """Rebuild ``model_class`` (e.g. ``LlamaForCausalLM``) from ``directory``'s config, convert the modules
    that ``dftnet.json`` lists, and load the saved weights; raises if anything does not match."""
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / RECORD
    if not path.is_file():
        raise FileNotFoundError(f"load_converted: {path} not found; was the model saved with save_converted?")
    record = json.loads(path.read_text())
    config = model_class.config_class.from_pretrained(directory, **config_kwargs)
    model = model_class(config)

    groups: dict[tuple, list[str]] = {}
    for name, spec in record["layers"].items():
        key = (spec["layer"], spec["block_size"] if spec["layer"] == "block" else None, spec["sign_flip"],
               spec["diagonal"])
        groups.setdefault(key, []).append(name)
    for (layer, block_size, sign_flip, diagonal), names in groups.items():
        wanted = set(names)
        done = convert(model, layer, block_size, min_features=1, filter_fn=_named(wanted),
                       sign_flip=sign_flip, convert_head=True)
        if {r["name"] for r in done} != wanted:
            missing = sorted(wanted - {r["name"] for r in done})
            raise ValueError(f"load_converted: could not convert {missing} in a fresh {model_class.__name__}")
        for name in names:
            module = model.get_submodule(name)
            if (module.diagonal is not None) != diagonal:
                module.register_parameter("diagonal", nn.Parameter(torch.ones(module.in_features))
                                          if diagonal else None)
    state = {}
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]
    for file in files:
        state.update(load_file(str(directory / file)))
    result = model.load_state_dict(state, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    loaded = {p.data_ptr() for k, p in model.state_dict().items() if k in state}
    untied = [k for k in result.missing_keys if model.state_dict()[k].data_ptr() not in loaded]
    if result.unexpected_keys or untied:
        raise ValueError(f"load_converted: saved weights do not match the converted model: missing {untied}, "
                         f"unexpected {result.unexpected_keys}")
    return model.eval()


def _version() -> str:
    from . import __version__

    return __version__


def _named(names: set[str]) -> Callable[[nn.Module, str], bool]:
    """A ``convert`` filter that keeps the modules of these qualified names."""
    return lambda module, name: name in names
