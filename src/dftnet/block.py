r"""Block-circulant dense layers: a q x p matrix tiled by k x k circulant blocks, computed by FFT.

With block size k, ``R = ceil(q / k)`` output blocks and ``C = ceil(p / k)`` input blocks, the layer is
the q x p matrix

    W[i, j] = weight[i // k, j // k, (i + j) % k]        weight: (R, C, k)

i.e. block (r, c) is ``W_rc[i][j] = w_rc[(i + j) % k]``, the orientation of :class:`dftnet.DFTLinear`.
Inputs are zero-padded to C k and outputs truncated to q. ``k = 1`` is a dense layer; one block,
``k = max(p, q)``, is exactly :class:`dftnet.DFTLinear`. R C k parameters instead of p q.

Each output block is a sum over input blocks of circular correlations, so with ``X = rfft(x_blocks)``
(..., C, F), ``F = k // 2 + 1`` and ``Wf = rfft(weight)`` (R, C, F), all of it is

Forward, a correlation:     Z[..., r, f] = sum_c conj(X[..., c, f]) Wf[r, c, f],   z = irfft(Z)[:q]
grad_input (layer W^T):     GX[..., c, f] = sum_r conj(G[..., r, f]) Wf[r, c, f],  gx = irfft(GX)[:p]
grad_weight, a convolution: S[r, c, f] = sum_batch G[..., r, f] X[..., c, f],      gw = irfft(S)

with ``G = rfft(grad_output_blocks)``: one batched rfft, one batched complex matmul over frequencies
(F, B, C) @ (F, C, R), one batched irfft. ``W^T`` is the p x q block layer with ``weight.transpose(0, 1)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd import Function

from ._signs import apply_signs, random_signs, register_sign_buffer, reset_signs
from .functional import check_real_tensors
from .layers import _check_features, register_bias_and_signs, reset_bias

__all__ = [
    "BlockDFTLinear",
    "block_dft_linear",
    "block_matrix",
    "block_circulant_kaiming_",
    "random_signs",
    "register_sign_buffer",
    "apply_signs",
]

_METHODS = ("auto", "fft", "dense")


# --- the explicit matrix and the FFT kernels -------------------------------------------------------


class BlockShape(NamedTuple):
    """A q x p block-circulant layer with k x k blocks (k = ``block_size``)."""

    in_features: int
    out_features: int
    block_size: int

    @property
    def in_blocks(self) -> int:
        return -(-self.in_features // self.block_size)

    @property
    def out_blocks(self) -> int:
        return -(-self.out_features // self.block_size)

    def transpose(self) -> "BlockShape":
        return BlockShape(self.out_features, self.in_features, self.block_size)


def block_matrix(weight: Tensor, in_features: int, out_features: int) -> Tensor:
    """The explicit q x p matrix ``W[i, j] = weight[i // k, j // k, (i + j) % k]`` (differentiable)."""
    R, C, k = weight.shape[-3:]
    shape = BlockShape(in_features, out_features, k)
    if (R, C) != (shape.out_blocks, shape.in_blocks):
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} does not tile a {out_features} x {in_features} matrix "
            f"with block size {k}: expected ({shape.out_blocks}, {shape.in_blocks}, {k})"
        )
    i = torch.arange(k, device=weight.device)
    blocks = weight[..., (i[:, None] + i[None, :]) % k]  # (..., R, C, k, k): block (r, c), row i, column j
    W = blocks.transpose(-3, -2).reshape(*weight.shape[:-3], R * k, C * k)
    return W[..., :out_features, :in_features]


