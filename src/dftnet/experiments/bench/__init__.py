"""Speed benchmark of :class:`dftnet.DFTLinear` (the package behind ``dftnet bench``).

In six parts: ``timing`` (interleaved turns, medians of repeats), ``cases`` (layer shapes, one timed
cell, the sweep), ``end_to_end`` (the seed net's training step, DFT against dense), ``report`` (text
table, overhead section, machine description, bench.csv/json/png, end_to_end.csv), ``transformer``
(``--preset transformer``: a transformer MLP's shapes, DFTLinear and BlockDFTLinear against nn.Linear,
their FFT floors and PEFT's C3A op) and ``cli`` (flags and the run).

For each layer shape (p -> q), batch B and mode ("fwd" under ``torch.no_grad``, or "fwd+bwd": forward
plus the gradients of the input, the weight and the bias) it times four contenders:

* ``dftnet``: ``dftnet.DFTLinear(p, q, diagonal=False)`` (the circulant product alone, as the plain layer
  computes it) with its automatic method; the row records the route it took (``dense``, or the FFT
  length L of :func:`dftnet.plan.make_plan`, circular when L == n);
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
per cell: up to ``repeats`` turns, at least 3. Times are per call, in milliseconds; ``*_q1_ms`` and
``*_q3_ms`` are the quartiles of the turns and ``*_spread`` the interquartile range over the median, a
noise indicator (``dftnet_over_floor_spread``: the width of dftnet's q1..q3 over the floor's q3..q1,
over the ratio). The fastest turn is kept too (``*_min_ms``, and ratios ``*_min``): on a machine
shared with other work it is the estimate least disturbed by it, and the table and plot can show it
instead (``stat="min"``, ``--stat min``). The table shows ``±`` half the spread next to dftnet and
dft/floor; the plot shades each contender's q1..q3.

Per-call overhead: every row has ``overhead_us`` = dftnet - floor in microseconds (from the medians;
``overhead_min_us`` from the fastest turns; ``overhead_lo_us .. overhead_hi_us`` = dftnet's q1..q3
less the floor's q3..q1). At batch 1 it is DFTLinear's fixed cost per call; the run prints those cells
in a section after the table (:func:`format_overhead`).

End to end (:func:`bench_end_to_end`, skipped by ``--no-end-to-end``): one AdamW training step of the
seed MLP 784-4096-1024-256-64-10 at batch 128, ``layer="dft"`` against ``layer="dense"``, with the DFT
net's floor (its layers' floors: FFTs on the FFT route, nn.Linear fwd+bwd on the dense route) and its
optimizer step alone; ratios ``dense_over_dft``, ``dft_over_floor``, ``dft_over_floor_opt`` (= dft /
(floor + optimizer)). Printed after the overhead section, written as one row to end_to_end.csv
(columns ``E2E_FIELDS``) and under the key "end_to_end" of bench.json (with each layer's route).

Python use::

    from dftnet.experiments import bench
    rows = bench.sweep([256, 1024, "785x300"], [8, 128])
    print(bench.format_table(rows))
    print(bench.format_overhead(rows))              # batch-1 cells: dftnet - floor in µs
    e2e = bench.bench_end_to_end(device="cpu")      # the seed net's training step, DFT vs dense
    print(bench.format_end_to_end(e2e))
    bench.write_outputs(rows, "runs/my-bench", end_to_end=e2e)  # bench.csv/json/png, end_to_end.csv
"""

from .cases import CONTENDERS, bench_cell, sweep
from .cli import QUICK_BATCHES, QUICK_WIDTHS, configure_parser, main, run
from .end_to_end import E2E_FIELDS, bench_end_to_end, format_end_to_end
from .grid import CSV_FIELDS, DEFAULT_BATCHES, DEFAULT_WIDTHS, DTYPES, MODES, parse_widths, resolve_dtype
from .report import STATS, format_overhead, format_row, format_table, machine_info, plot, table_header, write_outputs
from .timing import CLOCKS, ratio_spread, time_contenders
from .transformer import TRANSFORMER_FIELDS, format_transformer, mlp_shapes, transformer_cell, transformer_sweep

__all__ = [
    "MODES", "STATS", "CONTENDERS", "CSV_FIELDS", "DTYPES", "DEFAULT_WIDTHS", "DEFAULT_BATCHES", "QUICK_WIDTHS",
    "QUICK_BATCHES", "E2E_FIELDS", "configure_parser", "run", "main", "sweep", "bench_cell",
    "bench_end_to_end", "time_contenders", "ratio_spread", "parse_widths", "resolve_dtype", "machine_info",
    "format_table", "format_row", "format_overhead", "format_end_to_end", "table_header", "write_outputs",
    "plot", "CLOCKS", "TRANSFORMER_FIELDS", "format_transformer", "mlp_shapes", "transformer_cell",
    "transformer_sweep",
]
