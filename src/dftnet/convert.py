r"""Replace a model's ``nn.Linear`` layers by DFT / block-circulant layers nearest to their weights.

The structured matrices of a given shape form a linear subspace (each weight entry is tied to one
parameter), so the nearest one in the Frobenius norm is the orthogonal projection: each parameter
becomes the MEAN of the dense entries tied to it. For the orientation ``W[i, j] = w[(i + j) % n]`` those
are the wrapped anti-diagonals ``{(i, j): (i + j) mod n = m}``, within each k x k block for block layers,
counting only real entries (the zero padding of partial blocks ties nothing):

    w[r, c, m] = mean{ W[i, j] : i // k = r, j // k = c, (i + j) % k = m }

For a DFT layer (one block, n = max(p, q)) one of the two sides spans a whole period, so every
anti-diagonal has exactly min(p, q) entries. In a partial corner block (q' < k rows, p' < k columns) the
count varies with m and is 0 for m > q' + p' - 2: such a parameter does not affect the matrix and is set to
0 (the minimum-norm projection).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .layers import BlockDFTLinear, DFTLinear
from .plan import BlockShape

__all__ = ["convert", "ConversionReport", "nearest_block_weight", "nearest_dft_weight"]

_LAYERS = ("dft", "block")


def _check_matrix(W) -> None:
    if not isinstance(W, Tensor) or W.dim() != 2:
        shape = tuple(W.shape) if isinstance(W, Tensor) else type(W).__name__
        raise ValueError(f"expected a 2-D weight matrix (out_features, in_features), got {shape}")


@torch.no_grad()
def nearest_block_weight(W: Tensor, block_size: int) -> Tensor:
    """The ``(ceil(q/k), ceil(p/k), k)`` block weight nearest to the ``(q, p)`` matrix W (Frobenius norm).

    Each ``w[r, c, m]`` is the mean of the real entries of block (r, c) on its wrapped anti-diagonal
    ``(i + j) % k == m``, or 0 where there are none.
    """
    _check_matrix(W)
    q, p = W.shape
    k = block_size
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max(p, q):
        raise ValueError(
            f"block_size must be an integer in [1, max(in_features, out_features) = {max(p, q)}], got {k!r}"
        )
    shape = BlockShape(p, q, k)
    R, C = shape.out_blocks, shape.in_blocks
    work = W.double() if W.dtype == torch.float64 else W.float()
    padded = torch.nn.functional.pad(work, (0, C * k - p, 0, R * k - q))
    mask = torch.nn.functional.pad(torch.ones_like(work), (0, C * k - p, 0, R * k - q))
    m = (torch.arange(k, device=W.device)[:, None] + torch.arange(k, device=W.device)[None, :]) % k
    index = m.reshape(-1)

    def diagonal_sums(t: Tensor) -> Tensor:  # (R k, C k) -> (R, C, k) sums over the wrapped anti-diagonals
        blocks = t.reshape(R, k, C, k).permute(0, 2, 1, 3).reshape(R, C, k * k)
        return blocks.new_zeros(R, C, k).index_add_(2, index, blocks)

    sums, counts = diagonal_sums(padded), diagonal_sums(mask)
    return (sums / counts.clamp_min(1)).to(W.dtype)


def nearest_dft_weight(W: Tensor) -> Tensor:
    """The ``(max(p, q),)`` DFT weight nearest to the ``(q, p)`` matrix W: its anti-diagonals' means."""
    _check_matrix(W)
    return nearest_block_weight(W, max(W.shape))[0, 0]


def _relative_error(W: Tensor, W_struct: Tensor) -> float:
    W, W_struct = W.double(), W_struct.double()
    norm = torch.linalg.matrix_norm(W).item()
    diff = torch.linalg.matrix_norm(W - W_struct).item()
    return diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))


class ConversionReport(list):
    """The converted layers (one dict each, in module order), with ``skipped``: one dict per Linear-like
    module left as it was, with ``name``, ``type``, ``in_features``, ``out_features`` and ``reason``."""

    def __init__(self, converted=(), skipped=()):
        super().__init__(converted)
        self.skipped = list(skipped)