def _spectrum(t: Tensor, n_blocks: int, k: int) -> Tensor:
    """(B, m) -> zero-padded to n_blocks k, blocks of k, rfft: the (F, B, n_blocks) spectrum, contiguous."""
    if t.shape[0] == 0:  # MKL rejects empty FFT batches
        return t.new_zeros(k // 2 + 1, 0, n_blocks, dtype=t.dtype.to_complex())
    pad = n_blocks * k - t.shape[-1]
    if pad:
        t = torch.nn.functional.pad(t, (0, pad))
    return torch.fft.rfft(t.reshape(t.shape[0], n_blocks, k), dim=-1).permute(2, 0, 1).contiguous()


def _inverse(Z: Tensor, k: int, length: int) -> Tensor:
    """(F, B, n_blocks) spectrum -> irfft per block -> (B, n_blocks k) truncated to ``length``, contiguous."""
    if Z.shape[1] == 0:
        return Z.real.new_zeros(0, length)
    z = torch.fft.irfft(Z.permute(1, 2, 0), k, dim=-1)
    z = z.reshape(z.shape[0], -1)
    return z if z.shape[-1] == length else z[:, :length].contiguous()


def _weight_spectrum(weight: Tensor) -> Tensor:
    """(R, C, k) -> (F, C, R): the per-frequency C x R matrices of the forward product."""
    return torch.fft.rfft(weight, dim=-1).permute(2, 1, 0).contiguous()


def _weight_from_spectrum(S: Tensor, k: int) -> Tensor:
    """(F, R, C) -> (R, C, k)."""
    return torch.fft.irfft(S.permute(1, 2, 0), k, dim=-1)


class BlockDFTFunction(Function):
    """z = W x for a q x p block-circulant W, x of shape (B, p). Returns (z, X, Wf); X, Wf are by-products.

    Saved for backward: x and weight (for double backward), the weight spectrum Wf (F, C, R) and the
    input spectrum X (F, B, C), so that backward needs one rfft (of the output gradient), two batched
    matmuls and two irffts.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, shape: BlockShape):
        k = shape.block_size
        X = _spectrum(x, shape.in_blocks, k)
        Wf = _weight_spectrum(weight)
        return _inverse(torch.matmul(X.conj(), Wf), k, shape.out_features), X, Wf

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, shape = inputs
        _, X, Wf = output
        ctx.shape = shape
        ctx.mark_non_differentiable(X, Wf)
        ctx.save_for_backward(x, weight, X, Wf)

    @staticmethod
    def backward(ctx, grad_out, _grad_X, _grad_Wf):
        x, weight, X, Wf = ctx.saved_tensors
        shape = ctx.shape
        need_x, need_w = ctx.needs_input_grad[:2]
        grad_x = grad_w = None
        if torch.is_grad_enabled():
            # create_graph=True: build the gradients from differentiable pieces (double backward).
            if need_x:
                grad_x = BlockDFTFunction.apply(grad_out, weight.transpose(0, 1), shape.transpose())[0]
            if need_w:
                grad_w = BlockWeightGradFunction.apply(grad_out, x, shape)
            return grad_x, grad_w, None
        k = shape.block_size
        G = _spectrum(grad_out, shape.out_blocks, k)  # (F, B, R)
        if need_x:
            grad_x = _inverse(torch.matmul(G.conj(), Wf.transpose(1, 2)), k, shape.in_features)
        if need_w:
            grad_w = _weight_from_spectrum(torch.matmul(G.transpose(1, 2), X), k)
        return grad_x, grad_w, None


class BlockWeightGradFunction(Function):
    """gw[r, c] = sum_batch conv_k(g_r, x_c): the weight gradient as a differentiable bilinear map of (g, x).

    Its own gradients are block layers with the incoming gradient u (R, C, k) as weight:
    d<u, gw>/dg = W_u x (q x p layer), d<u, gw>/dx = W_u^T g (p x q layer).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, x, shape: BlockShape):
        k = shape.block_size
        G = _spectrum(grad_out, shape.out_blocks, k)
        X = _spectrum(x, shape.in_blocks, k)
        return _weight_from_spectrum(torch.matmul(G.transpose(1, 2), X), k)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, x, shape = inputs
        ctx.shape = shape
        ctx.save_for_backward(grad_out, x)

    @staticmethod
    def backward(ctx, u):
        grad_out, x = ctx.saved_tensors
        shape = ctx.shape
        need_g, need_x = ctx.needs_input_grad[:2]
        dg = dx = None
        if need_g:
            dg = BlockDFTFunction.apply(x, u, shape)[0]
        if need_x:
            dx = BlockDFTFunction.apply(grad_out, u.transpose(0, 1), shape.transpose())[0]
        return dg, dx, None


