"""Writes to ``layer.weight`` take effect (they load the weight into ``spectrum``, as ``set_weight_`` does):
afterwards forward, ``to_dense()`` and ``weight`` agree, in grad mode, under ``no_grad`` and in inference
mode, on the FFT and dense routes of both layers (``dftnet.layers._weight``)."""

import io

import pytest
import torch
from torch import nn

from dftnet import BlockDFTLinear, DFTLinear
from dftnet.spectral import spectrum_to_weight

F64 = torch.float64
LAYERS = {"dft": lambda **kw: DFTLinear(40, 24, dtype=F64, **kw),
          "block": lambda **kw: BlockDFTLinear(40, 24, 8, dtype=F64, **kw)}
MODES = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


def _zero_first(w):
    w[..., 0] = 0


# name -> (write, the weight it should leave given the weight before and a random tensor r of its shape)
WRITES = {
    "nn.init.normal_": (lambda m, r: nn.init.normal_(m.weight), None),  # compared against the same draw
    "data.copy_": (lambda m, r: m.weight.data.copy_(r), lambda w, r: r),
    "no_grad mul_(0)": (lambda m, r: _no_grad(m.weight.mul_, 0), lambda w, r: 0 * w),
    "assignment": (lambda m, r: setattr(m, "weight", r), lambda w, r: r),
    "setitem": (lambda m, r: _no_grad(m.weight.__setitem__, (..., 0), 5.0),
                lambda w, r: torch.cat([torch.full_like(w[..., :1], 5.0), w[..., 1:]], -1)),
    "write to a view": (lambda m, r: _no_grad(_zero_first, m.weight[..., 2:]),
                        lambda w, r: torch.cat([w[..., :2], torch.zeros_like(w[..., 2:3]), w[..., 3:]], -1)),
    "data assignment": (lambda m, r: setattr(m.weight, "data", r.clone()), lambda w, r: r),
    "detach().add_": (lambda m, r: m.weight.detach().add_(r), lambda w, r: w + r),
    "out=": (lambda m, r: _no_grad(torch.mul, r, 2.0, out=m.weight), lambda w, r: 2 * r),
}


def _no_grad(fn, *args, **kwargs):
    with torch.no_grad():
        return fn(*args, **kwargs)


def assert_consistent(layer, expected):
    """forward == x @ to_dense().T + bias, and weight == expected, in grad mode and in inference."""
    x = torch.randn(3, layer.in_features, dtype=F64)
    for ctx in (torch.enable_grad, torch.no_grad, torch.inference_mode):
        with ctx():
            dense = layer.to_dense()
            torch.testing.assert_close(layer(x), x @ dense.T + layer.bias, rtol=0, atol=1e-10)
            torch.testing.assert_close(layer.weight, expected, rtol=0, atol=1e-10)
            torch.testing.assert_close(dense, layer._matrix(expected), rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["fft", "dense"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_writes_to_weight_take_effect(kind, write, mode, method):
    layer = LAYERS[kind](method=method)
    x = torch.randn(2, 40, dtype=F64)
    with torch.no_grad():
        layer(x)  # fill the inference memo: a write must invalidate what it holds
    before = layer.weight.detach().clone()
    r = torch.randn_like(before)
    do, effect = WRITES[write]
    torch.manual_seed(1)
    with MODES[mode]():
        do(layer, r)
    if effect is None:
        torch.manual_seed(1)
        expected = torch.randn_like(before)
    else:
        expected = effect(before, r)
    assert not torch.equal(expected, before)
    assert_consistent(layer, expected)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_assigning_a_parameter_or_a_non_tensor_raises_naming_set_weight_(kind):
    layer = LAYERS[kind]()
    before = layer.state_dict()
    for value in (nn.Parameter(layer.weight.detach().clone()), None, 1.0):
        with pytest.raises(TypeError, match="set_weight_"):
            layer.weight = value
    with pytest.raises(ValueError, match="shape"):
        layer.weight = torch.zeros(3, dtype=F64)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("kind", list(LAYERS))
def test_the_weight_stays_a_differentiable_function_of_the_spectrum(kind):
    layer = LAYERS[kind]()
    w = layer.weight
    assert w.requires_grad and isinstance(w, torch.Tensor)
    (g,) = torch.autograd.grad(w.pow(2).sum(), layer.spectrum)
    s = layer.spectrum.detach().requires_grad_()
    (g_ref,) = torch.autograd.grad(spectrum_to_weight(s, layer.spectral_scale).pow(2).sum(), s)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    # results of ops, clones and saved copies are plain tensors, with no reference to the layer
    assert type(w * 2) is torch.Tensor and type(w.clone()) is torch.Tensor
    buf = io.BytesIO()
    torch.save(w.detach(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert type(loaded) is torch.Tensor and torch.equal(loaded, w.detach())
    assert repr(w).startswith("tensor(")


@pytest.mark.parametrize("kind", list(LAYERS))
def test_transforms_see_a_plain_weight(kind):
    layer = LAYERS[kind]()
    seen = []

    def f(s):
        seen.append(type(layer.weight))
        return s.sum()

    torch.func.grad(f)(torch.ones(2, dtype=F64))
    assert seen == [torch.Tensor]
