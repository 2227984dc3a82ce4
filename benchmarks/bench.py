#!/usr/bin/env python
"""Speed benchmark of DFTLinear: the same code as ``dftnet bench`` (see ``dftnet.experiments.bench``).

    python benchmarks/bench.py --quick                 # ~15 s on a 2-core CPU
    python benchmarks/bench.py --widths 2^6..2^16,785,1009,4099 --batches 8,128
    python benchmarks/bench.py --help
"""

import sys

from dftnet.experiments import bench

if __name__ == "__main__":
    sys.exit(bench.main(prog="benchmarks/bench.py"))
