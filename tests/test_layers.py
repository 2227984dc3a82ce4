"""DFTLinear as an nn.Module: init, state, dtypes, devices, compile, autocast, torch.func, bad input."""

import io
import math

import pytest
import torch
from layer_checks import check_compile_matches_eager, check_dtype_against_dense, check_leading_shapes, check_trains
from torch import nn

from dftnet import DFTLinear
from dftnet.functional import dft_linear, dft_matrix


def test_parameters_and_repr():
    layer = DFTLinear(784, 4096)
    assert layer.weight.shape == (4096,)
    assert layer.bias.shape == (4096,)
    assert sum(p.numel() for p in layer.parameters()) == 4096 + 4096 + 784  # spectrum, bias, diagonal
    assert repr(layer) == "DFTLinear(in_features=784, out_features=4096, bias=True)"
    assert sum(p.numel() for p in DFTLinear(784, 4096, diagonal=False).parameters()) == 4096 + 4096
    assert "diagonal=False" in repr(DFTLinear(784, 4096, diagonal=False))
    assert DFTLinear(3, 2, bias=False).bias is None
    assert "fft_size=16" in repr(DFTLinear(9, 8, fft_size=16))


def test_reset_parameters_is_random_and_bias_like_linear():
    layer = DFTLinear(100, 50)
    before = layer.weight.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.weight)
    assert layer.bias.abs().max() <= 1 / math.sqrt(100)
    assert abs(layer.weight.sum().item()) < 1e-4  # zero DC gain
    assert 0.5 < layer.weight.var().item() * 100 / 2 < 2  # Var(w) ~ 2/p (He)


def test_state_dict_round_trip():
    a = DFTLinear(30, 12)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = DFTLinear(30, 12)
    b.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(4, 30)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dtypes(device, dtype):
    layer = DFTLinear(40, 24, device=device, dtype=dtype)
    check_dtype_against_dense(layer, torch.randn(3, 40, device=device, dtype=dtype))


def test_leading_shapes():
    check_leading_shapes(DFTLinear(10, 6))


def test_torch_compile_same_results():
    check_compile_matches_eager(DFTLinear(100, 48, method="fft"), torch.randn(8, 100, requires_grad=True))


def test_autocast_returns_autocast_dtype_and_fp32_accuracy():
    layer = DFTLinear(64, 96, method="fft")
    x = torch.randn(4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    ref = layer(x)
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2)
    assert layer.spectrum.grad.dtype == torch.float32


def test_torch_func_grad_vmap_jacrev():
    from torch.func import grad, jacrev, vmap

    w = torch.randn(6, dtype=torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64)

    def loss(w, x):
        return dft_linear(x, w, method="fft").pow(2).sum()

    w_ = w.clone().requires_grad_(True)
    loss(w_, x).backward()
    torch.testing.assert_close(grad(loss)(w, x), w_.grad)
    per_example = vmap(grad(loss), in_dims=(None, 0))(w, x.unsqueeze(1))
    torch.testing.assert_close(per_example.sum(0), w_.grad)
    J = jacrev(lambda v: dft_linear(v, w, method="fft"))(x[0])
    torch.testing.assert_close(J, dft_matrix(w, 6, 6))


def test_drop_in_replacement_in_sequential():
    check_trains(nn.Sequential(DFTLinear(20, 32), nn.ReLU(), DFTLinear(32, 5)), 20, 5)


# --- bad input ---------------------------------------------------------------------------------


def test_wrong_last_dimension():
    layer = DFTLinear(10, 6)
    with pytest.raises(ValueError, match=r"expected input of shape \(\*, 10\), got \(3, 9\)"):
        layer(torch.randn(3, 9))
    with pytest.raises(ValueError, match="0-d"):
        dft_linear(torch.tensor(1.0), torch.randn(1))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_real_float_input_is_a_type_error(dtype):
    layer = DFTLinear(4, 4)
    with pytest.raises(TypeError, match=f"real floating-point input, got dtype {dtype}"):
        layer(torch.zeros(2, 4, dtype=dtype))


def test_dtype_mismatch_is_a_type_error():
    layer = DFTLinear(4, 4)
    with pytest.raises(TypeError, match="input torch.float64, weight torch.float32"):
        layer(torch.zeros(2, 4, dtype=torch.float64))


def test_device_mismatch_is_a_value_error():
    w = torch.randn(4, device="meta")
    with pytest.raises(ValueError, match="expected weight on the input's device cpu, got meta"):
        dft_linear(torch.randn(2, 4), w)


def test_functional_shape_errors():
    with pytest.raises(ValueError, match="needs max\\(in_features, out_features\\) = 8"):
        dft_linear(torch.randn(2, 5), torch.randn(8), out_features=6)
    with pytest.raises(ValueError, match="1-D weight"):
        dft_linear(torch.randn(2, 4), torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"bias of shape \(4,\), got \(3,\)"):
        dft_linear(torch.randn(2, 4), torch.randn(4), torch.randn(3))
    with pytest.raises(ValueError, match="fft_size must be n"):
        dft_linear(torch.randn(2, 5), torch.randn(8), out_features=8, fft_size=10)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True, None])
def test_bad_constructor_sizes(bad):
    with pytest.raises(ValueError, match=f"in_features must be a positive integer, got {bad!r}"):
        DFTLinear(bad, 4)
    with pytest.raises(ValueError, match="out_features must be a positive integer"):
        DFTLinear(4, bad)


def test_activation_checkpointing_gives_the_same_gradients():
    import torch.utils.checkpoint as cp

    model = nn.Sequential(DFTLinear(50, 80, dtype=torch.float64), nn.ReLU(), DFTLinear(80, 7, dtype=torch.float64))
    x = torch.randn(6, 50, dtype=torch.float64)
    model(x).pow(2).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    cp.checkpoint(model, x, use_reentrant=False).pow(2).sum().backward()
    for a, b in zip(ref, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b)


def test_sign_flip_is_in_state_dict_and_dense_matrix():
    a = DFTLinear(12, 9, sign_flip=True, dtype=torch.float64)
    assert "sign" in a.state_dict() and set(a.sign.tolist()) <= {-1.0, 1.0}
    x = torch.randn(3, 12, dtype=torch.float64)
    torch.testing.assert_close(a(x), x @ a.to_dense().T + a.bias)
    b = DFTLinear(12, 9, sign_flip=True, dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))
