"""The generic checks PyTorch's ``TestModule`` runs on every ``nn`` module, written for both layers, on
their dense and FFT routes, in float32 and float64; the reference is the layer's explicit matrix
(``x @ to_dense().T + bias``), as ``nn.Linear``'s is its weight."""

import io
import pickle

import pytest
import torch
from layer_checks import assert_matches_reference
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

from dftnet import BlockDFTLinear, DFTLinear

P, Q = 20, 12
# name -> (constructor, its positional arguments, keyword arguments): both layers with every optional part
# (sign flip, learned diagonal, bias) and without a bias
LAYERS = {
    "dft": (DFTLinear, (P, Q), {"sign_flip": True}),
    "dft-nobias": (DFTLinear, (P, Q), {"bias": False, "diagonal": False}),
    "block": (BlockDFTLinear, (P, Q, 4), {"sign_flip": True, "diagonal": True}),
    "block-nobias": (BlockDFTLinear, (P, Q, 8), {"bias": False}),
}
DTYPES = [torch.float32, torch.float64]
REL = {torch.float32: 1e-5, torch.float64: 1e-11}


@pytest.fixture(params=list(LAYERS))
def kind(request):
    return request.param


@pytest.fixture(params=["dense", "fft"])
def method(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


def make(kind, method, **factory):
    cls, args, kwargs = LAYERS[kind]
    layer = cls(*args, **kwargs, method=method, **factory)
    if layer.diagonal is not None:
        with torch.no_grad():
            layer.diagonal.uniform_(0.5, 1.5)  # not the identity, so that it shows in every check
    return layer


def reference(layer, x):
    """The explicit product in float64."""
    y = x.double() @ layer.to_dense().double().T
    return y if layer.bias is None else y + layer.bias.double()


def assert_forward_matches(layer, x, rel):
    y = layer(x)
    assert y.shape == (*x.shape[:-1], layer.out_features) and y.dtype == x.dtype and y.device == x.device
    ref = reference(layer, x)
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=rel * scale)
    return y


def test_forward_and_gradients_match_the_matrix(kind, method, dtype, device):
    layer = make(kind, method, dtype=dtype, device=device)
    x = torch.randn(5, P, dtype=dtype, device=device, requires_grad=True)
    assert_forward_matches(layer, x, REL[dtype])
    ref = x @ layer.to_dense().T + (0 if layer.bias is None else layer.bias)
    inputs = (x, *layer.parameters())
    assert_matches_reference(layer(x), ref, inputs, rel=REL[dtype])
    torch.testing.assert_close(layer(x), layer(x), rtol=0, atol=0)  # calls repeat exactly


def test_factory_kwargs(kind, method, dtype, device):
    layer = make(kind, method, dtype=dtype, device=device)
    tensors = list(layer.parameters()) + list(layer.buffers())
    assert tensors and all(t.dtype == dtype and t.device.type == device.type for t in tensors)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:  # no dtype given: the default dtype, as for nn.Linear
        assert all(t.dtype == dtype for t in list(make(kind, method).parameters()) + list(make(kind, method).buffers()))
    finally:
        torch.set_default_dtype(default)
    meta = make(kind, method, dtype=dtype, device="meta")
    assert all(t.is_meta for t in list(meta.parameters()) + list(meta.buffers()))


def test_repr_names_the_settings(kind, method):
    cls, args, kwargs = LAYERS[kind]
    text = repr(make(kind, method))
    assert text.startswith(f"{cls.__name__}(in_features={P}, out_features={Q}") and f"method='{method}'" in text
    assert ("bias=False" in text) == (kwargs.get("bias") is False)
    assert ("sign_flip=True" in text) == bool(kwargs.get("sign_flip"))
    assert str(make(kind, method)) == text


def test_pickling_the_module_and_its_state_dict(kind, method, dtype):
    layer = make(kind, method, dtype=dtype)
    x = torch.randn(4, P, dtype=dtype)
    with torch.no_grad():
        y = layer(x)  # fills the inference memo: it must not be stale after loading
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is type(layer) and repr(loaded) == repr(layer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)
    assert_forward_matches(loaded, x, REL[dtype])
    copied = pickle.loads(pickle.dumps(layer))
    torch.testing.assert_close(copied(x), layer(x), rtol=0, atol=0)

    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = make(kind, method, dtype=dtype)
    fresh.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)


