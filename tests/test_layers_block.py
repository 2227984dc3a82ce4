"""BlockDFTLinear as a module: parameters, init, sign flips, state dicts, dtypes, autocast, shapes, compile,
torch.func, training, and its errors (its kernels are in test_kernels_block.py)."""

import io
import math

import pytest
import torch
from layer_checks import (
    check_compile_matches_eager,
    check_dtype_against_dense,
    check_leading_shapes,
    check_trains,
)
from torch import nn

from dftnet import BlockDFTLinear
from dftnet._signs import apply_signs, random_signs, register_sign_buffer
from dftnet.functional import block_dft_linear, block_matrix

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: MKL's OpenMP fan-out of every batched FFT costs more than it saves."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_parameters_and_repr():
    layer = BlockDFTLinear(784, 4096, 64)
    assert layer.weight.shape == (64, 13, 64)
    assert layer.bias.shape == (4096,)
    assert layer.sign is None
    assert repr(layer) == "BlockDFTLinear(in_features=784, out_features=4096, block_size=64, bias=True)"
    assert BlockDFTLinear(3, 2, 2, bias=False).bias is None
    assert "sign_flip=True" in repr(BlockDFTLinear(9, 8, 4, sign_flip=True))
    assert "method='fft'" in repr(BlockDFTLinear(9, 8, 4, method="fft"))


def test_reset_parameters_and_init_statistics():
    p, k = 256, 16
    layer = BlockDFTLinear(p, 128, k)
    before = layer.weight.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.weight)
    assert layer.bias.abs().max() <= 1 / math.sqrt(p)
    assert layer.weight.sum(-1).abs().max() < 1e-4  # zero DC gain per block
    spectrum = torch.fft.rfft(layer.weight, dim=-1).abs()[..., 1:]
    torch.testing.assert_close(spectrum, torch.full_like(spectrum, spectrum[0, 0, 0].item()))  # flat
    assert 2 <= layer.weight.var().item() * p <= 2 / (1 - 1 / math.pi) + 0.01  # Var(w) = g / p, He-like


@pytest.mark.parametrize("width,k", [(64, 8), (256, 16), (256, 3), (100, 16), (96, 2), (64, 64)])
def test_deep_relu_stack_keeps_activation_scale(width, k):
    for seed in range(5):
        torch.manual_seed(seed)
        x = torch.randn(512, width)
        h = x
        for _ in range(10):
            h = torch.relu(BlockDFTLinear(width, width, k, bias=False)(h))
        ratio = (h.pow(2).mean() / x.pow(2).mean()).sqrt().item()
        assert 0.5 <= ratio <= 2.0, (seed, ratio)


def test_non_square_stack_keeps_activation_scale():
    torch.manual_seed(0)
    widths = [50, 120, 77, 200, 64, 33, 90]
    x = torch.randn(1024, widths[0])
    h = x
    for p, q in zip(widths, widths[1:]):
        h = torch.relu(BlockDFTLinear(p, q, 16, bias=False)(h))
    ratio = (h.pow(2).mean() / x.pow(2).mean()).sqrt().item()
    assert 0.5 <= ratio <= 2.0, ratio


def test_sign_flip():
    p, q, k = 10, 7, 4
    layer = BlockDFTLinear(p, q, k, dtype=F64, sign_flip=True)
    assert layer.sign.shape == (p,) and layer.sign.dtype == F64
    assert set(layer.sign.tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(layer.to_dense(), block_matrix(layer.weight, p, q) @ torch.diag(layer.sign))
    x = torch.randn(3, p, dtype=F64)
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias, rtol=0, atol=1e-12)
    plain = BlockDFTLinear(p, q, k, dtype=F64)
    plain.load_state_dict({n: t for n, t in layer.state_dict().items() if n != "sign"})
    torch.testing.assert_close(plain(x * layer.sign), layer(x), rtol=0, atol=0)
    signs = torch.stack([BlockDFTLinear(64, 8, 8, sign_flip=True).sign for _ in range(4)])
    assert 0 < (signs > 0).sum() < signs.numel()
    assert layer.float().sign.dtype == torch.float32


def test_sign_helpers():
    m = nn.Module()
    register_sign_buffer(m, 5, False)
    assert m.sign is None and "sign" not in m.state_dict()
    register_sign_buffer(m, 5, True, dtype=torch.bfloat16)
    assert m.sign.dtype == torch.bfloat16 and "sign" in m.state_dict()
    x = torch.randn(2, 5)
    torch.testing.assert_close(apply_signs(x, m.sign), x * m.sign.float())
    assert apply_signs(x, None) is x
    g = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    assert torch.equal(random_signs(9, generator=g), random_signs(9, generator=g2))


