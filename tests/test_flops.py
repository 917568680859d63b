import pytest
import torch
from transformers import BertConfig, BertModel

from prunekit.flops import ModelShape, expected_flops_ratio, layer_flops, model_flops

SHAPES = {
    "tinybert4": ModelShape(num_layers=4, hidden_size=312, num_heads=12, head_dim=26, intermediate_size=1200),
    "tinybert6": ModelShape(num_layers=6, hidden_size=768, num_heads=12, head_dim=64, intermediate_size=3072),
    "bert-base": ModelShape(num_layers=12, hidden_size=768, num_heads=12, head_dim=64, intermediate_size=3072),
    "minilm": ModelShape(num_layers=6, hidden_size=384, num_heads=12, head_dim=32, intermediate_size=1536),
}


def test_hand_count_tiny_layer():
    # hidden 8, 2 heads of 4, FFN 16, 5 tokens; every product written out by hand (2 FLOPs per MAC).
    shape = ModelShape(num_layers=1, hidden_size=8, num_heads=2, head_dim=4, intermediate_size=16)
    t = 5
    qkv = 3 * (2 * t * 8 * 8)  # three [5x8]@[8x8]
    scores = 2 * (2 * t * t * 4)  # per head [5x4]@[4x5]
    context = 2 * (2 * t * t * 4)  # per head [5x5]@[5x4]
    out = 2 * t * 8 * 8
    ffn = 2 * t * 8 * 16 + 2 * t * 16 * 8
    assert layer_flops(shape, t, 2, 16) == {"qkv": qkv, "attention": scores + context, "output": out, "ffn": ffn}
    report = model_flops(shape, t)
    assert report.total == qkv + scores + context + out + ffn
    # one head and half the FFN: exactly the cost of the groups removed
    pruned = model_flops(shape, t, [1], [8])
    assert report.total - pruned.total == shape.head_cost(t) + 8 * shape.neuron_cost(t)


def test_classifier_head_counted():
    shape = ModelShape(num_layers=1, hidden_size=8, num_heads=2, head_dim=4, intermediate_size=16, num_labels=3)
    assert model_flops(shape, 5).by_component["pooler_classifier"] == 2 * 8 * 8 + 2 * 8 * 3


def test_tinybert4_ffn_share_matches_study():
    # the study: the FFN is ~61% of TinyBERT-4L's FLOPs (at 128 tokens)
    share = model_flops(SHAPES["tinybert4"], 128).shares()["ffn"]
    assert 0.60 < share < 0.63


def test_bert_base_flops_magnitude():
    # BERT-base at 128 tokens: ~22 GFLOPs (11 GMACs) in the encoder
    total = model_flops(SHAPES["bert-base"], 128).total
    assert 21e9 < total < 23e9


@pytest.mark.parametrize("name", list(SHAPES))
def test_expected_ratio_is_linear_in_gates(name):
    shape = SHAPES[name]
    ones_h = torch.ones(shape.num_layers, shape.num_heads)
    ones_f = torch.ones(shape.num_layers, shape.intermediate_size)
    assert float(expected_flops_ratio(shape, 128, ones_h, ones_f)) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    mh = (torch.rand(ones_h.shape, generator=g) > 0.5).float()
    mf = (torch.rand(ones_f.shape, generator=g) > 0.3).float()
    exact = model_flops(shape, 128, mh.sum(1).int().tolist(), mf.sum(1).int().tolist()).total / model_flops(shape, 128).total
    assert float(expected_flops_ratio(shape, 128, mh, mf)) == pytest.approx(exact, rel=1e-6)  # float32 sums


def test_fvcore_measured_count_agrees_with_analytic():
    from fvcore.nn import FlopCountAnalysis

    config = BertConfig(vocab_size=50, hidden_size=36, num_hidden_layers=2, num_attention_heads=12, intermediate_size=48, max_position_embeddings=64)
    config._attn_implementation = "eager"  # fvcore has no handler for SDPA
    model = BertModel(config, add_pooling_layer=False).eval()
    t = 20
    ids = torch.randint(0, 50, (1, t))
    analysis = FlopCountAnalysis(model, (ids,))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_op = analysis.by_operator()
    matmul_macs = sum(v for k, v in by_op.items() if k in ("linear", "addmm", "matmul", "bmm", "einsum"))
    shape = ModelShape.from_config(config, num_labels=0)
    assert 2 * matmul_macs == model_flops(shape, t).total
