"""``python -m dftnet``: the command line of the experiments (also under torchrun)."""

from dftnet.experiments.cli import main

raise SystemExit(main())
