"""Same command, same result: the settings that make a ``dftnet`` run bit-reproducible on one machine, and
the record of what reproducing it needs.

On CPU, PyTorch's matrix products and FFTs are Intel MKL's. MKL picks a code path at run time and, with
conditional numerical reproducibility (CNR) off (its default), its results may depend on the code path and
on the alignment of the buffers, hence on a process's allocation history: the same command can then give
different bits. ``MKL_CBWR`` turns CNR on; MKL reads it once, at its first call, so :func:`pin_numerics`
sets it (unless the environment already does) before the command runs anything, and fixes the thread
count for MKL (``mkl_set_dynamic(0)``, through ``torch.set_num_threads``). Results still depend on the
thread count, the CPU, the torch build and the device: :func:`environment` records them in each run's
``config.json`` (docs/runs.md, "Reproducibility").
"""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

__all__ = ["MKL_MODE", "pin_numerics", "mkl_mode", "cpu_model", "environment", "changed_environment"]

# CNR with MKL's automatic code branch (the fastest this CPU has, chosen the same way in every process),
# strict: the matrix products' results independent of the buffers' alignment too. Measured against CNR off
# and COMPATIBLE in docs/runs.md, "Reproducibility": the same speed as off; COMPATIBLE is 2x slower.
MKL_MODE = "AUTO,STRICT"

# mkl_cbwr.h: the branch values mkl_cbwr_get returns, and the STRICT flag
_BRANCHES = {0: "OFF", 1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2",
             9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}
_STRICT = 0x10000


def pin_numerics() -> None:
    """Before the first MKL call of the process: CNR on (``MKL_CBWR``, unless set already) and a fixed
    thread count (the current one: ``OMP_NUM_THREADS`` or torch's default)."""
    os.environ.setdefault("MKL_CBWR", MKL_MODE)
    import torch

    torch.set_num_threads(torch.get_num_threads())  # also mkl_set_dynamic(0): MKL uses all of them


def mkl_mode() -> str:
    """The CNR mode MKL runs with in this process ("OFF", "AUTO", "COMPATIBLE", "AUTO,STRICT", ...), read from
    MKL itself; "n/a" for a torch build without MKL (or where it cannot be read)."""
    import torch

    if not torch.backends.mkl.is_available():
        return "n/a"
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / _torch_cpu_library()))
        get = lib.mkl_serv_cbwr_get  # what mkl_cbwr_get calls; libtorch links MKL in statically
    except (OSError, AttributeError):
        return "n/a"
    get.argtypes, get.restype = (ctypes.c_int,), ctypes.c_int
    value = get(-1)  # MKL_CBWR_ALL
    name = _BRANCHES.get(value & 0xFFFF, str(value & 0xFFFF))
    return name + (",STRICT" if value & _STRICT else "")


def _torch_cpu_library() -> str:
    system = platform.system()
    return {"Windows": "torch_cpu.dll", "Darwin": "libtorch_cpu.dylib"}.get(system, "libtorch_cpu.so")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device=None) -> dict:
    """What reproducing a run needs besides its flags: thread count, MKL's mode, torch, CPU (and GPU)."""
    import torch

    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "mkl_cbwr": mkl_mode(),
           "MKL_CBWR": os.environ.get("MKL_CBWR"), "cpu": cpu_model(), "python": platform.python_version()}
    if device is not None and torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def changed_environment(folder, now: dict) -> str | None:
    """For ``--resume``: a line naming what differs between the run's recorded environment (its
    ``config.json``) and ``now`` in what bit-exact resumption needs, or None when nothing does."""
    import json

    try:
        was = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    keys = ("threads", "mkl_cbwr", "cpu", "torch", "gpu")
    changed = [f"{k} {was[k]} -> {now.get(k)}" for k in keys if k in was and was[k] != now.get(k)]
    if not changed:
        return None
    return ("note: resuming with another " + ", ".join(changed) + " than the run started with; the resumed run "
            "differs from an uninterrupted one by rounding (docs/runs.md, Reproducibility)")
