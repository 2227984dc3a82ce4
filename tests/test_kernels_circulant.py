"""Every way of computing the layer equals the explicit matrix ``to_dense()``, forward and backward."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_checks import assert_matches_reference, penalty_weight_grad
from torch.autograd import gradcheck, gradgradcheck

from dftnet import DFTLinear
from dftnet.functional import dft_linear, dft_matrix
from dftnet.plan import fast_length, make_plan

F64 = torch.float64


def reference_matrix(weight, p, q):
    """W[i][j] = w[(i + j) mod n], written out with Python loops (independent of dft_matrix)."""
    n = weight.numel()
    return torch.stack([torch.stack([weight[(i + j) % n] for j in range(p)]) for i in range(q)])


def routes(p, q):
    """FFT lengths to test: the circular one (n), the smallest linear one, and the planner's choice."""
    n = max(p, q)
    return sorted({n, p + q - 1, fast_length(p + q - 1), make_plan(p, q).fft_size})


def check_against_dense(x, layer_kwargs, p, q, device=None, **call_kwargs):
    """Forward, grad_input, grad_weight and grad_bias equal the dense product's (float64)."""
    n = max(p, q)
    w = torch.randn(n, dtype=F64, device=device, requires_grad=True)
    b = torch.randn(q, dtype=F64, device=device, requires_grad=True)
    x = x.detach().requires_grad_(True)
    y = dft_linear(x, w, b, q, **call_kwargs)
    W = dft_matrix(w, p, q)
    y_ref = x @ W.T + b
    assert y.shape == x.shape[:-1] + (q,)
    assert_matches_reference(y, y_ref, (x, w, b), allow_unused=True)


def test_dft_matrix_matches_definition():
    for p, q in [(1, 1), (3, 5), (5, 3), (4, 4), (7, 2)]:
        w = torch.randn(max(p, q), dtype=F64)
        torch.testing.assert_close(dft_matrix(w, p, q), reference_matrix(w, p, q), rtol=0, atol=0)


def test_square_matrix_is_symmetric():
    w = torch.randn(9, dtype=F64)
    W = dft_matrix(w, 9, 9)
    assert torch.equal(W, W.T)
    assert torch.equal(W[1], torch.roll(w, -1))  # row i is w rotated left by i


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(
    p=st.integers(1, 300),
    q=st.integers(1, 300),
    lead=st.sampled_from([(), (0,), (1,), (2, 3), (5,)]),
    data=st.data(),
)
def test_hypothesis_all_routes_match_dense(p, q, lead, data):
    x = torch.randn(*lead, p, dtype=F64)
    L = data.draw(st.sampled_from(routes(p, q)), label="fft_size")
    check_against_dense(x, {}, p, q, method="fft", fft_size=L)
    check_against_dense(x, {}, p, q, method="dense")
    check_against_dense(x, {}, p, q)  # auto


