"""dftnet.param_groups: one weight-decay rule for dense, DFT and block layers."""

import torch
from torch import nn

import dftnet
from dftnet import BlockDFTLinear, DFTLinear


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 16)
        self.dense = nn.Linear(16, 32)
        self.dft = DFTLinear(32, 64)
        self.block = BlockDFTLinear(64, 32, block_size=8)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 10, bias=False)
        self.head.weight = self.emb.weight  # tied


def test_spectra_and_block_weights_are_decayed_alike():
    m = Mixed()
    decay, no_decay = dftnet.param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}
    assert ids(decay["params"]) == ids([m.emb.weight, m.dense.weight, m.dft.spectrum, m.block.spectrum])
    assert m.dft.spectrum.dim() == 1  # the case the dim >= 2 rule gets wrong
    block_diagonal = [m.block.diagonal] if m.block.diagonal is not None else []
    assert ids(no_decay["params"]) == ids([m.dense.bias, m.dft.bias, m.dft.diagonal, m.block.bias,
                                           m.norm.weight, m.norm.bias] + block_diagonal)
    total = len(decay["params"]) + len(no_decay["params"])
    assert total == len(list(m.parameters()))  # every parameter once, the tied one too


def test_groups_drive_adamw_decay():
    m = Mixed()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW(dftnet.param_groups(m, 0.5), lr=0.1)
    opt.step()
    after = dict(m.named_parameters())
    torch.testing.assert_close(after["dft.spectrum"], before["dft.spectrum"] * (1 - 0.05))
    torch.testing.assert_close(after["block.spectrum"], before["block.spectrum"] * (1 - 0.05))
    torch.testing.assert_close(after["dft.bias"], before["dft.bias"])
    torch.testing.assert_close(after["norm.weight"], before["norm.weight"])


def test_frozen_parameters_are_left_out():
    m = Mixed()
    m.dft.spectrum.requires_grad_(False)
    decay, _ = dftnet.param_groups(m, 0.1)
    assert all(p is not m.dft.spectrum for p in decay["params"])
