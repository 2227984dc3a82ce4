"""Drop-in wherever nn.Linear goes: forward-mode AD, torch.func, compile(fullgraph=True), dynamic
torch.export, torch.jit.trace, ONNX, no host syncs, CUDA graphs. Every case for both layers, on the FFT route."""

import pytest
import torch
from layer_checks import assert_matches_eager
from torch import nn
from torch.autograd import forward_ad
from torch.func import functional_call, hessian, jacfwd, jvp
from torch.utils._python_dispatch import TorchDispatchMode

from dftnet import BlockDFTLinear, DFTLinear
from dftnet.functional import block_matrix, dft_matrix
from dftnet.spectral import spectrum_to_weight

F64 = torch.float64

LAYERS = {
    "dft": lambda **kw: DFTLinear(96, 64, method="fft", **kw),
    "dft-linear-route": lambda **kw: DFTLinear(785, 300, method="fft", **kw),  # L = 1600, not n
    "block": lambda **kw: BlockDFTLinear(96, 64, 16, method="fft", **kw),
}


@pytest.fixture(params=sorted(LAYERS))
def make(request):
    return LAYERS[request.param]


def explicit(layer, spectrum, x):
    """The layer computed from its explicit matrix (gathers, no FFT): the reference for every mode."""
    w = spectrum_to_weight(spectrum, layer.spectral_scale)
    matrix = dft_matrix if isinstance(layer, DFTLinear) else block_matrix
    W = matrix(w, layer.in_features, layer.out_features)
    if layer.diagonal is not None:
        W = W * layer.diagonal
    return x @ W.T + layer.bias


def test_jvp_in_input_and_weight_equals_the_explicit_matrix(make):
    layer = make(dtype=F64)
    x = torch.randn(3, layer.in_features, dtype=F64)
    tx, ts = torch.randn_like(x), torch.randn_like(layer.spectrum)
    s = layer.spectrum.detach()

    def f(x, s):
        return functional_call(layer, {"spectrum": s}, (x,))

    y, t = jvp(f, (x, s), (tx, ts))
    y_ref, t_ref = jvp(lambda x, s: explicit(layer, s, x), (x, s), (tx, ts))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-11)
    torch.testing.assert_close(t, t_ref, rtol=0, atol=1e-11)


def test_jacfwd_and_hessian_equal_the_explicit_matrix(make):
    layer = make(dtype=F64)
    x = torch.randn(layer.in_features, dtype=F64)
    torch.testing.assert_close(jacfwd(layer)(x), layer.to_dense().detach(), rtol=0, atol=1e-11)
    s = layer.spectrum.detach()

    def g(x):
        return torch.tanh(layer(x)).sum()

    def g_ref(x):
        return torch.tanh(explicit(layer, s, x)).sum()

    torch.testing.assert_close(hessian(g)(x[:1].expand(layer.in_features).clone()),
                               hessian(g_ref)(x[:1].expand(layer.in_features).clone()), rtol=0, atol=1e-10)


def test_forward_ad_outside_torch_func(make):
    layer = make(dtype=F64)
    x, t = torch.randn(2, 3, layer.in_features, dtype=F64), torch.randn(2, 3, layer.in_features, dtype=F64)
    with forward_ad.dual_level():
        out = layer(forward_ad.make_dual(x, t))
        tangent = forward_ad.unpack_dual(out).tangent
    torch.testing.assert_close(tangent, t @ layer.to_dense().detach().T, rtol=0, atol=1e-11)


def test_compile_fullgraph_forward_and_backward(make):
    torch._dynamo.reset()
    layer = make(dtype=F64)
    x = torch.randn(8, layer.in_features, dtype=F64, requires_grad=True)
    assert_matches_eager(torch.compile(layer, fullgraph=True), layer, x)


@pytest.mark.parametrize("make_auto", [lambda: DFTLinear(96, 64), lambda: BlockDFTLinear(96, 64, 16)],
                         ids=["dft", "block"])
