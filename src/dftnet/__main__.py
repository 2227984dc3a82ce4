"""``python -m dftnet``: the command line (also under torchrun)."""

from .cli import main

raise SystemExit(main())