def _linear_like(module: nn.Module) -> tuple[Tensor, Tensor | None] | None:
    """``(W (out, in), bias)`` of a module that computes ``x W^T + b``: ``nn.Linear`` and subclasses, and
    transformers' ``Conv1D`` (GPT-2; weight stored transposed, (in, out)). None for anything else."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(weight, Tensor) and weight.dim() == 2:
        return weight.T, bias if isinstance(bias, Tensor) else None
    return None


@torch.no_grad()
def _structured_from(module: nn.Module, W: Tensor, bias: Tensor | None, layer: str, block_size: int | None,
                     sign_flip: bool) -> DFTLinear | BlockDFTLinear:
    q, p = W.shape
    W = W.detach()
    kwargs: dict[str, Any] = {"bias": bias is not None, "device": W.device, "dtype": W.dtype}
    if sign_flip:
        kwargs["sign_flip"] = True
    new: DFTLinear | BlockDFTLinear
    if layer == "dft":
        new = DFTLinear(p, q, **kwargs)
    else:
        assert block_size is not None
        new = BlockDFTLinear(p, q, block_size, **kwargs)
    sign = getattr(new, "sign", None)
    # W ~ S diag(sign)  <=>  W diag(sign) ~ S (diag(sign) is orthogonal and its own inverse)
    target = W if sign is None else W * sign.to(W.dtype)
    if layer == "dft":
        new.set_weight_(nearest_dft_weight(target))
    else:
        assert block_size is not None
        new.set_weight_(nearest_block_weight(target, block_size))
    if bias is not None and new.bias is not None:
        new.bias.copy_(bias.detach())
    trainable = bool(module.weight.requires_grad)
    for param in (new.spectrum, new.diagonal):
        if param is not None:
            param.requires_grad_(trainable)
    if bias is not None and new.bias is not None:
        new.bias.requires_grad_(bias.requires_grad)
    new.train(module.training)
    return new


def _tied_parameters(model: nn.Module) -> set[int]:
    """ids of parameters registered in more than one module (e.g. an output layer tied to an embedding)."""
    owners: dict[int, set[int]] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), set()).add(id(module))
    return {pid for pid, mods in owners.items() if len(mods) > 1}


def _output_head(model: nn.Module) -> nn.Module | None:
    """The model's output head, if it names one (Hugging Face ``get_output_embeddings()``)."""
    get = getattr(model, "get_output_embeddings", None)
    try:
        return get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        return None


