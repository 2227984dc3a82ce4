"""A compact GPT over bytes whose MLPs are dense, block-circulant or circulant: the model of ``dftnet lm``.

Read top to bottom, like nanoGPT's ``model.py``:

* byte embeddings (a vocabulary of 256) and learned positions;
* pre-LayerNorm blocks: causal self-attention through ``F.scaled_dot_product_attention``, then an
  MLP d -> R·d -> d with GELU (R = ``mlp_ratio``, 4 by default), each added to the residual stream;
* a final LayerNorm and a head tied to the byte embeddings.

Only the MLP's two linear layers change between variants (:func:`mlp_linear`), and with
``structure="mlp+attn"`` attention's q, k, v and output projections too: ``dense``
(``nn.Linear``), ``block-K`` (:class:`~dftnet.BlockDFTLinear`, K x K circulant blocks) or ``dft``
(:class:`~dftnet.DFTLinear`), their ``-sign`` forms, and the peers of :mod:`dftnet.peers`: ``lowrank-K``
(rank = the layer's smaller side / K) and ``monarch-B`` (B blocks): every name of
:func:`dftnet.variants.parse_variant`. A variant name may end in ``@R`` for its own MLP ratio: ``dft@16`` is a
d -> 16d -> d circulant MLP.
Embeddings, attention and dense MLP layers get nanoGPT's init (normal, std 0.02; the residual
projections 0.02 / sqrt(2 * layers)); the structured layers keep their own init, which their
spectral parametrisation (and so their learning-rate rule) is built on. The shared parts are
initialised from ``seed`` alone, so every variant starts with the same embeddings and attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dftnet import BlockDFTLinear, DFTLinear
from dftnet.peers import LowRankLinear, MonarchLinear
from dftnet.variants import BlockDFT, LowRank, Monarch, parse_variant

__all__ = ["GPTConfig", "GPT", "mlp_linear", "split_variant", "VOCAB", "STRUCTURES"]

VOCAB = 256  # bytes
STRUCTURES = ("mlp", "mlp+attn")  # which linear layers take the variant: the MLP's, or attention's too


@dataclass(frozen=True)
class GPTConfig:
    context: int = 256
    d_model: int = 192
    layers: int = 4
    heads: int = 4
    mlp: str = "dense"  # a dftnet.variants name without @R: dense | dft | block-K | lowrank-K | monarch-B
    mlp_ratio: int = 4  # the MLP is d -> mlp_ratio * d -> d
    structure: str = "mlp"  # one of STRUCTURES

    def __post_init__(self):
        if self.structure not in STRUCTURES:
            raise ValueError(f"--structure must be one of {', '.join(STRUCTURES)}, got {self.structure!r}")
        for name in ("context", "d_model", "layers", "heads", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.heads:
            raise ValueError(f"--d-model {self.d_model} must be a multiple of --heads {self.heads}")
        hidden = self.mlp_ratio * self.d_model
        variant = parse_variant(self.mlp)
        if isinstance(variant, LowRank) and self.d_model // variant.k < 1:
            raise ValueError(f"MLP variant {self.mlp}: the rank d / {variant.k} must be at least 1 "
                             f"(d = {self.d_model})")
        if isinstance(variant, Monarch) and self.d_model % variant.nblocks:
            raise ValueError(f"MLP variant {self.mlp}: {variant.nblocks} blocks must divide --d-model {self.d_model}")
        if isinstance(variant, BlockDFT) and variant.block_size > hidden:
            raise ValueError(f"MLP variant {self.mlp}: the block size must be at most the MLP's width {hidden}")


def split_variant(variant: str, default_ratio: int = 4) -> tuple[str, int]:
    """``"dft@16"`` -> ``("dft", 16)``; ``"dense"`` -> ``("dense", default_ratio)``."""
    v = parse_variant(variant)
    name = v.name.partition("@")[0]
    return name, v.ratio if v.ratio is not None else default_ratio


def mlp_linear(spec: str, in_features: int, out_features: int) -> nn.Module:
    """One linear layer for a variant name: nn.Linear, BlockDFTLinear, DFTLinear or a peer."""
    return parse_variant(spec).build(in_features, out_features)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads = cfg.heads
        spec = cfg.mlp if cfg.structure == "mlp+attn" else "dense"
        self.qkv = mlp_linear(spec, cfg.d_model, 3 * cfg.d_model)
        self.proj = mlp_linear(spec, cfg.d_model, cfg.d_model)
        self.proj.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = mlp_linear(cfg.mlp, cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.proj = mlp_linear(cfg.mlp, cfg.mlp_ratio * cfg.d_model, cfg.d_model)
        self.proj.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """``GPT(cfg)(idx)`` -> logits ``(B, T, 256)``; ``model.loss(idx, targets)`` -> mean cross-entropy (nats)."""

    def __init__(self, cfg: GPTConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(VOCAB, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, VOCAB, bias=False)
        self.head.weight = self.wte.weight  # weight tying
        self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """nanoGPT's init for embeddings, attention and dense layers, from ``seed`` (shared parts first,
        in a fixed order, so all variants agree on them); structured layers reset from ``seed + 1``."""
        g = torch.Generator().manual_seed(seed)
        std = 0.02
        mlp_modules = {id(m) for b in self.blocks for m in b.mlp.modules()}
        for emb in (self.wte, self.wpe):
            emb.weight.copy_(torch.randn(emb.weight.shape, generator=g) * std)
        for block in self.blocks:
            for lin in (block.attn.qkv, block.attn.proj):
                if not isinstance(lin, nn.Linear):  # a structured projection keeps its own init
                    mlp_modules.add(id(lin))
                    continue
                s = std / math.sqrt(2 * self.cfg.layers) if getattr(lin, "residual", False) else std
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * s)
                lin.bias.zero_()
        g_mlp = torch.Generator().manual_seed(seed + 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            for m in self.modules():
                if id(m) not in mlp_modules:
                    continue
                if isinstance(m, nn.Linear):
                    s = std / math.sqrt(2 * self.cfg.layers) if getattr(m, "residual", False) else std
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g_mlp) * s)
                    m.bias.zero_()
                elif isinstance(m, (DFTLinear, BlockDFTLinear, LowRankLinear, MonarchLinear)):
                    m.reset_parameters()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.cfg.context:
            raise ValueError(f"sequence of length {T} is longer than the context {self.cfg.context}")
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def mlp_parameters(self) -> int:
        return sum(p.numel() for b in self.blocks for p in b.mlp.parameters())

    def structured_layers(self) -> dict[str, nn.Module]:
        """The linear layers the variant chose, by name: the MLPs' (and attention's with ``mlp+attn``)."""
        names = ("mlp.fc", "mlp.proj") + (("attn.qkv", "attn.proj") if self.cfg.structure == "mlp+attn" else ())
        return {f"blocks.{i}.{n}": b.get_submodule(n) for i, b in enumerate(self.blocks) for n in names}

    @torch.no_grad()
    def generate(self, prompt: bytes, new_bytes: int, temperature: float = 0.8, top_k: int = 40,
                 seed: int = 0) -> bytes:
        """Sample ``new_bytes`` bytes after ``prompt`` (seeded: the same text for the same weights). A model
        whose logits are not finite (diverged weights) has no distribution to sample: the text ends there."""
        was_training = self.training
        self.eval()
        device = self.wte.weight.device
        g = torch.Generator(device=device).manual_seed(seed)
        idx = torch.tensor([list(prompt) or [10]], dtype=torch.long, device=device)
        for _ in range(new_bytes):
            logits = self(idx[:, -self.cfg.context:])[:, -1, :] / temperature
            if not bool(torch.isfinite(logits).all()):
                break
            top = torch.topk(logits, min(top_k, VOCAB))
            logits = torch.full_like(logits, float("-inf")).scatter(1, top.indices, top.values)
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=g)
            idx = torch.cat([idx, nxt], dim=1)
        self.train(was_training)
        return bytes(idx[0, len(prompt):].tolist()) if prompt else bytes(idx[0, 1:].tolist())
