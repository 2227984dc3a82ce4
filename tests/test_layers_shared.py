"""Layer-level checks run against BOTH structured layers, each against its own explicit matrix (to_dense).

The two layers share one pipeline (validation, autocast, half types, route choice, extreme values);
these tests hold both to it: forward and gradients equal the dense product in float64 on every route,
inf/nan patterns equal the dense product's, extreme magnitudes keep float32 accuracy, and the module
behaves like nn.Linear (state_dict, meta-device init, autocast, nn.Sequential training).
"""

import io
import math

import pytest
import torch
from layer_checks import check_dtype_against_dense, check_leading_shapes, check_trains
from torch import nn

from dftnet import BlockDFTLinear, DFTLinear

F64 = torch.float64

# (name, factory(p, q, **kwargs)); shapes where the FFT route is what "auto" takes at batch 64 are
# included, and every test that forces a route says so.
LAYERS = {
    "dft": lambda p, q, **kw: DFTLinear(p, q, **kw),
    "block": lambda p, q, **kw: BlockDFTLinear(p, q, 16, **kw),
}
SHAPES = [(64, 64), (80, 48), (33, 100)]


@pytest.fixture(params=sorted(LAYERS))
def make(request):
    return LAYERS[request.param]


@pytest.mark.parametrize("p,q", SHAPES)
@pytest.mark.parametrize("method", ["auto", "fft", "dense"])
def test_forward_and_gradients_equal_the_explicit_matrix(make, p, q, method):
    layer = make(p, q, dtype=F64, method=method)
    x = torch.randn(3, 5, p, dtype=F64, requires_grad=True)
    y = layer(x)
    W = layer.to_dense()
    ref = x @ W.T + layer.bias
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    params = (x, layer.spectrum, layer.bias)
    got = torch.autograd.grad(y, params, g)
    exp = torch.autograd.grad(ref, params, g)
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


@pytest.mark.parametrize("bad", ["inf", "-inf", "nan", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_non_finite_pattern_equals_the_dense_product(make, bad, dtype):
    p, q = 96, 64
    layer = make(p, q, bias=False, dtype=F64, method="fft", exact_extremes=True)
    x = torch.randn(4, p, dtype=F64)
    if bad == "mixed":
        x[0, 1], x[0, 5], x[2, 3] = math.inf, -math.inf, math.nan
    else:
        x[1, 7] = float(bad)
    with torch.no_grad():
        ref = x @ layer.to_dense().T
        y = layer.to(dtype)(x.to(dtype)).double()
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    assert torch.equal(y[torch.isinf(ref)], ref[torch.isinf(ref)])
    finite = torch.isfinite(ref)
    torch.testing.assert_close(y[finite], ref[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("magnitude", [1e-30, 1e30])
def test_extreme_magnitudes_keep_float32_accuracy(make, magnitude):
    p, q = 128, 96
    layer = make(p, q, bias=False, dtype=F64, method="fft", exact_extremes=True)
    x = torch.randn(5, p, dtype=F64) * magnitude
    with torch.no_grad():
        ref = x @ layer.to_dense().T
        y = layer.float()(x.float()).double()
    assert ((y - ref).abs().max() / ref.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.bfloat16])
def test_dtypes_against_dense(make, dtype):
    check_dtype_against_dense(make(64, 48, dtype=dtype), torch.randn(7, 64, dtype=dtype))


def test_leading_shapes(make):
    check_leading_shapes(make(40, 24))


def test_autocast_returns_the_autocast_dtype(make):
    layer = make(64, 64)
    x = torch.randn(8, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), rtol=1e-2, atol=1e-2)


def test_state_dict_round_trip(make):
    a, b = make(48, 80), make(48, 80)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(3, 48)
    assert torch.equal(a(x), b(x))


def test_version_1_state_dict_loads_into_the_same_matrix(make):
    """Version 1 stored the weight itself under ``weight``: it loads, converted to the spectrum."""
    a = make(48, 80, dtype=F64)
    old = {"weight": a.weight.detach().clone(), "bias": a.bias.detach().clone()}
    b = make(48, 80, dtype=F64)
    b.load_state_dict(old)
    torch.testing.assert_close(b.to_dense(), a.to_dense(), rtol=0, atol=1e-13)
    bad = {"weight": torch.zeros(3), "bias": a.bias.detach()}
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        b.load_state_dict(bad)


def test_meta_device_init_then_to_empty_and_reset(make):
    with torch.device("meta"):
        layer = make(64, 96)
    assert layer.spectrum.is_meta
    layer = layer.to_empty(device="cpu")
    layer.reset_parameters()
    x = torch.randn(4, 64)
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias, rtol=1e-5, atol=1e-5)


def test_weight_is_computed_and_set_weight_loads_it(make):
    layer = make(40, 24, dtype=F64)
    w = torch.randn_like(layer.weight)
    layer.set_weight_(w)
    torch.testing.assert_close(layer.weight, w, rtol=0, atol=1e-13)
    layer.weight = 2 * w  # through the inverse map, as set_weight_ (tests/test_weight_writes.py)
    torch.testing.assert_close(layer.weight, 2 * w, rtol=0, atol=1e-13)
    with pytest.raises(TypeError, match="set_weight_"):
        layer.weight = nn.Parameter(w)  # tying cannot work: the weight is computed
    names = [name for name, _ in layer.named_parameters()]
    assert names == ["spectrum", "bias", "diagonal"] or names == ["spectrum", "bias"]


def test_learned_diagonal_is_in_the_matrix_and_gets_gradients(make):
    layer = make(48, 32, dtype=F64, diagonal=True)
    with torch.no_grad():
        layer.diagonal.uniform_(0.5, 1.5)
    x = torch.randn(4, 48, dtype=F64, requires_grad=True)
    y = layer(x)
    ref = x @ layer.to_dense().T + layer.bias
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, layer.diagonal, layer.spectrum), g)
    exp = torch.autograd.grad(ref, (x, layer.diagonal, layer.spectrum), g)
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_trains_in_sequential(make):
    check_trains(nn.Sequential(make(20, 32), nn.ReLU(), make(32, 5)), 20, 5)