def convert(
    model: nn.Module,
    layer="dft",
    block_size: int | None = None,
    min_features: int = 16,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    *,
    sign_flip: bool = False,
    convert_head: bool = False,
) -> ConversionReport:
    """Replace, in place, the linear layers of ``model`` by structured layers nearest to them.

    Every ``nn.Linear`` (and subclass) and every transformers ``Conv1D`` (GPT-2's linear layer, weight
    stored transposed) is replaced by :class:`dftnet.DFTLinear` (``layer="dft"``) or
    :class:`dftnet.BlockDFTLinear` (``layer="block"``) on the same device and dtype, with the same bias,
    the same ``requires_grad`` and training mode, and the weight projected onto the structured matrices
    (:func:`nearest_dft_weight`, :func:`nearest_block_weight`): the nearest structured matrix in the
    Frobenius norm. Like ``torchao.quantization.quantize_(model, config, filter_fn)``. A module
    registered at several places is replaced by one shared new module.

    Skipped, and listed in ``report.skipped`` with the reason: layers with ``min(in_features,
    out_features) < min_features``; for ``layer="block"``, layers smaller than one block; layers for
    which ``filter_fn(module, fully_qualified_name)`` is False; Linears owned by ``nn.MultiheadAttention``
    (it reads ``out_proj.weight`` as a matrix); layers whose weight is tied to another module's (an
    output head tied to the input embedding: the tie would silently break); the model's output head
    (``model.get_output_embeddings()``, as Hugging Face models have) unless ``convert_head=True``, since
    ``resize_token_embeddings`` and weight tying expect an ``nn.Linear`` there; lazy layers not yet
    initialised.

    ``min_features`` defaults to 16: a q x p layer shrinks by a factor min(p, q) (DFT) or at most k
    (block), so below 16 the saving is small in relative terms and tiny in absolute ones, while such
    layers are typically output heads and bottlenecks where the approximation costs the most accuracy.
    Pass ``min_features=1`` to convert everything.

    Returns:
        A :class:`ConversionReport`: one dict per converted layer, in module order (``name``,
        ``in_features``, ``out_features``, ``layer``, ``block_size`` (n = max(p, q) for "dft"),
        ``params_before``, ``params_after``, ``rel_error`` = ``||W - W_struct||_F / ||W||_F``), and
        ``report.skipped``. To save and reload a converted Hugging Face model, see :mod:`dftnet.pretrained`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: expected an nn.Module, got {type(model).__name__}")
    if _linear_like(model) is not None:
        raise ValueError(
            "convert: the model is itself an nn.Linear (or Conv1D) and cannot be replaced in place; wrap it in a module"
        )
    layer, block_size, sign_flip = _from_variant(layer, block_size, sign_flip)
    if layer not in _LAYERS:
        raise ValueError(f"convert: layer must be one of {_LAYERS}, a variant name or a DFT/BlockDFT config, "
                         f"got {layer!r}")
    if layer == "block":
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(
                f"convert: layer='block' needs block_size, a positive integer, got {block_size!r}"
            )
    elif block_size is not None:
        raise ValueError(f"convert: block_size is only for layer='block', got block_size={block_size!r}")
    if isinstance(min_features, bool) or not isinstance(min_features, int) or min_features < 1:
        raise ValueError(f"convert: min_features must be a positive integer, got {min_features!r}")

    tied = _tied_parameters(model)
    head = None if convert_head else _output_head(model)
    replaced: dict[int, nn.Module | None] = {}  # id(old module) -> new module, or None if skipped
    report = ConversionReport()
    for name, child in list(model.named_modules(remove_duplicate=False)):  # every occurrence, in module order
        if not name:
            continue
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if id(child) not in replaced:
            replaced[id(child)] = None
            if isinstance(child, nn.Linear) and isinstance(child.weight, nn.parameter.UninitializedParameter):
                report.skipped.append({"name": name, "type": type(child).__name__, "in_features": None,
                                       "out_features": None, "reason": "lazy layer, not initialised yet"})
                continue
            linear = _linear_like(child)
            if linear is None:
                continue
            W, bias = linear
            q, p = W.shape
            reason = _skip_reason(child, name, parent, W, p, q, tied, head, layer, block_size, min_features,
                                  filter_fn)
            if reason:
                report.skipped.append({"name": name, "type": type(child).__name__, "in_features": p,
                                       "out_features": q, "reason": reason})
                continue
            new = _structured_from(child, W, bias, layer, block_size, sign_flip)
            replaced[id(child)] = new
            report.append({
                "name": name,
                "in_features": p,
                "out_features": q,
                "layer": layer,
                "block_size": block_size if layer == "block" else max(p, q),
                "params_before": sum(t.numel() for t in child.parameters()),
                "params_after": sum(t.numel() for t in new.parameters()),
                "rel_error": _relative_error(W, new.to_dense()),
            })
        if replaced[id(child)] is not None:
            setattr(parent, child_name, replaced[id(child)])
    return report


def _from_variant(layer, block_size, sign_flip) -> tuple:
    """``convert(model, BlockDFT(16, sign_flip=True))`` or ``convert(model, "block-16-sign")``: the config's
    fields as (layer, block_size, sign_flip); the plain form ``("dft" | "block", block_size, sign_flip)``
    passes through."""
    from .variants import DFT, BlockDFT, Dense, parse_variant

    if isinstance(layer, str) and layer in _LAYERS:
        return layer, block_size, sign_flip
    try:
        variant = parse_variant(layer)
    except ValueError:
        return layer, block_size, sign_flip  # refused below with the full list
    if isinstance(variant, Dense):
        raise ValueError("convert: the dense variant is the model as it is; give dft or block-K")
    if not isinstance(variant, (DFT, BlockDFT)):
        raise ValueError(f"convert: {variant.name!r} has no projection from a dense weight; give dft or block-K")
    if variant.ratio is not None:
        raise ValueError(f"convert: {variant.name!r} names an MLP ratio, which converting a layer cannot change; "
                         "give the variant without @R")
    if block_size is not None:
        raise ValueError(f"convert: block_size={block_size!r} given beside the variant {variant.name!r}; "
                         "give one of them")
    if isinstance(variant, BlockDFT):
        return "block", variant.block_size, sign_flip or variant.sign_flip
    return "dft", None, sign_flip or variant.sign_flip


def _skip_reason(child, name, parent, W, p, q, tied, head, layer, block_size, min_features, filter_fn) -> str:
    if isinstance(parent, nn.MultiheadAttention):
        return "owned by nn.MultiheadAttention, which reads out_proj.weight as a matrix"
    if id(W) in tied or id(getattr(child, "weight", None)) in tied:
        return "weight tied to another module (e.g. an output head tied to the input embedding)"
    if head is not None and child is head:
        return "the model's output head (get_output_embeddings); pass convert_head=True to convert it"
    if min(p, q) < min_features:
        return f"min(in_features, out_features) = {min(p, q)} < min_features = {min_features}"
    if layer == "block" and max(p, q) < block_size:
        return f"smaller than one block: max(in_features, out_features) = {max(p, q)} < block_size = {block_size}"
    if filter_fn is not None and not filter_fn(child, name):
        return "filter_fn returned False"
    return ""
