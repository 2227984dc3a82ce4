"""Speed benchmark of :class:`dftnet.DFTLinear` (the package behind ``dftnet bench``).

In four parts: ``timing`` (interleaved turns, medians of repeats), ``cases`` (layer shapes, one timed
cell, the sweep), ``report`` (text table, machine description, bench.csv/json/png) and ``cli`` (flags
and the run).

For each layer shape (p -> q), batch B and mode ("fwd" under ``torch.no_grad``, or "fwd+bwd": forward
plus the gradients of the input, the weight and the bias) it times four contenders:

* ``dftnet``: ``dftnet.DFTLinear(p, q, diagonal=False)`` (the circulant product alone, as the plain layer computes it) with its automatic method; the row records the route it took
  (``dense``, or the FFT length L of :func:`dftnet.plan.make_plan`, circular when L == n);
* ``plain``: the textbook torch.fft layer, ``irfft(rfft(x, n).conj() * rfft(w, n), n)[..., :q] + b``,
  with autograd doing the backward;
* ``linear``: ``nn.Linear(p, q)`` (skipped when its weight would be too big: 3 p q bytes-per-element
  over ``linear_max_gb``);
* ``other``: the same layer forced onto the route ``dftnet`` did not take (``method="fft"`` where it
  chose the dense product, ``method="dense"`` where it chose the FFT), for layers of at most
  ``ROUTE_CHECK_MAX_ENTRIES`` matrix entries: ``auto_over_best`` = dftnet / min(dftnet, other) checks the
  automatic choice (1.00 when it picked the faster way);
* ``floor``: the FFTs that any FFT layer must do, at DFTLinear's length L: a real FFT and an inverse
  real FFT of shape (B, L) for the forward, twice that for forward+backward. ``floor_n`` is the same at
  length n, for reference (it is what ``plain`` must pay).

Timing: every contender is warmed up, then the contenders are run in turns (the starting one rotates),
each turn timing a group of calls long enough (~2 ms) to be above timer and scheduling noise, and the
median of the turns is reported (``*_ms``). Each contender gets an equal share of ``budget`` seconds
per cell: up to ``repeats`` turns, at least 3. Times are per call, in milliseconds; ``*_spread`` is the
interquartile range over the median, a noise indicator. The fastest turn is kept too (``*_min_ms``,
and ratios ``*_min``): on a machine shared with other work it is the estimate least disturbed by it,
and the table and plot can show it instead (``stat="min"``, ``--stat min``).

Python use::

    from dftnet.experiments import bench
    rows = bench.sweep([256, 1024, "785x300"], [8, 128])
    print(bench.format_table(rows))
    bench.write_outputs(rows, "runs/my-bench")      # bench.csv, bench.json, bench.png
"""

from .cases import (CONTENDERS, CSV_FIELDS, DEFAULT_BATCHES, DEFAULT_WIDTHS, DTYPES, MODES, bench_cell,
                    parse_widths, resolve_dtype, sweep)
from .cli import QUICK_BATCHES, QUICK_WIDTHS, configure_parser, main, run
from .report import STATS, format_row, format_table, machine_info, plot, table_header, write_outputs
from .timing import time_contenders

__all__ = [
    "MODES", "STATS", "CONTENDERS", "CSV_FIELDS", "DTYPES", "DEFAULT_WIDTHS", "DEFAULT_BATCHES", "QUICK_WIDTHS",
    "QUICK_BATCHES", "configure_parser", "run", "main", "sweep", "bench_cell", "time_contenders",
    "parse_widths", "resolve_dtype", "machine_info", "format_table", "format_row", "table_header",
    "write_outputs", "plot",
]
