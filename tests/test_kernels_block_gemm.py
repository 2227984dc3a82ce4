"""The block FFT route's two kernels, each forced (real GEMMs, dftnet.kernels.block_gemm; torch.fft,
dftnet.kernels.block): both equal the explicit block-circulant matrix in float64, forward, both
gradients, double backward and batched gradients, as the functional form (the weight) and as the layer
(its stored spectrum); and the cost model's choice between them."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_checks import assert_matches_reference
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

import dftnet._dispatch.routes as routes
import dftnet.kernels.block as block_kernels
import dftnet.kernels.block_gemm as block_gemm
from dftnet import BlockDFTLinear
from dftnet.functional import block_dft_linear, block_matrix
from dftnet.kernels.block_gemm import dft_matrices, packed_weight
from dftnet.kernels.taps import WEIGHT, ParamKind
from dftnet.plan import block_costs, block_kernel, use_dense

F64 = torch.float64
KERNELS = ["gemm", "fft"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    """Every call of the block FFT route takes this kernel."""
    monkeypatch.setattr(routes, "block_kernel", lambda *args, **kwargs: request.param)
    return request.param


def nblocks(m, k):
    return -(-m // k)


def test_dft_matrices_are_the_packed_rfft_and_irfft():
    for k in (1, 2, 3, 4, 7, 16, 33):
        A, E, d = dft_matrices(k, torch.device("cpu"), F64)
        x = torch.randn(5, k, dtype=F64)
        X = torch.fft.rfft(x)
        F, Fi = k // 2 + 1, (k - 1) // 2
        packed = torch.cat([X.real, X.imag[:, 1:1 + Fi]], 1)
        torch.testing.assert_close(x @ A, packed, rtol=0, atol=1e-12)
        torch.testing.assert_close(packed @ E, x, rtol=0, atol=1e-12)
        torch.testing.assert_close(E, d[:, None] * A.T, rtol=0, atol=0)
        assert F + Fi == k


def test_packed_weight_from_the_spectrum_is_the_weights():
    layer = BlockDFTLinear(40, 24, 8, dtype=F64)
    Wp = packed_weight(layer.spectrum.detach(), ParamKind(layer.spectral_scale))
    torch.testing.assert_close(Wp, packed_weight(layer.weight.detach(), WEIGHT), rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(p=st.integers(1, 70), q=st.integers(1, 70), lead=st.sampled_from([(), (0,), (2, 3)]), data=st.data())
def test_hypothesis_both_kernels_match_dense(p, q, lead, data):
    k = data.draw(st.integers(1, min(40, max(p, q))), label="k")
    x = torch.randn(*lead, p, dtype=F64, requires_grad=True)
    w = torch.randn(nblocks(q, k), nblocks(p, k), k, dtype=F64, requires_grad=True)
    b = torch.randn(q, dtype=F64, requires_grad=True)
    with pytest.MonkeyPatch.context() as mp:
        for kernel in KERNELS:
            mp.setattr(routes, "block_kernel", lambda *args, kernel=kernel, **kwargs: kernel)
            y_ref = x @ block_matrix(w, p, q).T + b
            assert_matches_reference(block_dft_linear(x, w, b, q, method="fft"), y_ref, (x, w, b))


@pytest.mark.parametrize("p,q,k", [(5, 8, 3), (8, 5, 3), (6, 6, 2), (7, 4, 7), (12, 12, 4), (9, 13, 5), (5, 3, 1)])
def test_gradcheck_and_gradgradcheck(kernel, p, q, k):
    x = torch.randn(2, 3, p, dtype=F64, requires_grad=True)
    w = torch.randn(nblocks(q, k), nblocks(p, k), k, dtype=F64, requires_grad=True)
    b = torch.randn(q, dtype=F64, requires_grad=True)

    def f(x, w, b):
        return block_dft_linear(x, w, b, q, method="fft")

    assert gradcheck(f, (x, w, b), check_batched_grad=True)
    assert gradgradcheck(f, (x, w, b), check_batched_grad=True)


@pytest.mark.parametrize("p,q,k", [(20, 30, 8), (30, 20, 6), (17, 17, 4)])
def test_layer_matches_its_matrix(kernel, p, q, k):
    """The layer (stored spectrum: the spectral maps of the parameter and its gradient) in training and
    in inference, where the packed weight is kept while the spectrum is unchanged."""
    layer = BlockDFTLinear(p, q, k, method="fft", sign_flip=True, diagonal=True, dtype=F64)
    with torch.no_grad():
        layer.diagonal.uniform_(0.5, 1.5)
    x = torch.randn(4, 10, p, dtype=F64, requires_grad=True)  # 40 rows: the transposed products (NARROW) too
    assert_matches_reference(layer(x), x @ layer.to_dense().T + layer.bias, (x, layer.spectrum, layer.bias,
                                                                              layer.diagonal))
    for _ in range(2):  # inference follows in-place updates of the spectrum
        with torch.no_grad():
            torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias, rtol=0, atol=1e-12)
            layer.spectrum.mul_(1.5)


@pytest.mark.parametrize("rows", [3, 20])
def test_functional_gradgradcheck_both_product_orientations(kernel, rows):
    """20 rows and at most NARROW output blocks: the products computed transposed; 3 rows: as they are."""
    p, q, k = 9, 13, 4
    x = torch.randn(rows, p, dtype=F64, requires_grad=True)
    w = torch.randn(nblocks(q, k), nblocks(p, k), k, dtype=F64, requires_grad=True)
    b = torch.randn(q, dtype=F64, requires_grad=True)
    assert gradcheck(lambda x, w, b: block_dft_linear(x, w, b, q, method="fft"), (x, w, b))
    assert gradgradcheck(lambda x, w, b: block_dft_linear(x, w, b, q, method="fft"), (x, w, b))


@pytest.mark.parametrize("rows", [5, 7])
def test_rows_in_chunks_match_the_matrix(kernel, monkeypatch, rows):
    """Past ``block_chunk_rows`` the route calls its kernel on chunks of rows (7 = 3 + 3 + 1 here): the
    result, both gradients, double backward and batched gradients are the whole call's."""
    monkeypatch.setattr(routes, "block_chunk_rows", lambda *args: 3)
    check_fft_route_against_matrix(9, 13, 4, rows)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("p,q,k,rows,chunk", [(9, 13, 4, 7, 3), (8, 12, 4, 7, 3), (9, 12, 4, 50, 20),
                                              (9, 13, 4, 50, 20)])
