"""The settings of ``dftnet train`` (:mod:`.train`): one run of the note's MNIST experiment."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..argtypes import mlp_widths, nonneg_float, nonneg_int, positive_float, positive_int, train_layer
from ..configflags import option, run_option
from .models import SEED_WIDTHS, parse_layer_spec

__all__ = ["TrainConfig"]


def _lr_help() -> str:
    from .recipe import DEFAULT_LR

    return ("peak learning rate of the one-cycle schedule (default: " +
            ", ".join(f"{lr:g} {kind}" for kind, lr in DEFAULT_LR.items()) + ")")


@dataclass
class TrainConfig:
    """Every field made with :func:`.configflags.option` is also a flag of ``dftnet train``."""

    dataset: str = option("mnist", choices=("mnist", "fashion-mnist"))
    data_dir: str | None = option(None, "folder with the four IDX files (raw or .gz)", metavar="DIR")
    layer: str = option("both", "which net(s): both = dft then dense; also dft-sign, block-32, ...",
                        type=train_layer, metavar="{dft,dense,both,dft-sign,block-K}")
    widths: tuple[int, ...] = option(SEED_WIDTHS, "layer widths, input first", type=mlp_widths, metavar="784,4096,...")
    epochs: int = option(10, type=positive_int)
    batch_size: int = option(128, type=positive_int)
    lr: float | None = option(None, _lr_help(), type=positive_float)  # None: DEFAULT_LR of each layer kind
    # torch.optim.AdamW's default; 1e-4 gave 0.15 points less by the median (docs/training.md)
    weight_decay: float = option(1e-2, "AdamW weight decay", type=nonneg_float)
    label_smoothing: float = option(0.1, type=nonneg_float)
    shift: int = option(1, "shift each training image by a random 0..PIXELS pixels per axis, anew each epoch "
                        "(0: no augmentation)", type=nonneg_int, metavar="PIXELS")
    dropout: float = option(0.0, "dropout on each hidden layer's output, in [0, 1)", type=nonneg_float, metavar="P")
    seed: int = run_option("seed")
    device: str = run_option("device")
    out: str | None = run_option("out")
    resume: bool = run_option("resume")
    overwrite: bool = run_option("overwrite")
    max_steps: int | None = option(None, "stop each net after this many steps", type=positive_int)
    quiet: bool = run_option("quiet")
    limit: int | None = option(None, "use at most this many training images", type=positive_int)
    val_size: int = 5000
    recompute_spectrum: bool = option(False, "DFT layers keep only their input for backward (less memory, one "
                                             "more FFT)")
    eval_batch_size: int = 0  # 0: 1000, fewer for very wide nets (2^27 activations per batch at most)
    checkpoint_every: int = option(0, "also checkpoint every STEPS steps (0: at epoch ends)", type=nonneg_int,
                                   metavar="STEPS")
    memory_check: bool = run_option("memory_check")
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
