"""The settings of ``dftnet lm`` (:mod:`.train`): the GPT, the recipe and the run, each field also a flag."""

from __future__ import annotations

from dataclasses import dataclass

from ..argtypes import comma_list, duration, mlp_variant, positive_float, positive_int
from ..configflags import HIDDEN, option, run_option
from .gpt import STRUCTURES, GPTConfig, split_variant

__all__ = ["LMConfig", "DEFAULT_VARIANTS"]

DEFAULT_VARIANTS = ("dense", "block-16", "dft")


@dataclass
class LMConfig:
    """Every field made with :func:`.configflags.option` is also a flag of ``dftnet lm``."""

    variants: tuple[str, ...] = option(DEFAULT_VARIANTS, "MLP layers, comma-separated: dense, dft, block-K (and "
                                       "dft-sign, block-K-sign), lowrank-K (rank d/K), monarch-B (B blocks); NAME@R "
                                       "gives a variant its own MLP ratio R", type=comma_list(mlp_variant, "variant"),
                                       metavar="dense,block-16,dft")
    d_model: int = option(128, "width d; the MLP is d -> R*d -> d", type=positive_int)
    layers: int = option(4, type=positive_int)
    heads: int = option(4, type=positive_int)
    mlp_ratio: int = option(4, "the MLP's width as a multiple of d, for variants without @R", type=positive_int,
                            metavar="R")
    context: int = option(128, "bytes per sequence", type=positive_int)
    batch_size: int = option(32, "sequences per step, global", type=positive_int)
    max_steps: int = option(400, "steps per variant", type=positive_int)
    budget: float | None = option(None, "train each variant for this much time instead of --max-steps (90s, 10m, "
                                  "1.5h): its step count is TIME / its step time, measured first on a few steps, and "
                                  "its schedule is set for that count (recorded in config.json as steps_by_variant)",
                                  type=duration, metavar="TIME")
    structure: str = option("mlp", "the layers a variant replaces: the MLP's, or attention's q, k, v and output "
                            "projections too", choices=STRUCTURES)
    lr: float = option(2e-3, "peak AdamW learning rate, warmup then cosine, the same for every variant",
                       type=positive_float)
    weight_decay: float = 1e-2  # torch.optim.AdamW's default, as in dftnet train
    warmup_steps: int | None = None  # None: a tenth of max_steps, at most 100
    seed: int = run_option("seed")
    device: str = run_option("device")
    out: str | None = run_option("out")
    resume: bool = run_option("resume")
    overwrite: bool = run_option("overwrite")
    quiet: bool = run_option("quiet")
    eval_every: int = option(40, "validation bits per byte every STEPS steps", type=positive_int, metavar="STEPS")
    eval_windows: int = 64  # validation windows at each --eval-every (the same for every variant)
    final_eval_windows: int = 512  # for the table (65,536 predicted bytes at context 128)
    limit: int | None = option(None, HIDDEN, type=positive_int)  # keep the first LIMIT bytes of each stream (tests)
    sample_bytes: int = 240
    timing_repeats: int = 3
    memory_check: bool = run_option("memory_check")

    def __post_init__(self):
        self.variants = tuple(str(v).lower() for v in self.variants)
        if not self.variants:
            raise ValueError("--variants: no variant given")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"--variants: a variant is listed twice in {','.join(self.variants)}")
        for v in self.variants:
            self.gpt(v)  # ValueError for unknown variants and bad shapes

    @property
    def warmup(self) -> int:
        """Warmup steps: ``warmup_steps``, or a tenth of ``max_steps`` (at most 100)."""
        return self.warmup_steps if self.warmup_steps is not None else min(100, self.max_steps // 10)

    def gpt(self, variant: str) -> GPTConfig:
        """The model of a variant; ``name@R`` gives that variant an MLP ratio of its own."""
        mlp, ratio = split_variant(variant, self.mlp_ratio)
        return GPTConfig(self.context, self.d_model, self.layers, self.heads, mlp, ratio, self.structure)