def test_state_dict_round_trip_with_signs():
    a = BlockDFTLinear(30, 12, 5, sign_flip=True)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = BlockDFTLinear(30, 12, 5, sign_flip=True)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(a.sign, b.sign)
    x = torch.randn(4, 30)
    assert torch.equal(a(x), b(x))
    with pytest.raises(RuntimeError, match="sign"):
        BlockDFTLinear(30, 12, 5).load_state_dict(a.state_dict())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["fft", "auto"])
def test_dtypes(device, dtype, method):
    layer = BlockDFTLinear(40, 24, 8, device=device, dtype=dtype, method=method, sign_flip=True)
    y = check_dtype_against_dense(layer, torch.randn(3, 40, device=device, dtype=dtype))
    y.float().sum().backward()
    assert layer.spectrum.grad.dtype == dtype


def test_autocast_returns_autocast_dtype_and_fp32_accuracy():
    layer = BlockDFTLinear(64, 96, 16, method="fft")
    x = torch.randn(4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), rtol=1e-2, atol=1e-2)
    assert layer.spectrum.grad.dtype == torch.float32


def test_leading_shapes():
    check_leading_shapes(BlockDFTLinear(10, 6, 4, method="fft"))


def test_torch_compile_same_results():
    """Traced whole (fullgraph) through dynamo and AOT autograd; "aot_eager" skips inductor's C++ build."""
    layer = BlockDFTLinear(50, 36, 8, method="fft", sign_flip=True)
    check_compile_matches_eager(layer, torch.randn(8, 50, requires_grad=True), backend="aot_eager", fullgraph=True)


def test_torch_func_grad_vmap_jacrev():
    from torch.func import grad, jacrev, vmap

    p, q, k = 7, 5, 3
    w = torch.randn(2, 3, k, dtype=F64)
    x = torch.randn(4, p, dtype=F64)

    def loss(w, x):
        return block_dft_linear(x, w, None, q, method="fft").pow(2).sum()

    w_ = w.clone().requires_grad_(True)
    loss(w_, x).backward()
    torch.testing.assert_close(grad(loss)(w, x), w_.grad)
    per_example = vmap(grad(loss), in_dims=(None, 0))(w, x.unsqueeze(1))
    torch.testing.assert_close(per_example.sum(0), w_.grad)
    J = jacrev(lambda v: block_dft_linear(v, w, None, q, method="fft"))(x[0])
    torch.testing.assert_close(J, block_matrix(w, p, q))


def test_trains_in_sequential():
    check_trains(nn.Sequential(BlockDFTLinear(20, 32, 8), nn.ReLU(), BlockDFTLinear(32, 5, 4, sign_flip=True)), 20, 5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True, None])
def test_bad_constructor_sizes(bad):
    with pytest.raises(ValueError, match=f"in_features must be a positive integer, got {bad!r}"):
        BlockDFTLinear(bad, 4, 2)
    with pytest.raises(ValueError, match=f"out_features must be a positive integer, got {bad!r}"):
        BlockDFTLinear(4, bad, 2)
    with pytest.raises(ValueError, match=f"block_size must be a positive integer, got {bad!r}"):
        BlockDFTLinear(4, 4, bad)


def test_block_size_larger_than_the_layer():
    with pytest.raises(ValueError, match=r"at most max\(in_features, out_features\) = 6, got 7"):
        BlockDFTLinear(6, 3, 7)
    with pytest.raises(ValueError, match="method must be"):
        BlockDFTLinear(6, 3, 2, method="fast")


def test_wrong_last_dimension():
    layer = BlockDFTLinear(10, 6, 3)
    with pytest.raises(ValueError, match=r"expected input of shape \(\*, 10\), got \(3, 9\)"):
        layer(torch.randn(3, 9))
    with pytest.raises(ValueError, match="0-d"):
        block_dft_linear(torch.tensor(1.0), torch.randn(1, 1, 1))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_real_float_input_is_a_type_error(dtype):
    for layer in (BlockDFTLinear(4, 4, 2), BlockDFTLinear(4, 4, 2, sign_flip=True)):
        with pytest.raises(TypeError, match=f"real floating-point input, got dtype {dtype}"):
            layer(torch.zeros(2, 4, dtype=dtype))


def test_dtype_mismatch_is_a_type_error():
    layer = BlockDFTLinear(4, 4, 2)
    with pytest.raises(TypeError, match="input torch.float64, weight torch.float32"):
        layer(torch.zeros(2, 4, dtype=torch.float64))


def test_device_mismatch_is_a_value_error():
    w = torch.randn(2, 2, 2, device="meta")
    with pytest.raises(ValueError, match="expected weight on the input's device cpu, got meta"):
        block_dft_linear(torch.randn(2, 4), w)

