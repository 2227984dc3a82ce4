"""The settings of ``dftnet train`` (:mod:`.train`): one run of the note's MNIST experiment."""

from __future__ import annotations

from dataclasses import dataclass, field

from .models import SEED_WIDTHS, parse_layer_spec

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    dataset: str = "mnist"
    data_dir: str | None = None
    layer: str = "both"  # dft | dense | both
    widths: tuple[int, ...] = SEED_WIDTHS
    epochs: int = 10  # the default run (both nets) fits in 6 minutes on 2 CPU cores
    batch_size: int = 128
    lr: float | None = None  # None: DEFAULT_LR of each layer kind
    weight_decay: float = 1e-2  # torch.optim.AdamW's default; 1e-4 gave 0.15 points less by the median (docs/training.md)
    label_smoothing: float = 0.1
    shift: int = 1  # shift each training image by up to this many pixels (dftnet.experiments.augment)
    dropout: float = 0.0  # dropout on each hidden layer's output (augment.HiddenDropout)
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    resume: bool = False
    overwrite: bool = False  # replace the run the --out folder holds (its outputs are deleted first)
    max_steps: int | None = None
    quiet: bool = False
    limit: int | None = None  # use at most this many training images (demos, tests)
    val_size: int = 5000
    recompute_spectrum: bool = False
    eval_batch_size: int = 0  # 0: 1000, fewer for very wide nets (2^27 activations per batch at most)
    checkpoint_every: int = 0  # also checkpoint every N steps (0: at epoch ends only)
    memory_check: bool = True  # refuse a run whose estimated peak memory exceeds the device's (preflight)
    kinds: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self):
        if not self.eval_batch_size:
            self.eval_batch_size = max(16, min(1000, 2**27 // max(self.widths)))
        self.kinds = ("dft", "dense") if self.layer == "both" else (self.layer,)
        for kind in self.kinds:
            parse_layer_spec(kind)  # ValueError for unknown variants
        self.widths = tuple(self.widths)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
