"""The kernels fed the layer's stored spectrum (``scale`` set) equal the explicit matrix of the weight it
defines, forward and backward, on every route: circular (elementwise spectrum, no weight FFT), linear
(taps of the computed weight), dense, chunked and few-row kernels, inference with the memo, and double
backward."""

import pytest
import torch
from layer_checks import assert_matches_reference
from torch.autograd import gradcheck, gradgradcheck

from dftnet._dispatch.pipeline import structured_linear
from dftnet._dispatch.routes import Circulant
from dftnet.functional import dft_matrix
from dftnet.kernels.taps import ParamKind
from dftnet.spectral import conj_rfft_of_weight, spectrum_grad, spectrum_to_weight

F64 = torch.float64
SCALE = 0.7


def routes(p, q):
    n = max(p, q)
    return sorted({n, p + q - 1})


def run(x, s, b, p, q, L, method, recompute=False, memo=False):
    structure = Circulant(p, q, None if method == "dense" else L, recompute, ParamKind(SCALE), memo=memo)
    return structured_linear(structure, x, s, b, method)


def check(lead, p, q, L, method, recompute=False):
    n = max(p, q)
    x = torch.randn(*lead, p, dtype=F64, requires_grad=True)
    s = torch.randn(n, dtype=F64, requires_grad=True)
    b = torch.randn(q, dtype=F64, requires_grad=True)
    y = run(x, s, b, p, q, L, method, recompute)
    y_ref = x @ dft_matrix(spectrum_to_weight(s, SCALE), p, q).T + b
    assert_matches_reference(y, y_ref, (x, s, b))
    with torch.no_grad():
        torch.testing.assert_close(run(x, s, b, p, q, L, method, memo=True), y_ref,
                                   atol=1e-10 * max(1.0, y_ref.abs().max().item()), rtol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 9, 64])
def test_elementwise_maps_equal_the_ffts(n):
    s = torch.randn(2, 3, n, dtype=F64, requires_grad=True)
    w = spectrum_to_weight(s, SCALE)
    torch.testing.assert_close(conj_rfft_of_weight(s, SCALE), torch.fft.rfft(w).conj(), rtol=0, atol=1e-12)
    gw = torch.randn_like(w)
    (ref,) = torch.autograd.grad(w, s, gw)
    torch.testing.assert_close(spectrum_grad(torch.fft.rfft(gw), n, SCALE), ref, rtol=0, atol=1e-12)
    assert spectrum_grad(torch.fft.rfft(gw), n, SCALE).is_contiguous()


@pytest.mark.parametrize("method", ["fft", "dense"])
@pytest.mark.parametrize("lead", [(3,), (2, 5), (40,)])
@pytest.mark.parametrize("p,q", [(6, 6), (5, 8), (8, 5), (33, 20), (1, 1)])
def test_spectrum_kernels_match_dense(p, q, lead, method):
    for L in routes(p, q):
        for recompute in (False, True):
            check(lead, p, q, L, method, recompute)


@pytest.mark.parametrize("p,q", [(6, 6), (5, 8), (33, 20)])
def test_chunked_spectrum_kernels_match_dense(monkeypatch, p, q):
    import dftnet.kernels.circulant as kernels

    monkeypatch.setattr(kernels, "ONE_CHUNK_BYTES", 0)
    monkeypatch.setattr(kernels, "MIN_CHUNK_ROWS", 3)
    monkeypatch.setattr(kernels, "SMALL_BATCH_ROWS", 0)
    for L in routes(p, q):
        check((10,), p, q, L, "fft")


@pytest.mark.parametrize("method", ["fft", "dense"])
@pytest.mark.parametrize("p,q,L", [(5, 8, 8), (8, 5, 8), (6, 6, 6), (5, 8, 12), (7, 7, 13)])
def test_spectrum_gradcheck_and_gradgradcheck(p, q, L, method):
    x = torch.randn(2, 3, p, dtype=F64, requires_grad=True)
    s = torch.randn(max(p, q), dtype=F64, requires_grad=True)
    b = torch.randn(q, dtype=F64, requires_grad=True)

    def f(x, s, b):
        return run(x, s, b, p, q, L, method)

    assert gradcheck(f, (x, s, b))
    assert gradgradcheck(f, (x, s, b))


def test_inference_memo_follows_in_place_updates():
    p = q = 16
    s = torch.randn(q, dtype=F64)
    x = torch.randn(3, p, dtype=F64)
    structure = Circulant(p, q, None, False, ParamKind(SCALE), memo=True)
    for method in ("fft", "dense"):
        with torch.no_grad():
            for _ in range(2):
                y = structured_linear(structure, x, s, None, method)
                torch.testing.assert_close(y, x @ dft_matrix(spectrum_to_weight(s, SCALE), p, q).T)
                s.mul_(1.5)  # bumps the version counter: the memo must not serve the old spectrum


@pytest.mark.parametrize("method", ["fft", "dense"])
@pytest.mark.parametrize("p,q,k", [(8, 8, 4), (10, 7, 4), (7, 10, 3), (5, 5, 5), (9, 6, 1)])
def test_block_spectrum_kernels_match_dense(p, q, k, method):
    from dftnet._dispatch.routes import BlockCirculant
    from dftnet.functional import block_matrix
    from dftnet.plan import BlockShape

    shape = BlockShape(p, q, k)
    x = torch.randn(3, 2, p, dtype=F64, requires_grad=True)
    s = torch.randn(shape.out_blocks, shape.in_blocks, k, dtype=F64, requires_grad=True)
    b = torch.randn(q, dtype=F64, requires_grad=True)
    y = structured_linear(BlockCirculant(shape, ParamKind(SCALE)), x, s, b, method)
    y_ref = x @ block_matrix(spectrum_to_weight(s, SCALE), p, q).T + b
    torch.testing.assert_close(y, y_ref, atol=1e-10 * y_ref.abs().max().item(), rtol=0)
    assert_matches_reference(y, y_ref, (x, s, b))
    with torch.no_grad():
        structure = BlockCirculant(shape, ParamKind(SCALE), memo=True)
        torch.testing.assert_close(structured_linear(structure, x, s, b, method), y_ref,
                                   atol=1e-10 * y_ref.abs().max().item(), rtol=0)

    def f(x, s, b):
        return structured_linear(BlockCirculant(shape, ParamKind(SCALE)), x, s, b, method)

    assert gradcheck(f, (x, s, b))
    assert gradgradcheck(f, (x, s, b))