def test_inference_chunks_write_into_the_result(kernel, monkeypatch, parallel, p, q, k, rows, chunk):
    """In inference each chunk's kernel writes its rows of the result (whole last blocks or truncated ones;
    at 20 rows and 3 output blocks the GEMM kernel's transposed product): the result equals the explicit
    matrix's, and to the bit the chunks computed one call each."""
    monkeypatch.setattr(routes, "block_chunk_rows", lambda *args: chunk)
    monkeypatch.setattr(block_kernels, "_parallel_copies", lambda t: parallel)
    layer = BlockDFTLinear(p, q, k, method="fft", dtype=F64)
    x = torch.randn(rows, p, dtype=F64)
    with torch.no_grad():
        z = layer(x)
        torch.testing.assert_close(z, x @ layer.to_dense().T + layer.bias, rtol=0, atol=1e-12)
        assert torch.equal(z, torch.cat([layer(c) for c in x.split(chunk)]))
    with torch.inference_mode():  # and a (1, rows, p) input
        assert torch.equal(layer(x.unsqueeze(0)), z.unsqueeze(0))


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("x_grad", [True, False])
@pytest.mark.parametrize("p,q,k,rows,chunk", [(9, 13, 4, 7, 3), (9, 12, 4, 50, 20), (40, 70, 32, 9, 4),
                                              (70, 40, 32, 9, 4)])
def test_training_chunks_run_inside_one_call(kernel, monkeypatch, parallel, x_grad, p, q, k, rows, chunk):
    """In training the kernel's autograd Function runs the chunks itself: its transforms see chunks of rows,
    never the whole batch; each chunk writes its rows of the result and of grad_input, and the weight's
    gradient is summed over the chunks. With the input's packed spectra recomputed in backward (the GEMM
    kernel at k <= 16 for an input that needs a gradient) or saved, whole and truncated last blocks: the
    result and the gradients equal the explicit matrix's in float64."""
    monkeypatch.setattr(routes, "block_chunk_rows", lambda *args: chunk)
    monkeypatch.setattr(block_kernels, "_parallel_copies", lambda t: parallel)
    transformed = []
    for module, name in ((block_kernels, "_spectrum"), (block_gemm, "_packed")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda t, *a, f=original: transformed.append(t.shape[0]) or f(t, *a))
    layer = BlockDFTLinear(p, q, k, method="fft", dtype=F64)
    x = torch.randn(rows, p, dtype=F64, requires_grad=x_grad)
    inputs = (x, layer.spectrum, layer.bias) if x_grad else (layer.spectrum, layer.bias)
    assert_matches_reference(layer(x), x @ layer.to_dense().T + layer.bias, inputs, rel=1e-12)
    assert transformed and max(transformed) <= chunk


def check_fft_route_against_matrix(p, q, k, rows):
    """The layer's FFT route equals its explicit matrix in float64, in training (forward and both
    gradients) and in inference; the functional form passes gradcheck and gradgradcheck with batched
    gradients."""
    layer = BlockDFTLinear(p, q, k, method="fft", dtype=F64)
    x = torch.randn(rows, p, dtype=F64, requires_grad=True)
    assert_matches_reference(layer(x), x @ layer.to_dense().T + layer.bias, (x, layer.spectrum, layer.bias))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias, rtol=0, atol=1e-12)
    w = torch.randn(nblocks(q, k), nblocks(p, k), k, dtype=F64, requires_grad=True)
    b = torch.randn(q, dtype=F64, requires_grad=True)
    f = lambda x, w, b: block_dft_linear(x, w, b, q, method="fft")  # noqa: E731
    assert gradcheck(f, (x, w, b), check_batched_grad=True)
    assert gradgradcheck(f, (x, w, b), check_batched_grad=True)


