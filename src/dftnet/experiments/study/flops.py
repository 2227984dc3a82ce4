"""A FLOP model of one training step of the GPT of :mod:`..lm.gpt`, per MLP variant.

Counted per token, a multiply-add as 2 FLOPs, a real FFT of length N as 2.5 N log2 N; a training step is
3 forward passes' worth (backward ~ 2 x forward) times the tokens in the batch:

* attention, per block: the q, k, v and output projections 8 d^2, and the scores and their weighted sum
  4 T d at context T (the causal mask is not credited: CPU kernels compute the full square);
* the tied head 2 d V (V = 256 bytes); embeddings, LayerNorms, GELU and the optimizer are not counted;
* each MLP layer p -> q:
  - ``dense``: 2 p q;  ``lowrank-K``: 2 r (p + q) with r = min(p, q) / K;  ``monarch-B``: 2 x its weights;
  - ``dft``: rfft of the input and irfft of the output at n = max(p, q), and the spectral product:
    2 x 2.5 n log2 n + 3 n (plus p for the learned diagonal);
  - ``block-K``: an rfft of each input block and an irfft of each output block, and the block-spectral
    products: (p/K + q/K) FFTs of length K and (q/K)(p/K)(K/2 + 1) complex multiply-adds of 8 FLOPs.

A structured layer that runs its dense route (:mod:`dftnet.plan`: it materialises the q x p matrix and
multiplies) is counted as dense, 2 p q: pass the route each layer takes (``layer.route(rows, training=True)``,
:func:`layer_routes`) and the count is of the algorithm that runs. With ``structure="mlp+attn"`` the
attention projections are counted by the same rule as the MLP's layers.
"""

from __future__ import annotations

import math

from dftnet.variants import DFT, BlockDFT, Dense, LowRank, Monarch, parse_variant

from ..lm.gpt import VOCAB, GPTConfig

__all__ = ["layer_flops", "step_flops", "layer_routes"]


def _fft(n: int) -> float:
    return 2.5 * n * math.log2(n) if n > 1 else 0.0


def layer_flops(spec: str, p: int, q: int, route: str = "fft") -> float:
    """Forward FLOPs per token of one layer ``p -> q`` of variant ``spec`` (without the bias); a structured
    layer on its ``"dense"`` route counts as dense."""
    if route == "dense":
        return 2.0 * p * q
    v = parse_variant(spec)
    if isinstance(v, LowRank):
        return 2.0 * max(1, min(p, q) // v.k) * (p + q)
    if isinstance(v, Monarch):
        s = min(p, q) // v.nblocks
        return 2.0 * v.nblocks * s * (p // v.nblocks + q // v.nblocks)
    if isinstance(v, Dense):
        return 2.0 * p * q
    if isinstance(v, DFT):
        n = max(p, q)
        return 2 * _fft(n) + 3.0 * n + p
    assert isinstance(v, BlockDFT)
    b = v.block_size
    blocks_in, blocks_out = math.ceil(p / b), math.ceil(q / b)
    return (blocks_in + blocks_out) * _fft(b) + 8.0 * blocks_in * blocks_out * (b // 2 + 1)


def layer_routes(model, rows: int) -> dict[str, str]:
    """Each structured layer of a :class:`..lm.gpt.GPT` by name -> the route a training call on ``rows`` rows
    takes: ``"fft"`` or ``"dense"`` (from the layer itself), ``"matmul"`` for ``nn.Linear`` and the peers."""
    return {name: layer.route(rows, training=True) if hasattr(layer, "route") else "matmul"
            for name, layer in model.structured_layers().items()}


def step_flops(cfg: GPTConfig, batch_size: int, routes: dict[str, str] | None = None) -> float:
    """FLOPs of one training step (forward + backward) on ``batch_size`` sequences of ``cfg.context`` bytes.
    ``routes`` (:func:`layer_routes`) counts each layer for the route it takes; without it, the FFT
    algorithm of every structured layer."""
    d, t, h = cfg.d_model, cfg.context, cfg.mlp_ratio * cfg.d_model
    attn_spec = cfg.mlp if cfg.structure == "mlp+attn" else "dense"
    shapes = {"mlp.fc": (cfg.mlp, d, h), "mlp.proj": (cfg.mlp, h, d),
              "attn.qkv": (attn_spec, d, 3 * d), "attn.proj": (attn_spec, d, d)}
    per_token = 2.0 * d * VOCAB
    for i in range(cfg.layers):
        per_token += 4.0 * t * d
        for name, (spec, p, q) in shapes.items():
            route = (routes or {}).get(f"blocks.{i}.{name}", "fft")
            per_token += layer_flops(spec, p, q, route)
    return 3.0 * per_token * batch_size * t