# --- functional ----------------------------------------------------------------------------------


def _check(input: Tensor, weight: Tensor, bias: Tensor | None, out_features: int | None) -> BlockShape:
    name = "block_dft_linear"
    check_real_tensors(name, input, weight, bias)
    if weight.dim() != 3 or weight.shape[-1] < 1:
        raise ValueError(
            f"{name}: expected a 3-D weight of shape (out_blocks, in_blocks, block_size), "
            f"got shape {tuple(weight.shape)}"
        )
    if input.dim() == 0:
        raise ValueError(f"{name}: expected input of shape (*, in_features), got a 0-d tensor")
    R, C, k = weight.shape
    p = input.shape[-1]
    q = R * k if out_features is None else out_features
    if isinstance(q, bool) or not isinstance(q, int) or q < 1:
        raise ValueError(f"{name}: out_features must be a positive integer, got {out_features!r}")
    shape = BlockShape(p, q, k)
    if p < 1 or (R, C) != (shape.out_blocks, shape.in_blocks):
        raise ValueError(
            f"{name}: weight of shape {tuple(weight.shape)} needs in_features in "
            f"[{(C - 1) * k + 1}, {C * k}] and out_features in [{(R - 1) * k + 1}, {R * k}], got "
            f"in_features = {p} (input shape {tuple(input.shape)}) and out_features = {q}"
        )
    if k > max(p, q):
        raise ValueError(
            f"{name}: block_size must be at most max(in_features, out_features) = {max(p, q)}, got {k}"
        )
    if bias is not None and tuple(bias.shape) != (q,):
        raise ValueError(f"{name}: expected bias of shape ({q},), got {tuple(bias.shape)}")
    for what, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != input.device:
            raise ValueError(f"{name}: expected {what} on the input's device {input.device}, got {t.device}")
    return shape


def _use_dense(shape: BlockShape, batch: int) -> bool:
    """Whether the dense product with the materialised matrix is faster than the FFT route.

    Measured on CPU (forward + backward, batch 8-128): blocks of k <= 4 are slower than dense at every
    size (complex arithmetic on k/2 + 1 bins costs about what the k^2 real products save), and the FFT
    route breaks even around p q = 512^2 with k = 32 and p q = 1024^2 with k = 8.
    """
    k, pq = shape.block_size, shape.in_features * shape.out_features
    return batch == 0 or k < 8 or pq < 512 * 512 or pq * k < 2**23


def block_dft_linear(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    out_features: int | None = None,
    *,
    method: str = "auto",
) -> Tensor:
    """Apply the block-circulant layer: ``input @ W.T + bias``, ``W[i, j] = weight[i//k, j//k, (i+j) % k]``.

    Args:
        input: ``(*, p)`` real floating-point tensor.
        weight: ``(R, C, k)`` with ``C = ceil(p / k)``, ``R = ceil(q / k)`` and ``k <= max(p, q)``.
        bias: ``(out_features,)`` or None.
        out_features: q; defaults to R k.
        method: "fft", "dense" (multiply by the materialised matrix; same result and gradients), or
            "auto" (dense where the FFT does not pay off: block sizes below 8, small layers, empty inputs).

    Returns:
        ``(*, q)`` tensor. The FFT route computes half types in float32 and returns the input dtype; under
        ``torch.autocast`` it computes in float32 and returns the autocast dtype.
    """
    shape = _check(input, weight, bias, out_features)
    if method not in _METHODS:
        raise ValueError(f"block_dft_linear: method must be one of {_METHODS}, got {method!r}")
    q = shape.out_features
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type) and input.dtype != torch.float64:
        out_dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            out = block_dft_linear(
                input.float(), weight.float(), None if bias is None else bias.float(), q, method=method
            )
        return out.to(out_dtype)
    if input.dtype != weight.dtype or (bias is not None and bias.dtype != input.dtype):
        raise TypeError(
            f"block_dft_linear: expected input, weight and bias of one dtype, got input {input.dtype}, "
            f"weight {weight.dtype}" + ("" if bias is None else f", bias {bias.dtype}")
        )
    p = shape.in_features
    batch = input.numel() // p
    if method == "dense" or (method == "auto" and _use_dense(shape, batch)):
        return torch.nn.functional.linear(input, block_matrix(weight, p, q), bias)
    if input.dtype in (torch.float16, torch.bfloat16):
        # FFTs of half types are unsupported on CPU and power-of-two only on CUDA: compute in float32.
        out = block_dft_linear(
            input.float(), weight.float(), None if bias is None else bias.float(), q, method=method
        )
        return out.to(input.dtype)
    out = BlockDFTFunction.apply(input.reshape(batch, p), weight, shape)[0]
    out = out.reshape(*input.shape[:-1], q)
    return out if bias is None else out + bias


