"""Bad input, untrusted files and killed runs: clear errors or clean recovery, nothing lost.

Each test counts what it tried in ``TRIED`` (printed at the end of the session with -s / in CI logs).
"""

import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dftnet import DFTLinear
from dftnet.functional import dft_linear, dft_matrix

TRIED = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\nhardening inputs tried: " + ", ".join(f"{k}={v}" for k, v in sorted(TRIED.items())))


# --- layer inputs --------------------------------------------------------------------------------


def _layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "contiguous":
        return x
    if kind == "transposed":  # same values, non-contiguous
        return x.transpose(-1, -2).contiguous().transpose(-1, -2) if x.dim() >= 2 else x
    if kind == "strided":
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        big[..., ::2] = x
        return big[..., ::2]
    if kind == "expanded":  # stride 0 along the batch
        return x[..., :1, :].expand_as(x) if x.dim() >= 2 else x
    raise AssertionError(kind)


@settings(max_examples=80, deadline=None)
@given(
    p=st.integers(1, 64), q=st.integers(1, 64),
    lead=st.sampled_from([(), (0,), (3,), (2, 3)]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    layout=st.sampled_from(["contiguous", "transposed", "strided", "expanded"]),
    method=st.sampled_from(["auto", "fft", "dense"]),
)
def test_property_layouts_and_dtypes_match_dense(p, q, lead, dtype, layout, method):
    TRIED[f"layout:{layout}"] += 1
    w = torch.randn(max(p, q), dtype=torch.float64)
    x = _layout(torch.randn(*lead, p, dtype=torch.float64), layout)
    y = dft_linear(x.to(dtype), w.to(dtype), None, q, method=method).double()
    ref = x @ dft_matrix(w, p, q).T
    scale = max(1.0, ref.abs().max().item() if ref.numel() else 1.0)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert y.shape == ref.shape
    assert (y - ref).abs().max().item() <= tol * scale if ref.numel() else True


@pytest.mark.parametrize("bad", ["inf", "-inf", "nan", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_propagates_like_dense(bad, dtype):
    TRIED["non-finite"] += 1
    p, q = 33, 20
    w = torch.randn(p, dtype=torch.float64)
    x = torch.randn(4, p, dtype=torch.float64)
    if bad == "mixed":
        x[0, 1], x[0, 5], x[2, 3] = math.inf, -math.inf, math.nan
    else:
        x[1, 7] = float(bad)
    ref = x @ dft_matrix(w, p, q).T
    y = dft_linear(x.to(dtype), w.to(dtype), None, q, method="fft", exact_extremes=True).double()
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    assert torch.equal(y[torch.isinf(ref)], ref[torch.isinf(ref)])
    finite = torch.isfinite(ref)
    assert torch.allclose(y[finite], ref[finite], rtol=1e-5, atol=1e-5)


def test_finite_input_never_gives_nan():
    TRIED["finite-no-nan"] += 1
    layer = DFTLinear(300, 200, method="fft", exact_extremes=True)
    x = torch.randn(16, 300) * 1e30
    assert torch.isfinite(layer(x)).all()


@pytest.mark.parametrize("magnitude", [1e-30, 1e-20, 1e20, 1e30, 1e36])
def test_extreme_magnitudes_float32_relative_error(magnitude):
    TRIED["extreme-magnitude"] += 1
    p, q = 257, 300
    w = torch.randn(q, dtype=torch.float64) / math.sqrt(p)
    x = torch.randn(5, p, dtype=torch.float64) * magnitude
    ref = x @ dft_matrix(w, p, q).T
    assert torch.isfinite(ref).all()
    y = dft_linear(x.float(), w.float(), None, q, method="fft", exact_extremes=True).double()
    assert ((y - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_rows_of_very_different_magnitude():
    TRIED["extreme-magnitude"] += 1
    p = 128
    w = torch.randn(p, dtype=torch.float64) / math.sqrt(p)
    x = torch.randn(2, p, dtype=torch.float64)
    x[0] *= 1e-30
    x[1] *= 1e30
    ref = x @ dft_matrix(w, p, p).T
    y = dft_linear(x.float(), w.float(), method="fft", exact_extremes=True).double()
    for r in range(2):
        assert ((y[r] - ref[r]).abs().max() / ref[r].abs().max()).item() <= 1e-5


def test_extreme_inputs_gradients_match_dense():
    TRIED["extreme-magnitude"] += 1
    p, q = 40, 24
    w = torch.randn(p, dtype=torch.float64, requires_grad=True)
    x = (torch.randn(3, p, dtype=torch.float64) * 1e200).requires_grad_(True)
    y = dft_linear(x, w, None, q, method="fft", exact_extremes=True)
    ref = x @ dft_matrix(w, p, q).T
    g = torch.randn_like(ref)
    got = torch.autograd.grad(y, (x, w), g)
    exp = torch.autograd.grad(ref, (x, w), g)
    for a, b in zip(got, exp):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-10


@pytest.mark.parametrize(
    "args,match",
    [((0, 4), "in_features must be a positive integer, got 0"), ((4, -1), "got -1"), ((4.0, 4), "got 4.0"),
     (("4", 4), "got '4'"), ((None, 4), "got None")],
)
def test_bad_constructor_arguments_name_the_value(args, match):
    TRIED["constructor"] += 1
    with pytest.raises(ValueError, match=match):
        DFTLinear(*args)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool,
                                   torch.complex64, torch.complex128])
def test_bad_dtypes(dtype):
    TRIED["bad-dtype"] += 1
    with pytest.raises(TypeError, match=str(dtype)):
        DFTLinear(5, 5)(torch.zeros(2, 5, dtype=dtype))


@pytest.mark.parametrize("shape", [(2, 4), (2, 6), (3,), (2, 3, 0)])
def test_bad_shapes(shape):
    TRIED["bad-shape"] += 1
    with pytest.raises(ValueError, match=r"expected input of shape \(\*, 5\)"):
        DFTLinear(5, 3)(torch.zeros(*shape))
