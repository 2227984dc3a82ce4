"""dftnet._dispatch.routes: the structures' routes, their choice (``layer.route``) and the inference memo."""

import pytest
import torch

from dftnet import BlockDFTLinear, DFTLinear


def _taken(layer, x, monkeypatch) -> list[str]:
    """The routes the layer's forward runs on ``x`` (its structure's dense and fft methods, spied on)."""
    structure, taken = layer._get_structure(), []
    for name in ("dense", "fft"):
        real = getattr(structure, name)
        monkeypatch.setattr(structure, name, lambda *a, _real=real, _name=name: (taken.append(_name), _real(*a))[1])
    layer(x)
    monkeypatch.undo()
    return taken


LAYERS = [lambda m: DFTLinear(64, 48, method=m), lambda m: DFTLinear(10, 300, method=m),
          lambda m: BlockDFTLinear(96, 64, 16, method=m), lambda m: BlockDFTLinear(256, 256, 64, method=m)]


@pytest.mark.parametrize("make", LAYERS)
@pytest.mark.parametrize("method", ["auto", "fft", "dense"])
def test_route_is_the_forwards_own_decision(make, method, monkeypatch):
    layer = make(method)
    for batch in (0, 1, 4, 64, 512):
        for training in (False, True):
            x = torch.randn(batch, layer.in_features)
            with torch.set_grad_enabled(training):
                taken = _taken(layer, x, monkeypatch)
                assert taken == [layer.route(batch)], (batch, training)  # training=None: as the call now
            assert layer.route(batch, training=training) == taken[0]
    assert layer.route(0) == "dense"
    if method != "auto":
        assert {layer.route(b, training=t) for b in (1, 4096) for t in (False, True)} == {method}


def test_route_follows_the_cost_model():
    layer = DFTLinear(64, 64)
    assert layer.route(1, training=False) == "dense"  # a small layer on one row: the FFT's fixed cost dominates
    big = DFTLinear(4096, 4096)
    assert big.route(256, training=True) == "fft"
