"""What ``dftnet lm`` measures about a trained variant: validation bits per byte, peak step memory,
where a training step's time goes (MLP, attention, the rest), and a text sample.

The time breakdown times, on one training batch and a copy of the model, (a) a whole training step
(forward, backward, clipping, AdamW), (b) forward + backward of every block's MLP alone and (c) of
every block's attention alone, on the inputs those modules saw in that step's forward pass and a
fixed upstream gradient. "Rest" is (a) - (b) - (c): embeddings, LayerNorms, residual adds, the head
and loss, clipping and the optimizer. Each is the median of a few repeats after a warm-up.
"""

from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..harness import distributed as dist_mod
from ..harness.memory import peak_step_memory
from . import corpus as corpus_mod

__all__ = ["evaluate_bpb", "time_breakdown", "finish_variant", "bpb_at"]


@torch.no_grad()
def evaluate_bpb(model, windows: torch.Tensor, batch_size: int, ctx: dist_mod.Context) -> float:
    """Mean cross-entropy in bits per byte over every predicted byte of ``windows`` (k, context + 1);
    under DDP each rank takes every world_size-th window and the sums are reduced."""
    was_training = model.training
    model.eval()
    mine = windows[ctx.rank::ctx.world_size]
    total, count = 0.0, 0
    for i in range(0, len(mine), max(1, 2 * batch_size)):
        chunk = mine[i:i + 2 * batch_size].long().to(ctx.device)
        logits = model(chunk[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
        count += chunk[:, 1:].numel()
    model.train(was_training)
    total, count = dist_mod.all_reduce_sum(ctx, [total, count])
    return total / count / math.log(2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def time_breakdown(model, x: torch.Tensor, y: torch.Tensor, repeats: int = 3) -> dict:
    """Milliseconds of one training step, and of its MLPs and attention (forward + backward); see the
    module's docstring. Runs on a copy: the model and its optimizer are not touched."""
    m = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(m.parameters(), lr=0.0)

    def step():
        loss = m.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()

    step_s = _median_seconds(step, repeats, x.device)
    inputs, hooks = {}, []
    for i, block in enumerate(m.blocks):
        for part in ("attn", "mlp"):
            hooks.append(getattr(block, part).register_forward_pre_hook(
                lambda mod, args, key=(part, i): inputs.__setitem__(key, args[0].detach().clone())))
    with torch.no_grad():
        m(x)
    for h in hooks:
        h.remove()
    g = torch.Generator(device=x.device).manual_seed(0)
    upstream = torch.randn(inputs[("mlp", 0)].shape, generator=g, device=x.device) * 0.01

    def parts(name):
        def run():
            for i, block in enumerate(m.blocks):
                h = inputs[(name, i)].requires_grad_()
                getattr(block, name)(h).backward(upstream)
                h.grad = None
            opt.zero_grad(set_to_none=True)
        return run

    mlp_s = _median_seconds(parts("mlp"), repeats, x.device)
    attn_s = _median_seconds(parts("attn"), repeats, x.device)
    return {"step_ms": 1e3 * step_s, "mlp_ms": 1e3 * mlp_s, "attention_ms": 1e3 * attn_s,
            "rest_ms": 1e3 * max(0.0, step_s - mlp_s - attn_s)}


class _FlatLogits(nn.Module):
    """``(B, T) -> (B * T, 256)`` logits, so :func:`..harness.memory.peak_step_memory` can take a GPT as it is."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, x):
        return self.gpt(x).flatten(0, 1)


def bpb_at(curve: list, t: float) -> float:
    """Validation bpb at ``t`` seconds of training, linearly interpolated in ``curve`` [(seconds, bpb)]."""
    if not curve:
        return math.nan
    if t <= curve[0][0]:
        return curve[0][1]
    for (t0, b0), (t1, b1) in zip(curve, curve[1:]):
        if t0 <= t <= t1:
            return b0 if t1 == t0 else b0 + (b1 - b0) * (t - t0) / (t1 - t0)
    return curve[-1][1]


def finish_variant(r, cfg, corpus, ctx: dist_mod.Context, prompt: bytes, log) -> dict:
    """The results of a trained variant: final validation on more windows, and (rank 0) memory, the
    time breakdown and a sample from ``prompt``."""
    model = r.model
    windows = corpus_mod.eval_windows(corpus.val, cfg.context, cfg.final_eval_windows)
    val_bpb = evaluate_bpb(model, windows, cfg.batch_size, ctx)
    tokens = r.step * cfg.batch_size * cfg.context
    result = {
        "variant": r.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "mlp_parameters": model.mlp_parameters(),
        "steps": r.step, "tokens": tokens, "seconds": r.seconds,
        "tokens_per_s": tokens / r.seconds if r.seconds else math.nan,
        "val_bpb": val_bpb, "val_windows": len(windows),
        "curve": [[row["seconds"], row["val_bpb"]] for row in r.history],
        "peak_memory_bytes": math.nan, "timing": {}, "sample": "", "processes": ctx.world_size,
    }

    def measure():
        starts = corpus_mod.batch_indices(len(corpus.train), cfg.context, cfg.batch_size, cfg.seed, 0)
        x, y = corpus_mod.get_batch(corpus.train, starts[:r.local_batch], cfg.context, ctx.device)
        result["peak_memory_bytes"] = peak_step_memory(_FlatLogits(model), x, y.flatten())
        result["timing"] = time_breakdown(model, x, y, cfg.timing_repeats)
        text = model.generate(prompt, cfg.sample_bytes, seed=cfg.seed)
        result["sample"] = text.decode("utf-8", errors="replace")

    dist_mod.on_main(ctx, measure)
    t = result["timing"]
    log(f"{r.name:>9} done: {r.step} steps, val bpb {val_bpb:.3f} ({len(windows)} windows), "
        f"{result['tokens_per_s']:,.0f} tokens/s"
        + (f"; a step {t['step_ms']:.0f} ms: MLP {t['mlp_ms']:.0f}, attention {t['attention_ms']:.0f}, "
           f"rest {t['rest_ms']:.0f}" if t else ""))
    return result
