"""The block-circulant kernels: every route equals the explicit block-circulant matrix, forward and
backward, at both ends (block size 1, one block); the module's behaviour is in test_layers_block.py."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_checks import assert_matches_reference, penalty_weight_grad
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from dftnet import BlockDFTLinear, DFTLinear
from dftnet.functional import block_dft_linear, block_matrix, dft_linear

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: MKL's OpenMP fan-out of every batched FFT costs more than it saves,
    and on a busy machine each barrier waits for a time slice (~12 ms per FFT call with 2 threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def nblocks(m, k):
    return -(-m // k)


def reference_matrix(weight, p, q):
    """Block (r, c) row i is w_rc rotated left by i, built with torch.roll (independent of block_matrix)."""
    R, C, k = weight.shape
    blocks = torch.stack([torch.roll(weight, -i, dims=-1) for i in range(k)], dim=-2)  # (R, C, k, k)
    return blocks.permute(0, 2, 1, 3).reshape(R * k, C * k)[:q, :p]


def check_against_dense(x, p, q, k, **call_kwargs):
    """Forward, grad_input, grad_weight and grad_bias equal the dense product's (float64)."""
    w = torch.randn(nblocks(q, k), nblocks(p, k), k, dtype=F64, requires_grad=True)
    b = torch.randn(q, dtype=F64, requires_grad=True)
    x = x.detach().requires_grad_(True)
    y = block_dft_linear(x, w, b, q, **call_kwargs)
    y_ref = x @ reference_matrix(w, p, q).T + b
    assert y.shape == x.shape[:-1] + (q,)
    assert_matches_reference(y, y_ref, (x, w, b))


def test_block_matrix_matches_definition():
    for p, q, k in [(1, 1, 1), (5, 7, 3), (7, 5, 3), (8, 8, 4), (6, 2, 6), (10, 3, 1)]:
        w = torch.randn(nblocks(q, k), nblocks(p, k), k, dtype=F64)
        W = block_matrix(w, p, q)
        for i in range(q):
            for j in range(p):
                assert W[i, j] == w[i // k, j // k, (i + j) % k]
        assert torch.equal(W, reference_matrix(w, p, q))


@settings(max_examples=40, deadline=None)
@given(
    p=st.integers(1, 100),
    q=st.integers(1, 100),
    lead=st.sampled_from([(), (0,), (2, 3)]),
    data=st.data(),
)
def test_hypothesis_matches_dense(p, q, lead, data):
    k = data.draw(st.integers(1, min(40, max(p, q))), label="k")
    x = torch.randn(*lead, p, dtype=F64)
    check_against_dense(x, p, q, k, method="fft")
    check_against_dense(x, p, q, k, method="dense")
    check_against_dense(x, p, q, k)  # auto


@pytest.mark.parametrize(
    "p,q,k", [(5, 8, 3), (8, 5, 3), (6, 6, 2), (7, 4, 7), (4, 9, 9), (5, 3, 1), (12, 12, 4)]
)
def test_gradcheck_and_gradgradcheck(p, q, k):
    x = torch.randn(2, 3, p, dtype=F64, requires_grad=True)
    w = torch.randn(nblocks(q, k), nblocks(p, k), k, dtype=F64, requires_grad=True)
    b = torch.randn(q, dtype=F64, requires_grad=True)

    def f(x, w, b):
        return block_dft_linear(x, w, b, q, method="fft")

    assert gradcheck(f, (x, w, b))
    assert gradgradcheck(f, (x, w, b))


def test_gradient_penalty_matches_dense():
    """A gradient penalty (create_graph=True) gives the same weight gradient as with the dense matrix."""
    p, q, k = 11, 7, 4
    w = torch.randn(2, 3, k, dtype=F64, requires_grad=True)
    x = torch.randn(4, p, dtype=F64, requires_grad=True)
    got = penalty_weight_grad(lambda x: block_dft_linear(x, w, None, q, method="fft"), x, w)
    ref = penalty_weight_grad(lambda x: x @ block_matrix(w, p, q).T, x, w)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


# --- both ends: k = 1 is nn.Linear, one block is DFTLinear ---------------------------------------


@pytest.mark.parametrize("method", ["fft", "dense"])
def test_inference_follows_in_place_updates(method):
    """Inference keeps the weight's spectrum (fft) or matrix (dense) while the parameter is unchanged; an
    in-place update (an optimizer step) must be seen by the next call."""
    layer = BlockDFTLinear(10, 7, block_size=4, method=method, dtype=F64)
    x = torch.randn(3, 10, dtype=F64)
    for _ in range(3):
        with torch.no_grad():
            torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias)
            layer.spectrum.mul_(1.5)
        y = layer(x)  # training mode (the parameter requires grad): the autograd kernel, same values
        torch.testing.assert_close(y, x @ layer.to_dense().detach().T + layer.bias)


