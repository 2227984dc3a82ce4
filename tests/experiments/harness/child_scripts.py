"""Programs the tests run in a child process (``python -c``)."""


def slow_checkpoint_cli(seconds: float) -> str:
    """The dftnet command line with ``os.replace`` patched to sleep ``seconds`` between writing (and
    fsync-ing) a checkpoint's temporary file and renaming it over the checkpoint: a wider window for a
    SIGKILL or a second process to hit."""
    return f"""import sys, time
import os
real_replace = os.replace
def slow_replace(src, dst, *args, **kwargs):
    if str(dst).endswith(".pt"):
        time.sleep({seconds})
    return real_replace(src, dst, *args, **kwargs)
os.replace = slow_replace
from dftnet.experiments.cli import main
raise SystemExit(main(sys.argv[1:]))
"""