def test_non_contiguous_inputs_and_gradients(kind, method, dtype):
    layer = make(kind, method, dtype=dtype)
    x = torch.randn(P, 2, 3, dtype=dtype).movedim(0, -1)  # (2, 3, P), last dimension strided
    g = torch.randn(Q, 3, 2, dtype=dtype).permute(2, 1, 0)  # (2, 3, Q), strided
    assert not x.is_contiguous() and not g.is_contiguous()
    outputs = []
    for xi, gi in ((x, g), (x.contiguous(), g.contiguous())):
        xi = xi.detach().requires_grad_()
        y = layer(xi)
        outputs.append((y, *torch.autograd.grad(y, (xi, *layer.parameters()), gi)))
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b, rtol=REL[dtype], atol=REL[dtype])
    assert_forward_matches(layer, x, REL[dtype])


def test_gradcheck_and_gradgradcheck_with_batched_grads(kind, method):
    layer = make(kind, method, dtype=torch.float64)
    names = [name for name, _ in layer.named_parameters()]
    values = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    x = torch.randn(3, P, dtype=torch.float64, requires_grad=True)

    def fn(x, *vals):
        return functional_call(layer, dict(zip(names, vals)), (x,))

    assert gradcheck(fn, (x, *values), check_batched_grad=True)
    assert gradgradcheck(fn, (x, *values), check_batched_grad=True)


def test_train_and_eval_modes_give_the_same_output(kind, method, dtype):
    layer = make(kind, method, dtype=dtype)
    x = torch.randn(4, P, dtype=dtype)
    assert layer.training
    y_train = layer(x)
    assert layer.eval() is layer and not layer.training
    y_eval = layer(x)
    with torch.no_grad():
        y_eval_nograd = layer(x)
    assert layer.train() is layer and layer.training
    torch.testing.assert_close(y_eval, y_train, rtol=0, atol=0)
    torch.testing.assert_close(y_eval_nograd, y_train, rtol=REL[dtype], atol=REL[dtype])


def test_construction_under_a_meta_device_context(kind, method, dtype):
    with torch.device("meta"):
        layer = make(kind, method, dtype=dtype)
    assert all(t.is_meta for t in list(layer.parameters()) + list(layer.buffers()))
    layer = layer.to_empty(device="cpu")
    layer.reset_parameters()
    assert_forward_matches(layer, torch.randn(3, P, dtype=dtype), REL[dtype])


@pytest.mark.parametrize("swap", [False, True], ids=["assign", "swap_tensors"])
def test_to_dtype_device_and_to_empty(kind, method, swap):
    torch.__future__.set_swap_module_params_on_conversion(swap)
    try:
        layer = make(kind, method, dtype=torch.float32)
        x = torch.randn(3, P)
        with torch.no_grad():  # (no graph holding the parameters: swap_tensors needs them unshared)
            layer(x)  # the inference memo holds float32 tensors: .to() must not leave them in use
            dense = layer.to_dense()
        assert layer.to(torch.float64) is layer
        assert all(t.dtype == torch.float64 for t in list(layer.parameters()) + list(layer.buffers()))
        torch.testing.assert_close(layer.to_dense(), dense.double(), rtol=1e-6, atol=1e-7)
        with torch.no_grad():
            assert_forward_matches(layer, x.double(), REL[torch.float64])
        layer = layer.to("cpu", torch.float32)
        assert_forward_matches(layer, x, REL[torch.float32])
        empty = layer.to_empty(device="cpu")  # storage only: values are undefined until reset
        assert empty is layer and all(p.device.type == "cpu" for p in layer.parameters())
        layer.reset_parameters()
        assert_forward_matches(layer, x, REL[torch.float32])
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)


