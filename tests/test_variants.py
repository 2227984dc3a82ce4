"""dftnet.variants: one name <-> config <-> layer mapping, used by the models, the GPT and convert()."""

import pytest
import torch
from torch import nn

from dftnet import DFT, BlockDFT, BlockDFTLinear, Dense, DFTLinear, convert, parse_variant
from dftnet.experiments.gpt import mlp_linear
from dftnet.experiments.models import parse_layer_spec


@pytest.mark.parametrize("name,variant,cls", [
    ("dense", Dense(), nn.Linear), ("dft", DFT(), DFTLinear), ("dft-sign", DFT(sign_flip=True), DFTLinear),
    ("block-16", BlockDFT(16), BlockDFTLinear), ("block-8-sign", BlockDFT(8, sign_flip=True), BlockDFTLinear)])
def test_names_configs_and_layers_agree(name, variant, cls):
    assert parse_variant(name) == variant and variant.name == name and parse_variant(variant) is variant
    layer = variant.build(32, 64)
    assert type(layer) is cls and (layer.in_features, layer.out_features) == (32, 64)
    assert type(mlp_linear(name, 32, 64)) is cls
    if cls is not nn.Linear:
        assert (getattr(layer, "sign", None) is not None) == variant.sign_flip


@pytest.mark.parametrize("bad", ["dft-x", "block-0", "block", "dense-sign-x", "lowrank"])
def test_unknown_names_are_refused(bad):
    with pytest.raises(ValueError, match="unknown layer variant"):
        parse_variant(bad)
    with pytest.raises(ValueError, match="unknown layer variant"):
        parse_layer_spec(bad)
    with pytest.raises(ValueError, match="block_size"):
        BlockDFT(0)


def test_parse_layer_spec_is_the_variants_grammar():
    assert parse_layer_spec("block-32-sign") == ("block", {"sign_flip": True, "block_size": 32})
    assert parse_layer_spec("dft") == ("dft", {}) and parse_layer_spec("dense") == ("dense", {})


def test_convert_takes_a_config_a_name_or_the_plain_form():
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))

    a, b, c = model(), model(), model()
    for m, how in ((a, (BlockDFT(16, sign_flip=True),)), (b, ("block-16-sign",)), (c, ("block", 16))):
        torch.manual_seed(1)  # the same random signs
        convert(m, *how, sign_flip=m is c)
    x = torch.randn(4, 64)
    assert isinstance(a[0], BlockDFTLinear) and a[0].sign is not None
    torch.testing.assert_close(a(x), b(x))
    torch.testing.assert_close(a(x), c(x))
    with pytest.raises(ValueError, match="give one of them"):
        convert(model(), BlockDFT(16), block_size=8)
    with pytest.raises(ValueError, match="dense variant"):
        convert(model(), Dense())