# --- the module ----------------------------------------------------------------------------------


def _relu_block_covariance(k: int) -> float:
    """Cov(a_i, a_j) / E[a_i^2] for a = relu(z), z Gaussian with correlation -1/(k - 1) (a zero-sum block).

    The arc-cosine kernel (Cho & Saul, 2009): ``E[relu(x) relu(y)] = s^2 (sin t + (pi - t) cos t) / (2 pi)``
    for correlation ``cos t``, minus the squared mean ``s^2 / (2 pi)``, over ``E[a^2] = s^2 / 2``.
    """
    rho = -1.0 / (k - 1)
    return (math.sqrt(1 - rho * rho) + rho * (math.pi - math.acos(rho)) - 1) / math.pi


@torch.no_grad()
def block_circulant_kaiming_(weight: Tensor, in_features: int, out_features: int) -> Tensor:
    r"""He-style init of a ``(R, C, k)`` block weight: per block a flat spectrum, random phases, zero DC.

    The principle of :func:`dftnet.layers.circulant_kaiming_`, block by block: i.i.d. taps would give
    every block and frequency a random gain, while a flat spectrum makes every full block a scaled
    orthogonal matrix, and zero DC (zero block sums) cancels the mean of post-ReLU inputs. With magnitude
    m on the k - 1 non-DC bins, random phases give the taps ``E[w_a w_b] = m^2 (k delta_ab - 1) / k^2``
    and ``sum_b w_b = 0``. An output sums p inputs of mean-square ``E[a^2] = v + mu^2`` over C blocks
    (``mu^2 = E[a^2] / pi`` after a ReLU):

    * the means cancel in every full block and leave ``mu^2 p' (k - p') m^2 / k^2`` from the partial last
      input block of ``p' = p - (C - 1) k`` real columns;
    * the fluctuations give ``(v - c) p (k - 1) m^2 / k^2``, where c is the covariance of two inputs of
      one block: a zero-DC block layer makes its k outputs of a block sum to zero (correlation
      ``-1 / (k - 1)``), and after the ReLU ``c = E[a^2] kappa_k`` (:func:`_relu_block_covariance`,
      -0.21 for k = 3, -0.07 for k = 8, O(1/k)); ignoring it grows the activations by a factor
      ``1 - c / v`` per layer of a deep stack (1.3 for k = 3, 1.1 for k = 8).

    Requiring ``E[relu(z)^2] = E[z^2] / 2 = E[a^2]`` gives

        m^2 = 2 k^2 / (p (k - 1) (1 - 1/pi - kappa_k) + p' (k - p') / pi)

    i.e. ``Var(w) = g / p`` with He's ``g = 2`` raised (by at most ``1 / (1 - 1/pi)``) for the mean and
    correlation that the zero-DC blocks remove; one block (k >= p) is ``circulant_kaiming_`` up to the
    O(1/k) covariance term. Block sizes k <= 2 (where zero DC leaves a rank-1 or zero block) fall back
    to He-uniform, ``U(+-sqrt(6 / p))``.
    """
    R, C, k = weight.shape
    p = in_features
    if k <= 2:
        bound = math.sqrt(6.0 / p)
        return nn.init.uniform_(weight, -bound, bound)
    p_last = p - (C - 1) * k
    fluct = p * (k - 1) * (1 - 1 / math.pi - _relu_block_covariance(k))
    magnitude = math.sqrt(2.0 * k * k / (fluct + p_last * (k - p_last) / math.pi))
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    F = k // 2 + 1
    phase = torch.rand(R, C, F, device=weight.device, dtype=dtype) * (2 * math.pi)
    spectrum = torch.polar(torch.full_like(phase, magnitude), phase)
    spectrum[..., 0] = 0
    if k % 2 == 0:  # the Nyquist bin of a real signal is real: a random sign
        spectrum[..., -1] = random_signs(R * C, device=weight.device, dtype=dtype).view(R, C) * magnitude
    return weight.copy_(torch.fft.irfft(spectrum, k, dim=-1))


