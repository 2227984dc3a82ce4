"""Converted Hugging Face models: every linear layer handled or reported, and a save/load round trip."""

import pytest
import torch

from dftnet import BlockDFTLinear, DFTLinear, convert
from dftnet.pretrained import load_converted, save_converted

transformers = pytest.importorskip("transformers")


def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("layer,block_size", [("dft", None), ("block", 16)])
def test_llama_round_trip_is_identical(tmp_path, layer, block_size):
    model = tiny_llama()
    report = convert(model, layer, block_size)
    assert len(report) == 14  # q, k, v, o, gate, up, down per layer
    assert [s["name"] for s in report.skipped] == ["lm_head"]  # the output head is left alone
    assert "output head" in report.skipped[0]["reason"]
    kind = DFTLinear if layer == "dft" else BlockDFTLinear
    assert isinstance(model.model.layers[0].mlp.up_proj, kind)
    save_converted(model, tmp_path, report)
    loaded = load_converted(transformers.LlamaForCausalLM, tmp_path)
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    out = loaded.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)
    model.resize_token_embeddings(140)  # the head was left an nn.Linear, so this still works
    assert model.get_output_embeddings().out_features == 140


def test_load_without_the_record_fails_clearly(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="dftnet.json"):
        load_converted(transformers.LlamaForCausalLM, tmp_path)


def test_gpt2_conv1d_is_converted_and_the_tied_head_reported():
    config = transformers.GPT2Config(n_embd=64, n_layer=1, n_head=4, vocab_size=100, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    block = model.transformer.h[0]
    W = block.mlp.c_fc.weight.detach().T.clone()  # Conv1D stores (in, out)
    ids = torch.randint(0, 100, (1, 8))
    report = convert(model, "dft")
    assert {r["name"] for r in report} == {f"transformer.h.0.{n}" for n in
                                           ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert isinstance(block.mlp.c_fc, DFTLinear) and block.mlp.c_fc.in_features == 64
    assert block.mlp.c_fc.out_features == 256
    rel = (W - block.mlp.c_fc.to_dense()).norm() / W.norm()
    assert report[2]["rel_error"] == pytest.approx(rel.item(), rel=1e-5)
    assert [(s["name"], "tied" in s["reason"]) for s in report.skipped] == [("lm_head", True)]
    assert model.lm_head.weight is model.transformer.wte.weight
    model(ids)
