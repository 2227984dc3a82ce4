"""dftnet.init: flat magnitude spectra with zero DC, the stated scale, and deep ReLU stacks that keep their
activation scale (the module tests of each layer check reset_parameters on top of this)."""

import math

import pytest
import torch

from dftnet import DFTLinear
from dftnet.init import block_circulant_kaiming_, block_magnitude, circulant_kaiming_, circulant_magnitude


@pytest.mark.parametrize("p,q", [(64, 64), (100, 300), (300, 100), (7, 5)])
def test_circulant_init_has_a_flat_spectrum_and_zero_dc(p, q):
    n = max(p, q)
    w = circulant_kaiming_(torch.empty(n, dtype=torch.float64), p, q)
    mags = torch.fft.rfft(w).abs()
    assert mags[0] < 1e-12  # zero mean: a ReLU's positive mean does not pass on
    torch.testing.assert_close(mags[1:], torch.full_like(mags[1:], circulant_magnitude(p, q)))
    g = 2 / (1 - p / (n * math.pi))
    assert w.pow(2).mean().item() == pytest.approx(g / p * (n - 1) / n)  # Var(w) = g / p, less the DC bin


def test_circulant_init_is_random_and_falls_back_for_tiny_layers():
    a, b = (circulant_kaiming_(torch.empty(64), 64, 64) for _ in range(2))
    assert not torch.equal(a, b)
    w = circulant_kaiming_(torch.empty(2), 2, 1)
    assert w.abs().max() <= math.sqrt(6 / 2)


@pytest.mark.parametrize("p,q,k", [(64, 64, 16), (100, 48, 8), (48, 100, 32)])
def test_block_init_has_flat_block_spectra_and_zero_dc(p, q, k):
    R, C = -(-q // k), -(-p // k)
    w = block_circulant_kaiming_(torch.empty(R, C, k, dtype=torch.float64), p, q)
    mags = torch.fft.rfft(w, dim=-1).abs()
    assert mags[..., 0].max() < 1e-12
    torch.testing.assert_close(mags[..., 1:], torch.full_like(mags[..., 1:], block_magnitude(p, q, k)))


@pytest.mark.parametrize("width", [64, 256])
def test_deep_relu_stack_keeps_activation_scale(width):
    for seed in range(5):
        torch.manual_seed(seed)
        x = torch.randn(512, width)
        h = x
        for _ in range(10):
            h = torch.relu(DFTLinear(width, width, bias=False)(h))
        ratio = (h.pow(2).mean() / x.pow(2).mean()).sqrt().item()
        assert 0.5 <= ratio <= 2.0, (seed, ratio)