def _check_block_size(block_size, in_features: int, out_features: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if block_size > max(in_features, out_features):
        raise ValueError(
            f"block_size must be at most max(in_features, out_features) = "
            f"{max(in_features, out_features)}, got {block_size}"
        )
    return block_size


class BlockDFTLinear(nn.Module):
    r"""A dense layer whose q x p weight matrix is tiled by k x k circulant blocks.

    Drop-in for :class:`torch.nn.Linear`: ``y = x W^T + b`` for input ``(*, in_features)``, with
    ``W[i, j] = weight[i // k, j // k, (i + j) % k]`` (see :mod:`dftnet.block`), computed by batched FFTs
    in O((p + q) log k + p q / k) per example, with ``ceil(q/k) ceil(p/k) k`` parameters instead of p q.
    ``block_size=1`` is ``nn.Linear``; ``block_size=max(p, q)`` is :class:`dftnet.DFTLinear`.

    Args:
        in_features: p, size of each input sample.
        out_features: q, size of each output sample.
        block_size: k, between 1 and max(p, q).
        bias: learn an additive bias of shape ``(out_features,)``.
        sign_flip: multiply the input by a fixed random +-1 diagonal D first, ``y = W (D x) + b``
            (Cheng et al., ICCV 2015): decorrelates the structure of W from that of the input.
        method: see :func:`block_dft_linear`.

    Attributes:
        weight: ``(ceil(q/k), ceil(p/k), k)``, initialised by :func:`block_circulant_kaiming_`.
        bias: ``(out_features,)``, initialised ``U(-1/sqrt(p), 1/sqrt(p))`` like ``nn.Linear``.
        sign: buffer ``(in_features,)`` of +-1 if ``sign_flip``, else None.
    """

    __constants__ = ["in_features", "out_features", "block_size", "method"]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        block_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        sign_flip: bool = False,
        method: str = "auto",
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.in_features = _check_features("in_features", in_features)
        self.out_features = _check_features("out_features", out_features)
        self.block_size = _check_block_size(block_size, in_features, out_features)
        if method not in _METHODS:
            raise ValueError(f"method must be 'auto', 'fft' or 'dense', got {method!r}")
        self.method = method
        shape = BlockShape(in_features, out_features, block_size)
        self.weight = nn.Parameter(
            torch.empty(shape.out_blocks, shape.in_blocks, block_size, **factory_kwargs)
        )
        register_bias_and_signs(self, bias, sign_flip, **factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the weight, the bias and (if any) the signs."""
        block_circulant_kaiming_(self.weight, self.in_features, self.out_features)
        reset_bias(self)
        reset_signs(self)

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, Tensor) and (input.dim() == 0 or input.shape[-1] != self.in_features):
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (*, {self.in_features}), "
                f"got {tuple(input.shape)}"
            )
        return block_dft_linear(
            apply_signs(input, self.sign), self.weight, self.bias, self.out_features, method=self.method
        )

    def to_dense(self) -> Tensor:
        """The explicit ``(out_features, in_features)`` matrix (times ``diag(sign)`` with sign_flip)."""
        W = block_matrix(self.weight, self.in_features, self.out_features)
        return W if self.sign is None else W * self.sign.to(W.dtype)

    def extra_repr(self) -> str:
        s = (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"block_size={self.block_size}, bias={self.bias is not None}"
        )
        if self.sign is not None:
            s += ", sign_flip=True"
        if self.method != "auto":
            s += f", method={self.method!r}"
        return s