@pytest.mark.parametrize("method", ["fft", "dense", "auto"])
def test_block_size_one_is_a_dense_layer(method):
    p, q = 13, 6
    layer = BlockDFTLinear(p, q, 1, dtype=F64, method=method)
    assert layer.weight.shape == (q, p, 1)
    x = torch.randn(5, p, dtype=F64, requires_grad=True)
    y = layer(x)
    y_ref = nn.functional.linear(x, layer.weight[..., 0], layer.bias)
    if method == "fft":
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-13)
    else:
        assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, layer.spectrum, layer.bias), g)
    ref = torch.autograd.grad(y_ref, (x, layer.spectrum, layer.bias), g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


@pytest.mark.parametrize("p,q", [(20, 30), (30, 20), (17, 17), (100, 1), (1, 64), (64, 96)])
@pytest.mark.parametrize("method", ["fft", "auto"])
def test_one_block_is_dft_linear(p, q, method):
    n = max(p, q)
    block = BlockDFTLinear(p, q, n, dtype=F64, method=method)
    dft = DFTLinear(p, q, dtype=F64, method="fft" if method == "fft" else "auto")
    assert block.weight.shape == (1, 1, n)
    with torch.no_grad():
        dft.set_weight_(block.weight[0, 0])
        dft.bias.copy_(block.bias)
    torch.testing.assert_close(block.to_dense(), dft.to_dense(), rtol=0, atol=1e-13)
    x = torch.randn(2, 3, p, dtype=F64, requires_grad=True)
    yb, yd = block(x), dft(x)
    torch.testing.assert_close(yb, yd, rtol=0, atol=1e-12)
    g = torch.randn_like(yb)
    wb = block.weight.detach().requires_grad_()
    wd = wb[0, 0].detach().requires_grad_()
    m = "fft" if method == "fft" else "auto"
    yb = block_dft_linear(x, wb, block.bias, q, method=m)
    yd = dft_linear(x, wd, dft.bias, q, method=m)
    gb = torch.autograd.grad(yb, (x, wb, block.bias), g)
    gd = torch.autograd.grad(yd, (x, wd, dft.bias), g)
    torch.testing.assert_close(gb[0], gd[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(gb[1][0, 0], gd[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(gb[2], gd[2], rtol=0, atol=1e-12)


# --- the module ----------------------------------------------------------------------------------


# --- bad input ---------------------------------------------------------------------------------


def test_functional_shape_errors():
    with pytest.raises(ValueError, match=r"needs in_features in \[5, 8\] and out_features in \[5, 8\]"):
        block_dft_linear(torch.randn(2, 9), torch.randn(2, 2, 4), out_features=6)
    with pytest.raises(ValueError, match="out_features in"):
        block_dft_linear(torch.randn(2, 8), torch.randn(2, 2, 4), out_features=3)
    with pytest.raises(ValueError, match="3-D weight"):
        block_dft_linear(torch.randn(2, 4), torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"bias of shape \(8,\), got \(3,\)"):
        block_dft_linear(torch.randn(2, 8), torch.randn(2, 2, 4), torch.randn(3))
    with pytest.raises(ValueError, match="block_size must be at most"):
        block_dft_linear(torch.randn(2, 3), torch.randn(1, 1, 8), out_features=5)
    with pytest.raises(ValueError, match="method must be one of"):
        block_dft_linear(torch.randn(2, 8), torch.randn(2, 2, 4), method="fast")
    with pytest.raises(ValueError, match="does not tile"):
        block_matrix(torch.randn(2, 2, 4), 9, 8)
