"""The spectral parametrisation: exact transforms, and wide nets that train under a plain AdamW loop."""

import pytest
import torch
from torch import nn

from dftnet import DFTLinear
from dftnet.spectral import SPECTRAL_GAIN, hartley, spectrum_to_weight, weight_to_spectrum

F64 = torch.float64


@pytest.mark.parametrize("n", [1, 2, 3, 8, 9, 16, 785])
def test_hartley_matches_its_definition_and_is_an_involution(n):
    x = torch.randn(2, n, dtype=F64)
    m = torch.arange(n, dtype=F64)
    angle = 2 * torch.pi * m[:, None] * m[None, :] / n
    ref = x @ (torch.cos(angle) + torch.sin(angle))
    torch.testing.assert_close(hartley(x), ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(hartley(hartley(x)), n * x, rtol=0, atol=1e-10)


def test_weight_and_spectrum_are_inverse_and_keep_the_spectrum_per_frequency():
    w = torch.randn(64, dtype=F64)
    s = weight_to_spectrum(w, 3.0)
    torch.testing.assert_close(spectrum_to_weight(s, 3.0), w, rtol=0, atol=1e-13)
    # coordinates k and n - k hold frequency k only: a change there changes only |rfft(w)[k]|
    s2 = s.clone()
    s2[5] += 1.0
    diff = torch.fft.rfft(spectrum_to_weight(s2, 3.0) - w).abs()
    assert diff[5] > 1e-3 and torch.cat([diff[:5], diff[6:]]).max() < 1e-12


def test_init_spectrum_scale_is_width_independent():
    for p, q in [(784, 16384), (16384, 16384), (16384, 10), (256, 64)]:
        layer = DFTLinear(p, q)
        rms = layer.spectrum.detach()[1:].pow(2).mean().sqrt().item()
        assert 0.8 < rms * SPECTRAL_GAIN < 1.25, (p, q, rms)


def _alive(model, x):
    """Fraction of units of each hidden ReLU that are positive for at least one example."""
    fractions, h = [], x
    with torch.no_grad():
        for m in model:
            h = m(h)
            if isinstance(m, nn.ReLU):
                fractions.append((h > 0).any(0).float().mean().item())
    return fractions


def _teacher_data(n, p, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g)
    teacher = torch.randn(p, classes, generator=g)
    return x, (x @ teacher).argmax(1)


@pytest.mark.slow
@pytest.mark.parametrize("lr", [1e-3, 3e-3])
def test_a_wide_net_trains_under_a_plain_adamw_loop(lr):
    """784-16384-16384-10 with one AdamW parameter group: the loss falls and the ReLUs stay alive.

    The previous parametrisation (the weight itself) killed every unit of the second hidden layer in the
    first step at lr 3e-3."""
    torch.manual_seed(0)
    model = nn.Sequential(DFTLinear(784, 16384), nn.ReLU(), DFTLinear(16384, 16384), nn.ReLU(),
                          DFTLinear(16384, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    x, y = _teacher_data(64, 784, 10)
    losses = []
    for _ in range(12):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert min(_alive(model, x)) >= 0.2
    assert losses[-1] < 0.5 * losses[0]


def test_a_deep_wide_stack_trains_with_no_dead_layer():
    """10 DFT layers of width 4096: loss falls, and every hidden layer keeps live units."""
    torch.manual_seed(0)
    layers = []
    for i in range(10):
        layers += [DFTLinear(4096 if i else 256, 4096 if i < 9 else 10)] + ([nn.ReLU()] if i < 9 else [])
    model = nn.Sequential(*layers)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = _teacher_data(32, 256, 10)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert min(_alive(model, x)) >= 0.2
