"""Batched gradients (the autograd engine's own vmap over backward) on every route of both layers, in
float64 against the layers' explicit matrix: ``torch.autograd.grad(..., is_grads_batched=True)``,
``jacobian``/``hessian`` with ``vectorize=True``, and gradcheck/gradgradcheck with ``check_batched_grad``."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call

from dftnet import BlockDFTLinear, DFTLinear
from dftnet.functional import block_dft_linear, dft_linear

F64 = torch.float64
TOL = {"rtol": 0, "atol": 1e-10}

# name -> (layer factory, chunked): every route of both layers (the plan's L = n is the circular route, a
# longer L the linear one; tiny chunks send any batch through the chunked kernels)
CASES = {
    "dft-circular": (lambda: DFTLinear(12, 20, method="fft"), False),
    "dft-circular-hartley": (lambda: DFTLinear(300, 260, method="fft"), False),  # n > 256: FFT, not cas matrix
    "dft-linear": (lambda: DFTLinear(10, 8, method="fft", fft_size=32), False),
    "dft-dense": (lambda: DFTLinear(10, 8, method="dense"), False),
    "dft-chunked-circular": (lambda: DFTLinear(12, 20, method="fft"), True),
    "dft-chunked-linear": (lambda: DFTLinear(10, 8, method="fft", fft_size=32), True),
    "dft-recompute-signs": (lambda: DFTLinear(16, 16, method="fft", recompute_spectrum=True, sign_flip=True), False),
    "block-fft": (lambda: BlockDFTLinear(10, 7, 4, method="fft", diagonal=True), False),
    "block-dense": (lambda: BlockDFTLinear(10, 7, 4, method="dense"), False),
}


@pytest.fixture(params=list(CASES))
def layer(request, monkeypatch):
    make, chunked = CASES[request.param]
    if chunked:
        import dftnet.kernels.circulant as kernels

        monkeypatch.setattr(kernels, "ONE_CHUNK_BYTES", 0)
        monkeypatch.setattr(kernels, "MIN_CHUNK_ROWS", 3)
        monkeypatch.setattr(kernels, "SMALL_BATCH_ROWS", 0)
    layer = make().to(F64)
    if layer.diagonal is not None:
        with torch.no_grad():
            layer.diagonal.uniform_(0.5, 1.5)
    return layer


def params(layer):
    return {name: p for name, p in layer.named_parameters()}


def run(layer, x, values):
    """The layer's forward with its parameters replaced by ``values`` (the eager kernels run: no transform)."""
    return functional_call(layer, values, (x,))


def reference(layer, x, values):
    """``x @ to_dense().T + bias`` for the same parameter values: plain ops, which the engine's vmap batches."""
    with torch.nn.utils.stateless._reparametrize_module(layer, values):
        dense = layer.to_dense()
    return x @ dense.T + values["bias"]


def test_is_grads_batched_matches_the_matrix(layer):
    x = torch.randn(2, 3, layer.in_features, dtype=F64, requires_grad=True)
    values = params(layer)
    inputs = (x, *values.values())
    y, y_ref = run(layer, x, values), reference(layer, x, values)
    v = torch.randn(4, *y.shape, dtype=F64)
    got = torch.autograd.grad(y, inputs, v, is_grads_batched=True)
    exp = torch.autograd.grad(y_ref, inputs, v, is_grads_batched=True)
    torch.testing.assert_close(y, y_ref, **TOL)
    for a, b in zip(got, exp):
        assert a.shape == (4, *b.shape[1:])
        torch.testing.assert_close(a, b, **TOL)


def test_vectorized_jacobian_and_hessian_match_the_matrix(layer):
    x = torch.randn(5, layer.in_features, dtype=F64)
    values = {k: v.detach() for k, v in params(layer).items()}
    J = jacobian(lambda x: run(layer, x, values), x, vectorize=True)
    torch.testing.assert_close(J, jacobian(lambda x: reference(layer, x, values), x, vectorize=True), **TOL)

    def of_spectrum(fn):
        return lambda s: fn(layer, x, {**values, "spectrum": s})

    s = values["spectrum"]
    torch.testing.assert_close(jacobian(of_spectrum(run), s, vectorize=True),
                               jacobian(of_spectrum(reference), s, vectorize=True), **TOL)
    x1 = x[:2]  # the Hessian of a quadratic form of the outputs, in x and in the spectrum
    H = hessian(lambda x: run(layer, x, values).pow(2).sum(), x1, vectorize=True)
    torch.testing.assert_close(H, hessian(lambda x: reference(layer, x, values).pow(2).sum(), x1, vectorize=True),
                               **TOL)
    if s.numel() <= 64:
        H = hessian(lambda s: of_spectrum(run)(s).pow(2).sum(), s, vectorize=True)
        H_ref = hessian(lambda s: of_spectrum(reference)(s).pow(2).sum(), s, vectorize=True)
        torch.testing.assert_close(H, H_ref, **TOL)


def test_gradcheck_and_gradgradcheck_with_batched_grads(layer):
    if layer.in_features > 64:
        pytest.skip("numerical Jacobians of the n > 256 layer are slow; its batched gradients are checked above")
    names = list(params(layer))
    values = [p.detach().clone().requires_grad_() for p in params(layer).values()]
    x = torch.randn(4, layer.in_features, dtype=F64, requires_grad=True)

    def fn(x, *vals):
        return run(layer, x, dict(zip(names, vals)))

    assert gradcheck(fn, (x, *values), check_batched_grad=True)
    assert gradgradcheck(fn, (x, *values), check_batched_grad=True)


@pytest.mark.parametrize("kind", ["dft-circular", "dft-linear", "block"])
def test_functional_forms_batched(kind):
    """The functional forms, whose parameter is the weight itself (no spectral map)."""
    p, q = 10, 8
    x = torch.randn(3, p, dtype=F64, requires_grad=True)
    b = torch.randn(q, dtype=F64, requires_grad=True)
    if kind == "block":
        w = torch.randn(2, 3, 4, dtype=F64, requires_grad=True)
        fn = lambda x, w, b: block_dft_linear(x, w, b, q, method="fft")  # noqa: E731
    else:
        w = torch.randn(p, dtype=F64, requires_grad=True)
        L = 10 if kind == "dft-circular" else 32
        fn = lambda x, w, b: dft_linear(x, w, b, q, method="fft", fft_size=L)  # noqa: E731
    assert gradcheck(fn, (x, w, b), check_batched_grad=True)
    assert gradgradcheck(fn, (x, w, b), check_batched_grad=True)