def test_compile_fullgraph_and_export_choose_the_route_too(make_auto):
    """The default method="auto": the route choice (its cost model reads torch's thread count) traces."""
    torch._dynamo.reset()
    layer = make_auto().double()
    x = torch.randn(8, layer.in_features, dtype=F64, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True)
    assert_matches_eager(compiled, layer, x)
    tol = {"rtol": 0, "atol": 1e-10}
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x), **tol)
    from torch.export import Dim, export

    program = export(layer.eval(), (x.detach(),), dynamic_shapes={"input": {0: Dim("batch", min=1)}})
    for batch in (1, 300):
        xb = torch.randn(batch, layer.in_features, dtype=F64)
        torch.testing.assert_close(program.module()(xb), layer(xb), **tol)


def test_jit_trace_forward_and_backward(make):
    """torch.jit.trace records the reference form (plain ops, no inference memo): the same graph on every
    invocation of its checks, and the traced module gives eager's results and gradients at other batches."""
    layer = make(dtype=F64)
    traced = torch.jit.trace(layer, (torch.randn(8, layer.in_features, dtype=F64),))
    assert_matches_eager(traced, layer, torch.randn(3, layer.in_features, dtype=F64, requires_grad=True))


def test_export_with_a_dynamic_batch(make):
    from torch.export import Dim, export

    layer = make().eval()
    p = layer.in_features
    program = export(layer, (torch.randn(8, p),), dynamic_shapes={"input": {0: Dim("batch", min=1)}})
    for batch in (1, 5, 17, 4100):
        x = torch.randn(batch, p)
        torch.testing.assert_close(program.module()(x), layer(x), rtol=2e-5, atol=1e-5)
    program = export(layer, (torch.randn(2, 4, p),),
                     dynamic_shapes={"input": {0: Dim("b", min=1), 1: Dim("t", min=1)}})
    for shape in ((1, 1), (3, 7), (2, 2100)):
        x = torch.randn(*shape, p)
        torch.testing.assert_close(program.module()(x), layer(x), rtol=2e-5, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime(make, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    layer = make().eval()
    x = torch.randn(5, layer.in_features)
    path = tmp_path / "layer.onnx"
    torch.onnx.export(layer, (x,), str(path), dynamo=True,
                      dynamic_shapes={"input": {0: torch.export.Dim("batch", min=1)}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in (1, 5, 33):
        xb = torch.randn(batch, layer.in_features)
        (got,) = session.run(None, {name: xb.numpy()})
        ref = layer(xb).detach()
        # onnxruntime's DFT of lengths other than powers of two (1600 here) is less accurate than
        # pocketfft: compare in norm (measured: 8e-5 relative at L = 1600, 9e-6 at L = 96)
        assert (torch.from_numpy(got) - ref).norm() / ref.norm() < 1e-3


class NoSync(TorchDispatchMode):
    """Fails on every op that copies a tensor's value to the host (a device synchronisation on CUDA)."""

    SYNCING = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
               torch.ops.aten.masked_select.default, torch.ops.aten.is_nonzero.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.SYNCING:
            raise AssertionError(f"host sync: {func}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("batch", [1, 8, 17, 300])
@pytest.mark.parametrize("auto", [False, True])
def test_no_host_sync_in_forward_and_backward(make, batch, auto):
    layer = make()
    if auto:
        layer.method = "auto"
    x = torch.randn(batch, layer.in_features, requires_grad=True)
    g = torch.randn(batch, layer.out_features)
    with no_host_reads_ctx():
        y = layer(x)
        y.backward(g)
    assert x.grad is not None and layer.spectrum.grad is not None


class no_host_reads_ctx:
    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in ("tolist", "item", "__bool__")}

        def fail(*args, **kwargs):
            raise AssertionError("host read of a tensor value")

        for name in self.saved:
            setattr(torch.Tensor, name, fail)
        self.mode = NoSync()
        self.mode.__enter__()

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        for name, fn in self.saved.items():
            setattr(torch.Tensor, name, fn)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replays_a_training_step():
    torch.manual_seed(0)
    model = nn.Sequential(DFTLinear(256, 1024), nn.ReLU(), BlockDFTLinear(1024, 512, 64), nn.ReLU(),
                          DFTLinear(512, 10)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 256, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    reference = [p.detach().clone() for p in model.parameters()]

    def step():
        opt.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    eager = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, r in zip(model.parameters(), reference):
            p.copy_(r)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        step()
    with torch.no_grad():
        for p, r in zip(model.parameters(), reference):
            p.copy_(r)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    for p, e in zip(model.parameters(), eager):
        torch.testing.assert_close(p, e, rtol=1e-4, atol=1e-5)
