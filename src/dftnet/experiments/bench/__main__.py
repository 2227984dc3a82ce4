"""``python -m dftnet.experiments.bench``: the benchmark on its own."""

import sys

from .cli import main

sys.exit(main(prog="python -m dftnet.experiments.bench"))
