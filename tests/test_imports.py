"""The core stands alone: ``import dftnet`` needs torch only, and the package declares nothing else."""

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the application's dependencies (the "experiments" extra) and the application itself
APPLICATION = ("matplotlib", "tqdm", "numpy", "safetensors", "zarr", "pureml", "dftnet.experiments")


@pytest.mark.subprocess
def test_import_dftnet_loads_nothing_of_the_application():
    code = ("import json, sys\n"
            "import torch\n"
            "before = set(sys.modules)\n"
            "import dftnet\n"
            "print(json.dumps({'before': sorted(before), 'added': sorted(set(sys.modules) - before),\n"
            "                  'file': dftnet.__file__}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    added = got["added"]
    assert "dftnet" in added
    for name in APPLICATION:
        if name == "numpy" and "numpy" in got["before"]:
            continue  # torch itself loaded it
        loaded = [m for m in added if m == name or m.startswith(name + ".")]
        assert not loaded, f"import dftnet ({got['file']}) loaded {loaded}"


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_pyproject_core_depends_on_torch_alone():
    project = _pyproject()["project"]
    assert project["dependencies"] == ["torch>=2.4,<2.14"]
    extras = project["optional-dependencies"]
    assert {"experiments", "test"} <= set(extras)
    assert project["scripts"]["dftnet"] == "dftnet.experiments.cli:main"


def test_installed_metadata_requires_torch_alone():
    try:
        dist = importlib.metadata.distribution("dftnet")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("dftnet is not installed")
    extras = set(dist.metadata.get_all("Provides-Extra") or [])
    if extras != set(_pyproject()["project"]["optional-dependencies"]):
        pytest.skip(f"installed metadata is stale or not from this tree (extras {sorted(extras)})")
    requires = importlib.metadata.requires("dftnet") or []
    core = [r for r in requires if "extra ==" not in r]
    names = [re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in core]
    assert names == ["torch"], requires


def test_one_version_and_type_marker():
    """The version has one source (``dftnet.__version__``, read by the build) and the package ships
    ``py.typed`` (PEP 561), so type checkers use its annotations."""
    import dftnet

    assert _pyproject()["project"]["dynamic"] == ["version"]
    assert (ROOT / "src" / "dftnet" / "py.typed").is_file()
    try:
        installed = importlib.metadata.version("dftnet")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("dftnet is not installed")
    if Path(dftnet.__file__).resolve().parent != ROOT / "src" / "dftnet":
        pytest.skip(f"the installed dftnet is not this tree ({dftnet.__file__})")
    assert installed == dftnet.__version__