@pytest.mark.parametrize("lead", [(), (0,), (0, 3), (2, 0)], ids=["no-batch", "zero", "zero-3", "2-zero"])
def test_zero_batch_and_no_batch_inputs(kind, method, dtype, lead):
    layer = make(kind, method, dtype=dtype)
    x = torch.randn(*lead, P, dtype=dtype, requires_grad=True)
    y = assert_forward_matches(layer, x, REL[dtype])
    assert y.shape == (*lead, Q)
    grads = torch.autograd.grad(y.sum(), (x, *layer.parameters()))
    assert grads[0].shape == x.shape
    if x.numel() == 0:
        assert all(g.abs().sum() == 0 for g in grads[1:])  # nothing to learn from an empty batch
    else:
        torch.testing.assert_close(grads[0], layer.to_dense().sum(0), rtol=REL[dtype], atol=REL[dtype])


# The shapes of the two TestModule cases: p < q, p > q and p = q; (300, 785) and (256, 256) take the FFT
# route with an FFT length above p (1,120) and the circular route with its elementwise gradient.
SHAPES = [(300, 785), (785, 300), (256, 256), (P, Q), (Q, P), (16, 16)]


def make_shaped(kind, method, p, q, dtype=torch.float32):
    cls = DFTLinear if kind.startswith("dft") else BlockDFTLinear
    args = (p, q) if cls is DFTLinear else (p, q, 4)
    layer = cls(*args, method=method, dtype=dtype, sign_flip=True, diagonal=True, bias=not kind.endswith("nobias"))
    with torch.no_grad():
        layer.diagonal.uniform_(0.5, 1.5)
    return layer


def non_contiguous(t):
    """TestModule's ``_make_non_contiguous``: the same values, every other element of a doubled tensor."""
    return torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach().requires_grad_(t.requires_grad)


@pytest.mark.parametrize("p,q", SHAPES, ids=[f"{p}x{q}" for p, q in SHAPES])
@pytest.mark.parametrize("lead", [(), (5,), (40,), (2, 3)], ids=["no-batch", "5", "40", "2x3"])
def test_memory_format_gradients_are_contiguous(kind, method, p, q, lead):
    """TestModule.test_memory_format's gradient check: grad_input and every parameter gradient come back
    contiguous, as nn.Linear's do (not views into an FFT buffer, not the real part of a complex tensor)."""
    layer = make_shaped(kind, method, p, q)
    x = torch.randn(*lead, p, requires_grad=True)
    y = layer(x)
    assert y.is_contiguous()
    grads = torch.autograd.grad(y, (x, *layer.parameters()), torch.randn_like(y))
    names = ["input", *(name for name, _ in layer.named_parameters())]
    for name, grad in zip(names, grads):
        assert grad.is_contiguous(), f"{name}: strides {grad.stride()} for shape {tuple(grad.shape)}"
    assert grads[0].view(-1).shape == (x.numel(),)


@pytest.mark.parametrize("p,q", SHAPES, ids=[f"{p}x{q}" for p, q in SHAPES])
@pytest.mark.parametrize("rows", [4, 300])
def test_non_contiguous_tensors_give_the_contiguous_gradients(kind, method, p, q, rows):
    """TestModule.test_non_contiguous_tensors: every combination of a strided input and a strided output
    gradient gives the output and gradients of the contiguous call, within TestModule's default tolerances
    (assert_close's); the FFT route copies to one layout first, so there they agree to the bit."""
    layer = make_shaped(kind, method, p, q)
    x = torch.randn(rows, p)
    g = torch.randn(rows, q)

    def run(xi, gi):
        xi = xi.detach().requires_grad_()
        y = layer(xi)
        return (y, *torch.autograd.grad(y, (xi, *layer.parameters()), gi))

    expected = run(x, g)
    for xi, gi in ((non_contiguous(x), g), (x, non_contiguous(g)), (non_contiguous(x), non_contiguous(g))):
        assert not (xi.is_contiguous() and gi.is_contiguous())
        for got, want in zip(run(xi, gi), expected):
            if method == "fft":
                torch.testing.assert_close(got, want, rtol=0, atol=0)
            else:
                torch.testing.assert_close(got, want)