def test_inference_reuses_the_weight_until_the_spectrum_changes(make):
    layer = make(40, 24, dtype=F64)
    x = torch.randn(3, 40, dtype=F64)
    with torch.no_grad():
        assert layer.weight is layer.weight  # cached while nothing changes
        before = layer(x)
        layer.spectrum.add_(0.1)  # an optimizer step, in place: bumps the version counter
        after = layer(x)
        layer.load_state_dict({k: v.clone() for k, v in layer.state_dict().items()})
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, x @ layer.to_dense().T + layer.bias, rtol=0, atol=1e-12)
    assert layer.weight.requires_grad  # with autograd on, never the cached tensor


def test_pruning_and_parametrizations_of_the_spectrum_are_honoured(make):
    """Tools that replace a parameter by a computed attribute (prune, parametrize) still drive forward."""
    from torch.nn.utils import parametrize, prune

    x = torch.randn(5, 40, dtype=F64)
    layer = make(40, 24, dtype=F64)
    prune.l1_unstructured(layer, "spectrum", amount=0.5)
    assert "spectrum" not in layer._parameters
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias, rtol=0, atol=1e-12)

    class Halve(nn.Module):
        def forward(self, s):
            return s / 2

    layer = make(40, 24, dtype=F64)
    dense_before = layer.to_dense()
    parametrize.register_parametrization(layer, "spectrum", Halve())
    torch.testing.assert_close(layer(x), x @ (dense_before / 2).T + layer.bias, rtol=0, atol=1e-12)
    layer(x).sum().backward()
    assert layer.parametrizations.spectrum.original.grad is not None


@pytest.mark.parametrize("make", [lambda: DFTLinear(64, 96), lambda: BlockDFTLinear(64, 96, block_size=16)])
def test_the_inference_memo_is_not_saved_copied_or_kept_by_to(make):
    import copy
    import io
    import pickle

    layer = make().eval()
    with torch.no_grad():
        layer(torch.randn(3, 64))  # fills the memo
        layer.to_dense()
    assert "_structure" in layer.__dict__
    buf = io.BytesIO()
    torch.save(layer, buf)
    saved = buf.getvalue()
    assert b"_InferenceMemo" not in saved and "_structure" not in pickle.loads(pickle.dumps(layer)).__dict__
    clone = copy.deepcopy(layer)
    assert "_structure" not in clone.__dict__
    layer.to(torch.float64)
    assert "_structure" not in layer.__dict__
    x = torch.randn(2, 64, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias)
    torch.testing.assert_close(clone(x.float()), layer(x).float(), rtol=1e-5, atol=1e-5)