@pytest.mark.parametrize("p,q,k", [(9, 13, 4), (13, 9, 6)])
def test_permuted_spectrum_copies_match_the_matrix(monkeypatch, p, q, k):
    """The torch.fft kernel's spectra transposed by 3-D permutes (its layout on more than one CPU thread):
    forward, both gradients, double backward and batched gradients equal the explicit matrix's."""
    monkeypatch.setattr(routes, "block_kernel", lambda *args, **kwargs: "fft")
    monkeypatch.setattr(block_kernels, "_parallel_copies", lambda t: True)
    check_fft_route_against_matrix(p, q, k, 5)


def test_permuted_and_transposed_copies_agree_to_the_bit(monkeypatch):
    """The two layouts of the spectra's copies move the same numbers: float32 results identical."""
    monkeypatch.setattr(routes, "block_kernel", lambda *args, **kwargs: "fft")
    layer = BlockDFTLinear(96, 160, 16, method="fft", diagonal=False)
    x = torch.randn(33, 96, requires_grad=True)
    results = []
    for parallel in (False, True):
        monkeypatch.setattr(block_kernels, "_parallel_copies", lambda t, parallel=parallel: parallel)
        z = layer(x)
        results.append((z, *torch.autograd.grad(z.square().sum(), (x, layer.spectrum, layer.bias))))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_layer_gradgradcheck_and_batched_grads(kernel):
    layer = BlockDFTLinear(10, 7, 4, method="fft", dtype=F64)
    names = [n for n, _ in layer.named_parameters()]
    values = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    x = torch.randn(3, 10, dtype=F64, requires_grad=True)

    def fn(x, *vals):
        return functional_call(layer, dict(zip(names, vals)), (x,))

    assert gradcheck(fn, (x, *values), check_batched_grad=True)
    assert gradgradcheck(fn, (x, *values), check_batched_grad=True)


def test_float32_accuracy_at_a_transformer_shape(kernel):
    """float32 against the float64 product, at a block size the GEMM kernel serves (k = 64)."""
    torch.manual_seed(0)
    layer = BlockDFTLinear(512, 256, 64, method="fft")
    x = torch.randn(16, 512, requires_grad=True)
    y = layer(x)
    ref = x.double() @ layer.to_dense().double().T + layer.bias.double()
    assert ((y.double() - ref).abs().max() / ref.abs().max()) < 1e-5
    g = torch.randn_like(y)
    gx, gs = torch.autograd.grad(y, (x, layer.spectrum), g)
    x64 = x.detach().double().requires_grad_()
    layer64 = BlockDFTLinear(512, 256, 64, method="dense", dtype=F64)
    layer64.load_state_dict(layer.state_dict())
    gx_ref, gs_ref = torch.autograd.grad(layer64(x64), (x64, layer64.spectrum), g.double())
    for got, ref in ((gx, gx_ref), (gs, gs_ref)):
        assert ((got.double() - ref).abs().max() / ref.abs().max()) < 1e-5


def test_kernel_choice_follows_the_thread_count():
    """Every way gains from a second thread, the GEMMs a little more than the torch.fft kernel: block-64 at
    1024 x 1024 on 128 rows takes the torch.fft kernel on 1 thread and the GEMM kernel on 2 (as measured),
    in the model and in the layer; at d = 512 it keeps the torch.fft kernel; a small layer in inference goes
    to the dense route."""
    one, two = (block_costs(1024, 1024, 64, 128, True, threads=t) for t in (1, 2))
    assert one["fft"] < one["gemm"] and two["gemm"] < two["fft"]
    assert all(two[way] < one[way] for way in ("dense", "gemm", "fft"))
    assert one["fft"] / two["fft"] < one["gemm"] / two["gemm"] < one["dense"] / two["dense"]
    cpu = torch.device("cpu")
    assert not use_dense(784, 300, 32, cpu, False, block_size=32, threads=1)
    assert use_dense(784, 300, 32, cpu, False, block_size=32, threads=2)
    assert all(block_kernel(512, 2048, 64, 1024, cpu, training) == "fft" for training in (True, False))
    structure = BlockDFTLinear(1024, 1024, 64)._get_structure()
    n = torch.get_num_threads()
    try:
        picks = []
        for t in (1, 2):
            torch.set_num_threads(t)
            picks.append(structure.kernel(128, "cpu", True))
    finally:
        torch.set_num_threads(n)
    assert picks == ["fft", "gemm"]


def test_cost_model_picks_a_kernel_and_a_route():
    cpu = torch.device("cpu")
    assert block_kernel(512, 2048, 16, 1024, cpu, True) == "gemm"  # short blocks: the DFT matrices
    assert block_kernel(4096, 4096, 1024, 128, cpu, True) == "fft"  # long blocks: torch.fft
    for training in (False, True):
        costs = block_costs(512, 2048, 16, 1024, training)
        assert set(costs) == {"dense", "gemm", "fft"}
        assert use_dense(512, 2048, 1024, cpu, training, block_size=16) == (
            costs["dense"] <= min(costs["gemm"], costs["fft"]))
        assert not use_dense(2048, 8192, 1024, cpu, training, block_size=16)  # the blocks win there
