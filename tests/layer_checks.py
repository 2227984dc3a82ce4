"""Checks shared by the test suites of DFTLinear and BlockDFTLinear (both drop-in nn.Linear replacements)."""

import torch
from torch import nn


def assert_matches_reference(y, y_ref, inputs, rel=1e-10, allow_unused=False):
    """``y`` and its gradients w.r.t. ``inputs`` (for one random output gradient) equal those of the
    reference ``y_ref``, each to ``rel`` times the reference's largest magnitude (at least 1)."""
    g = torch.randn_like(y_ref)
    grads = torch.autograd.grad(y, inputs, g, allow_unused=allow_unused)
    grads_ref = torch.autograd.grad(y_ref, inputs, g, allow_unused=allow_unused)
    for got, ref in ((y, y_ref), *zip(grads, grads_ref)):
        scale = max(1.0, ref.abs().max().item() if ref.numel() else 1.0)
        torch.testing.assert_close(got, ref, atol=rel * scale, rtol=0)


def check_dtype_against_dense(layer, x):
    """The layer's output has x's dtype and device and matches its dense matrix (float64 reference)."""
    y = layer(x)
    assert y.dtype == x.dtype and y.device.type == x.device.type
    ref = x.double() @ layer.to_dense().double().T + layer.bias.double()
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}.get(x.dtype, 2e-2)
    assert ((y.double() - ref).abs().max() / ref.abs().max()) <= tol
    return y


def check_leading_shapes(layer):
    """Input (*, in_features) for several leading shapes, empty included; gradients keep the shape."""
    p, q = layer.in_features, layer.out_features
    for lead in [(), (0,), (2, 3), (1, 1, 1)]:
        x = torch.randn(*lead, p, requires_grad=True)
        y = layer(x)
        assert y.shape == lead + (q,)
        y.sum().backward()
        assert x.grad.shape == x.shape


def assert_matches_eager(run, layer, x, rtol=0.0, atol=1e-10):
    """``run(x)`` (a compiled, traced or exported form of ``layer``) gives the eager forward and the eager
    gradients of ``sum(y^2)`` w.r.t. the input and the spectrum, to ``rtol``/``atol`` (float64: the traced
    forms run the reference form, eager the hand-written kernels, the same math in another order)."""
    y = run(x)
    grads = torch.autograd.grad(y.pow(2).sum(), (x, layer.spectrum))
    y_eager = layer(x)
    grads_eager = torch.autograd.grad(y_eager.pow(2).sum(), (x, layer.spectrum))
    for got, ref in ((y, y_eager), *zip(grads, grads_eager)):
        torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)


def check_compile_matches_eager(layer, x, **compile_kwargs):
    """torch.compile gives the eager forward and the eager gradients of input and weight."""
    layer, x = layer.double(), x.detach().double().requires_grad_(True)
    assert_matches_eager(torch.compile(layer, **compile_kwargs), layer, x, rtol=1e-10)


def check_trains(model, in_features, classes):
    """20 AdamW steps (the recipe the README gives) on a fixed batch lower the cross-entropy."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = torch.randn(16, in_features), torch.randint(0, classes, (16,))
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def penalty_weight_grad(fn, x, w):
    """d/dw of a gradient penalty ``|d sum(tanh(fn(x)))/dx|^2`` (needs create_graph=True through fn)."""
    y = torch.tanh(fn(x)).sum()
    (gx,) = torch.autograd.grad(y, x, create_graph=True)
    return torch.autograd.grad(gx.pow(2).sum(), w)[0]
