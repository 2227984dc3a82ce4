"""convert(): the projection onto structured matrices is the least-squares optimum; in-place conversion."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dftnet import BlockDFTLinear, DFTLinear
from dftnet.convert import convert, nearest_block_weight, nearest_dft_weight
from dftnet.functional import block_matrix

F64 = torch.float64


def structure_operator(p, q, k, sign=None):
    """The matrix A with vec(block_matrix(w) diag(sign)) = A vec(w): one column per weight entry."""
    R, C = -(-q // k), -(-p // k)
    cols = []
    for e in torch.eye(R * C * k, dtype=F64):
        M = block_matrix(e.reshape(R, C, k), p, q)
        cols.append((M if sign is None else M * sign).reshape(-1))
    return torch.stack(cols, dim=1)


def least_squares_weight(W, k, sign=None):
    """argmin ||A w - vec(W)|| of minimum norm, by the pseudo-inverse."""
    q, p = W.shape
    A = structure_operator(p, q, k, sign)
    return (torch.linalg.pinv(A) @ W.reshape(-1)).reshape(-(-q // k), -(-p // k), k)


@pytest.mark.parametrize(
    "q,p,k",
    [(4, 4, 4), (3, 5, 5), (5, 3, 5), (1, 6, 6), (6, 1, 6), (7, 7, 3), (5, 9, 4), (9, 5, 4), (5, 5, 4),
     (3, 10, 4), (6, 6, 1), (2, 7, 2), (10, 10, 7)],
)
def test_projection_is_the_least_squares_optimum(q, p, k):
    W = torch.randn(q, p, dtype=F64)
    w = nearest_block_weight(W, k)
    w_ls = least_squares_weight(W, k)
    torch.testing.assert_close(w, w_ls, rtol=0, atol=1e-12)  # the same minimum-norm solution
    # the residual is orthogonal to every structured matrix (normal equations)
    A = structure_operator(p, q, k)
    residual = (W - block_matrix(w, p, q)).reshape(-1)
    assert (A.T @ residual).abs().max() < 1e-12
    if k == max(p, q):
        torch.testing.assert_close(nearest_dft_weight(W), w[0, 0], rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(q=st.integers(1, 12), p=st.integers(1, 12), data=st.data())
def test_hypothesis_projection_matches_lstsq(q, p, data):
    k = data.draw(st.integers(1, max(p, q)), label="k")
    W = torch.randn(q, p, dtype=F64)
    torch.testing.assert_close(nearest_block_weight(W, k), least_squares_weight(W, k), rtol=0, atol=1e-12)


def test_dft_anti_diagonals_have_min_p_q_entries():
    """One block of n = max(p, q): every wrapped anti-diagonal holds min(p, q) entries, mean = sum / min."""
    q, p = 3, 8
    W = torch.randn(q, p, dtype=F64)
    sums = torch.zeros(8, dtype=F64)
    for i in range(q):
        for j in range(p):
            sums[(i + j) % 8] += W[i, j]
    torch.testing.assert_close(nearest_dft_weight(W), sums / 3, rtol=0, atol=1e-15)


def test_zero_count_entries_are_zero():
    """5 x 5 with k = 4: the corner block has one real entry, so w[1, 1, 1:] tie nothing and are 0."""
    w = nearest_block_weight(torch.randn(5, 5, dtype=F64), 4)
    assert torch.equal(w[1, 1, 1:], torch.zeros(3, dtype=F64))


def test_projection_bad_input():
    with pytest.raises(ValueError, match="2-D weight"):
        nearest_dft_weight(torch.randn(3))
    with pytest.raises(ValueError, match=r"block_size must be an integer in \[1, .* = 5\], got 6"):
        nearest_block_weight(torch.randn(5, 3), 6)


# --- convert ---------------------------------------------------------------------------------------


def make_model(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(32, 64),
        nn.ReLU(),
        nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 20, bias=False)),
        nn.Linear(20, 4),
    ).to(dtype)


def test_convert_dft_replaces_linears_in_place():
    model = make_model(F64)
    old = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = convert(model)  # default min_features = 16 skips the 20 -> 4 head
    assert [r["name"] for r in report] == ["0", "2.0", "2.2"]
    assert all(isinstance(m, DFTLinear) for m in (model[0], model[2][0], model[2][2]))
    assert model[3] is old["3"]
    assert torch.equal(model[0].bias, old["0"].bias) and model[2][2].bias is None
    assert model[0].weight.dtype == F64 and model[0].weight.device == old["0"].weight.device
    for r in report:
        W = old[r["name"]].weight
        new = model.get_submodule(r["name"])
        torch.testing.assert_close(new.weight, nearest_dft_weight(W), rtol=0, atol=1e-13)
        assert r["in_features"] == W.shape[1] and r["out_features"] == W.shape[0]
        assert r["layer"] == "dft" and r["block_size"] == max(W.shape)
        assert r["params_before"] == W.numel() + (0 if old[r["name"]].bias is None else W.shape[0])
        assert r["params_after"] == sum(t.numel() for t in new.parameters())
        expected = ((W - new.to_dense()).norm() / W.norm()).item()
        assert r["rel_error"] == pytest.approx(expected, rel=1e-12)
        assert 0.8 < r["rel_error"] < 1  # a random matrix is far from circulant
    assert report[0]["params_after"] == 64 + 64 + 32  # spectrum, bias, diagonal (in_features)
    model(torch.randn(3, 32, dtype=F64))  # still runs


def test_convert_block_and_min_features():
    model = make_model()
    report = convert(model, layer="block", block_size=8, min_features=1)
    assert [r["name"] for r in report] == ["0", "2.0", "2.2", "3"]
    assert all(isinstance(model.get_submodule(r["name"]), BlockDFTLinear) for r in report)
    assert model[3].block_size == 8 and model[3].weight.shape == (1, 3, 8)
    assert report[0]["params_before"] == 32 * 64 + 64 and report[0]["params_after"] == 8 * 4 * 8 + 64
    model2 = make_model()
    assert [r["name"] for r in convert(model2, layer="block", block_size=4, min_features=64)] == ["2.0"]
    model3 = make_model()  # layers smaller than one block are skipped
    report3 = convert(model3, layer="block", block_size=50, min_features=1)
    assert [r["name"] for r in report3] == ["0", "2.0", "2.2"]


def test_filter_fn():
    model = make_model()
    seen = []

    def only_nested(module, name):
        seen.append((type(module), name))
        return name.startswith("2.")

    report = convert(model, filter_fn=only_nested)
    assert [r["name"] for r in report] == ["2.0", "2.2"]
    assert isinstance(model[0], nn.Linear) and not isinstance(model[0], DFTLinear)
    assert seen == [(nn.Linear, "0"), (nn.Linear, "2.0"), (nn.Linear, "2.2")]  # after the size rule


@pytest.mark.parametrize("layer,k", [("dft", None), ("block", 4), ("block", 16)])
def test_converting_a_structured_matrix_is_exact(layer, k):
    p, q = 37, 22
    src = DFTLinear(p, q, dtype=F64) if layer == "dft" else BlockDFTLinear(p, q, k, dtype=F64)
    lin = nn.Linear(p, q, dtype=F64)
    with torch.no_grad():
        lin.weight.copy_(src.to_dense())
        lin.bias.copy_(src.bias)
    model = nn.Sequential(lin)
    x = torch.randn(5, p, dtype=F64)
    y_before = model(x)
    (r,) = convert(model, layer, block_size=k)
    assert r["rel_error"] < 1e-15
    torch.testing.assert_close(model[0].to_dense(), src.to_dense(), rtol=0, atol=1e-15)
    if layer == "dft":
        torch.testing.assert_close(model[0].weight, src.weight, rtol=0, atol=1e-15)
    torch.testing.assert_close(model(x), y_before, rtol=0, atol=1e-13)


def test_sign_flip_projection_is_optimal():
    p, q, k = 9, 6, 4
    model = nn.Sequential(nn.Linear(p, q, dtype=F64))
    W = model[0].weight.detach().clone()
    (r,) = convert(model, "block", block_size=k, min_features=1, sign_flip=True)
    new = model[0]
    assert new.sign is not None
    torch.testing.assert_close(new.weight, least_squares_weight(W, k, sign=new.sign), rtol=0, atol=1e-12)
    assert r["rel_error"] == pytest.approx(((W - new.to_dense()).norm() / W.norm()).item(), rel=1e-12)


def test_shared_tied_and_attention_layers():
    shared = nn.Linear(32, 32)
    emb = nn.Embedding(100, 32)
    head = nn.Linear(32, 100, bias=False)
    head.weight = emb.weight  # tied
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared), "emb": emb, "head": head,
                           "attn": nn.MultiheadAttention(32, 4)})
    report = convert(model)
    assert [r["name"] for r in report] == ["a"]
    assert model["a"] is model["b"][0] and isinstance(model["a"], DFTLinear)
    assert type(model["head"]) is nn.Linear and model["head"].weight is model["emb"].weight
    assert not isinstance(model["attn"].out_proj, DFTLinear)
    q = torch.randn(5, 2, 32)
    model["attn"](q, q, q)  # still works


def test_keeps_requires_grad_training_mode_and_dtype():
    lin = nn.Linear(24, 40).to(torch.bfloat16)
    lin.weight.requires_grad_(False)
    model = nn.Sequential(lin).eval()
    convert(model, "block", block_size=8)
    assert model[0].spectrum.dtype == torch.bfloat16 and not model[0].spectrum.requires_grad
    assert model[0].bias.requires_grad and not model[0].training
    assert model(torch.randn(2, 24, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_convert_bad_arguments():
    model = make_model()
    with pytest.raises(ValueError, match="needs block_size"):
        convert(model, "block")
    with pytest.raises(ValueError, match="block_size is only for layer='block'"):
        convert(model, "dft", block_size=4)
    with pytest.raises(ValueError, match="layer must be one of"):
        convert(model, "circulant")
    with pytest.raises(ValueError, match="min_features must be a positive integer"):
        convert(model, min_features=0)
    with pytest.raises(ValueError, match="itself an nn.Linear"):
        convert(nn.Linear(20, 20))
    with pytest.raises(TypeError, match="expected an nn.Module"):
        convert(torch.randn(3))
    assert all(type(m) is not DFTLinear for m in model.modules())  # nothing half-done
