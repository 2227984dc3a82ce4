"""dftnet.variants: one name <-> config <-> layer mapping, used by the models, the GPT and convert()."""

import pytest
import torch
from torch import nn

from dftnet import DFT, BlockDFT, BlockDFTLinear, Dense, DFTLinear, convert, parse_variant
from dftnet.experiments.lm.gpt import mlp_linear
from dftnet.experiments.mnist.models import parse_layer_spec
from dftnet.peers import LowRankLinear, MonarchLinear
from dftnet.variants import LowRank, Monarch


@pytest.mark.parametrize("name,variant,cls", [
    ("dense", Dense(), nn.Linear), ("dft", DFT(), DFTLinear), ("dft-sign", DFT(sign_flip=True), DFTLinear),
    ("block-16", BlockDFT(16), BlockDFTLinear), ("block-8-sign", BlockDFT(8, sign_flip=True), BlockDFTLinear),
    ("lowrank-4", LowRank(4), LowRankLinear), ("monarch-4", Monarch(4), MonarchLinear),
    ("dft@16", DFT(ratio=16), DFTLinear), ("block-8-sign@2", BlockDFT(8, sign_flip=True, ratio=2), BlockDFTLinear),
    ("monarch-2@8", Monarch(2, ratio=8), MonarchLinear), ("dense@4", Dense(ratio=4), nn.Linear)])
def test_names_configs_and_layers_agree(name, variant, cls):
    assert parse_variant(name) == variant and variant.name == name and parse_variant(variant) is variant
    layer = variant.build(32, 64)
    assert type(layer) is cls and (layer.in_features, layer.out_features) == (32, 64)
    assert type(mlp_linear(name, 32, 64)) is cls
    if cls in (DFTLinear, BlockDFTLinear):
        assert (getattr(layer, "sign", None) is not None) == variant.sign_flip
    if cls is LowRankLinear:
        assert layer.rank == 32 // 4


def test_every_command_line_parser_is_the_one_grammar():
    from dftnet.experiments.argtypes import ArgumentValueError, layer_spec, mlp_variant
    from dftnet.experiments.lm.gpt import split_variant

    assert mlp_variant("Monarch-4@8") == "monarch-4@8" and split_variant("monarch-4@8") == ("monarch-4", 8)
    assert layer_spec("BLOCK-16-sign") == "block-16-sign"
    with pytest.raises(ArgumentValueError, match="not a variant here"):
        layer_spec("lowrank-4")  # the MNIST nets are dense, DFT or block layers
    with pytest.raises(ArgumentValueError, match="ratio"):
        layer_spec("dft@4")
    with pytest.raises(ValueError, match="positive integer"):
        parse_variant("dft@0")
    with pytest.raises(ValueError, match="no projection"):
        convert(nn.Sequential(nn.Linear(8, 8)), "lowrank-2")


@pytest.mark.parametrize("bad", ["dft-x", "block-0", "block", "dense-sign-x", "lowrank", "lowrank-4-sign", "monarch-x"])
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