@pytest.mark.parametrize(
    "p,q", [(785, 4096), (4096, 1024), (64, 10), (7, 7), (1009, 1009), (4099, 4099), (785, 300), (1, 1)]
)
def test_explicit_shapes_match_dense(p, q):
    x = torch.randn(3, p, dtype=F64)
    for L in routes(p, q):
        check_against_dense(x, {}, p, q, method="fft", fft_size=L)


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Make the fast kernels split every batch into chunks of 3 rows (a partial last chunk included)."""
    import dftnet.kernels.circulant as kernels

    monkeypatch.setattr(kernels, "ONE_CHUNK_BYTES", 0)
    monkeypatch.setattr(kernels, "MIN_CHUNK_ROWS", 3)
    monkeypatch.setattr(kernels, "SMALL_BATCH_ROWS", 0)  # not the few-rows kernels


def test_row_chunks_one_call_up_to_one_chunk_bytes_then_rows_per_thread(monkeypatch):
    """A call whose spectrum fits ONE_CHUNK_BYTES is one chunk; a larger one runs in equal chunks of about
    CHUNK_ROWS rows a CPU thread, within CHUNK_MIN_BYTES a thread and ONE_CHUNK_BYTES of spectrum;
    DEVICE_CHUNK_BYTES off the CPU."""
    import dftnet.kernels.circulant as kernels

    c64, cpu = torch.complex64, torch.device("cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert kernels._chunk_rows(2048, c64, 500, cpu) == 500  # 4.1 MB of spectrum: one chunk
    assert kernels._chunk_rows(2048, c64, 1024, cpu) == 128  # 8 chunks of 128 rows (1.05 MB)
    assert kernels._chunk_rows(512, c64, 8192, cpu) == 482  # 128 rows: 0.26 MB; 1 MiB is 510 rows: 17 chunks
    assert kernels._chunk_rows(16384, c64, 128, cpu) == 43  # 128 rows would be 8.4 MB: 4 MiB, 63 rows
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert kernels._chunk_rows(2048, c64, 1024, cpu) == 256  # 4 chunks of 256 rows
    assert kernels._chunk_rows(2048, c64, 1024, torch.device("meta")) == 342  # 3 chunks of at most 4 MiB
    assert kernels._chunk_rows(1 << 20, c64, 64, cpu) == kernels.MIN_CHUNK_ROWS


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("lead", [(2,), (3,), (10,), (2, 5), (7,)])
@pytest.mark.parametrize("p,q", [(6, 6), (5, 8), (8, 5), (33, 20), (20, 33)])
def test_chunked_kernels_match_dense(tiny_chunks, p, q, lead, recompute):
    x = torch.randn(*lead, p, dtype=F64)
    for L in routes(p, q):
        check_against_dense(x, {}, p, q, method="fft", fft_size=L, recompute_spectrum=recompute)
        # a non-contiguous input, no bias, and a constant input (only the weight's gradient)
        xt = torch.randn(p, *lead, dtype=F64).movedim(0, -1)
        w = torch.randn(max(p, q), dtype=F64, requires_grad=True)
        y = dft_linear(xt, w, None, q, method="fft", fft_size=L, recompute_spectrum=recompute)
        y_ref = xt @ dft_matrix(w, p, q).T
        torch.testing.assert_close(y, y_ref, atol=1e-10 * y_ref.abs().max().item(), rtol=0)
        g = torch.randn_like(y)
        (gw,) = torch.autograd.grad(y, w, g)
        (gw_ref,) = torch.autograd.grad(y_ref, w, g)
        torch.testing.assert_close(gw, gw_ref, atol=1e-10 * gw_ref.abs().max().item(), rtol=0)
        with torch.no_grad():  # the inference kernel
            torch.testing.assert_close(dft_linear(xt, w, None, q, method="fft", fft_size=L), y_ref.detach(),
                                       atol=1e-10 * y_ref.abs().max().item(), rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("p,q,L", [(5, 8, None), (8, 5, None), (6, 6, None), (5, 8, 12), (8, 5, 16), (7, 7, 13)])
def test_gradcheck_and_gradgradcheck(p, q, L, recompute):
    x = torch.randn(2, 3, p, dtype=F64, requires_grad=True)
    w = torch.randn(max(p, q), dtype=F64, requires_grad=True)
    b = torch.randn(q, dtype=F64, requires_grad=True)

    def f(x, w, b):
        return dft_linear(x, w, b, q, fft_size=L, method="fft", recompute_spectrum=recompute)

    assert gradcheck(f, (x, w, b))
    assert gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("p,q", [(5, 8), (8, 5), (6, 6), (1, 4)])
def test_gradgradcheck_auto_dense_route(p, q):
    """Small layers while training take the dense route (plain autograd ops); twice differentiable."""
    x = torch.randn(2, 3, p, dtype=F64, requires_grad=True)
    w = torch.randn(max(p, q), dtype=F64, requires_grad=True)
    b = torch.randn(q, dtype=F64, requires_grad=True)

    def f(x, w, b):
        return dft_linear(x, w, b, q)  # auto: dense route at this size

    assert gradcheck(f, (x, w, b))
    assert gradgradcheck(f, (x, w, b))


def test_gradgradcheck_dense_path():
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    w = torch.randn(6, dtype=F64, requires_grad=True)
    assert gradgradcheck(lambda x, w: dft_linear(x, w, None, 6, method="dense"), (x, w))


def test_gradient_penalty_matches_dense():
    """A gradient penalty (create_graph=True) gives the same weight gradient as with the dense matrix."""
    p, q = 9, 6
    w = torch.randn(9, dtype=F64, requires_grad=True)
    x = torch.randn(4, p, dtype=F64, requires_grad=True)
    got = penalty_weight_grad(lambda x: dft_linear(x, w, None, q, method="fft"), x, w)
    ref = penalty_weight_grad(lambda x: x @ dft_matrix(w, p, q).T, x, w)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_only_needed_gradients_are_computed():
    x = torch.randn(4, 6, dtype=F64, requires_grad=True)
    w = torch.randn(6, dtype=F64)  # frozen weight
    y = dft_linear(x, w, method="fft")
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, torch.ones(4, 6, dtype=F64) @ dft_matrix(w, 6, 6))
    x2 = torch.randn(4, 6, dtype=F64)
    w2 = w.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(dft_linear(x2, w2, method="fft").sum(), w2)
    torch.testing.assert_close(gw, torch.autograd.grad((x2 @ dft_matrix(w2, 6, 6).T).sum(), w2)[0])


def test_float32_large_n_agrees_with_float64_dense():
    """n = 2^16 in float32: relative error <= 1e-5 against the float64 dense product (sampled rows)."""
    n = 2**16
    g = torch.Generator().manual_seed(1)
    w = torch.randn(n, dtype=F64, generator=g) / n**0.5
    x = torch.randn(2, n, dtype=F64, generator=g)
    y32 = dft_linear(x.float(), w.float(), method="fft")
    rows = torch.randperm(n, generator=g)[:256]
    W_rows = w[(rows[:, None] + torch.arange(n)[None, :]) % n]  # 256 rows of the dense matrix
    y_ref = x @ W_rows.T
    err = (y32[:, rows].double() - y_ref).abs().max() / y_ref.abs().max()
    assert err <= 1e-5, err
    # and all rows against the (dense-verified) float64 FFT
    y64 = dft_linear(x, w, method="fft")
    assert ((y32.double() - y64).norm() / y64.norm()) <= 1e-5


def test_module_matches_its_dense_matrix(device):
    layer = DFTLinear(37, 20, device=device, dtype=F64)
    x = torch.randn(5, 37, dtype=F64, device=device, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, x @ layer.to_dense().T + layer.bias)
    y.pow(2).sum().backward()
    w_grad = layer.spectrum.grad.clone()
    layer.zero_grad()
    (x @ layer.to_dense().T + layer.bias).pow(2).sum().backward()
    torch.testing.assert_close(w_grad, layer.spectrum.grad)


def test_create_graph_with_constant_input_matches_dense():
    """The data batch (no grad) is not saved; the double-backward path rebuilds it from its spectrum."""
    p, q = 12, 9
    w = torch.randn(12, dtype=F64, requires_grad=True)
    x = torch.randn(5, p, dtype=F64)

    def penalty(fn):
        (gw,) = torch.autograd.grad(torch.tanh(fn()).sum(), w, create_graph=True)
        return torch.autograd.grad(gw.pow(2).sum(), w)[0]

    got = penalty(lambda: dft_linear(x, w, None, q, method="fft"))
    ref = penalty(lambda: x @ dft_matrix(w, p, q).T)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("p,q", [(48, 192), (192, 48), (64, 64)])
@pytest.mark.parametrize("diagonal", [True, False])
def test_saving_the_input_or_its_spectrum_gives_the_same_gradients(p, q, diagonal):
    """recompute_spectrum True (input only), False (its spectrum too) and None (auto) agree with each other
    to rounding and with the explicit matrix, with and without the learned diagonal."""
    from dftnet import DFTLinear

    torch.manual_seed(0)
    base = DFTLinear(p, q, method="fft", diagonal=diagonal).double()
    if diagonal:
        with torch.no_grad():
            base.diagonal.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, p, dtype=torch.float64)
    g = torch.randn(3, 5, q, dtype=torch.float64)
    grads = []
    for mode in (True, False, None):
        layer = DFTLinear(p, q, method="fft", diagonal=diagonal, recompute_spectrum=mode).double()
        layer.load_state_dict(base.state_dict())
        xi = x.clone().requires_grad_()
        y = layer(xi)
        torch.testing.assert_close(y, xi @ layer.to_dense().T + layer.bias)
        grads.append(torch.autograd.grad(y, [xi, *layer.parameters()], g))
    ref_layer = DFTLinear(p, q, method="dense", diagonal=diagonal).double()
    ref_layer.load_state_dict(base.state_dict())
    xr = x.clone().requires_grad_()
    ref = torch.autograd.grad(ref_layer(xr), [xr, *ref_layer.parameters()], g)
    for got in grads:
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b)


def test_auto_mode_saves_no_spectrum_beside_a_kept_input():
    """With the learned diagonal the input is kept for its gradient, so auto mode saves no spectrum: less
    saved memory than keeping both, and than the matrix route's input plus product."""
    from dftnet import DFTLinear

    def saved_bytes(layer, x):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x)
        return sum(storages.values())

    x = torch.randn(64, 256, requires_grad=True)
    sizes = {mode: saved_bytes(DFTLinear(256, 1024, method="fft", recompute_spectrum=mode), x)
             for mode in (None, False)}
    input_bytes = x.numel() * 4
    assert sizes[None] < input_bytes + 64 * 1024  # the input, the diagonal, the weight's O(n) spectrum
    assert sizes[False] > sizes[None] + 64 * 513 * 8 - 1  # keeping the spectrum adds (rows, L/2+1) complex
