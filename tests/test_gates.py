import copy

import pytest
import torch

from prunekit.gates import Gates
from prunekit.models import load_teacher, model_output


def _batch(tok, n=4, seed=0):
    from factory import make_sentences

    enc = tok(make_sentences(n, seed), padding=True, return_tensors="pt")
    return dict(enc)


@pytest.mark.parametrize("shape", ["tinybert4", "minilm6"])
def test_all_ones_gates_leave_output_unchanged(tiny_models, shape):
    t = load_teacher(tiny_models(shape))
    batch = _batch(t.tokenizer)
    ref = model_output(t.model, t.kind, batch)
    gates = Gates(t.model, t.shape)
    ones_h = torch.ones(t.shape.num_layers, t.shape.num_heads)
    ones_f = torch.ones(t.shape.num_layers, t.shape.intermediate_size)
    with gates.active(ones_h, ones_f):
        out = model_output(t.model, t.kind, batch)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    gates.remove()
    torch.testing.assert_close(model_output(t.model, t.kind, batch), ref, rtol=0, atol=0)


def test_zero_gates_equal_removed_weights(tiny_models):
    """A closed head gate = the head's output-projection columns zeroed; a closed neuron gate = its
    down-projection column zeroed (the definition of removing the group)."""
    t = load_teacher(tiny_models("tinybert4"))
    d = t.shape.head_dim
    batch = _batch(t.tokenizer, seed=1)
    head = torch.ones(t.shape.num_layers, t.shape.num_heads)
    ffn = torch.ones(t.shape.num_layers, t.shape.intermediate_size)
    head[1, [0, 5, 11]] = 0
    head[3, :] = 0  # a layer with no heads
    ffn[0, :7] = 0
    ffn[2, :] = 0  # a layer with no FFN
    gates = Gates(t.model, t.shape)
    with gates.active(head, ffn):
        gated = model_output(t.model, t.kind, batch)
    gates.remove()

    ref_model = copy.deepcopy(t.model)
    layers = ref_model.encoder.layer
    with torch.no_grad():
        for li in range(t.shape.num_layers):
            for h in range(t.shape.num_heads):
                if head[li, h] == 0:
                    layers[li].attention.output.dense.weight[:, h * d : (h + 1) * d] = 0
            for n in range(t.shape.intermediate_size):
                if ffn[li, n] == 0:
                    layers[li].output.dense.weight[:, n] = 0
    torch.testing.assert_close(gated, model_output(ref_model, t.kind, batch), rtol=1e-5, atol=1e-5)


def test_gate_shape_mismatch_is_an_error(tiny_models):
    t = load_teacher(tiny_models("tinybert4"))
    gates = Gates(t.model, t.shape)
    with pytest.raises(ValueError, match="head gates"):
        with gates.active(torch.ones(2, 2), None):
            pass


def test_tiny_tokenizer_knows_the_words(tiny_models):
    """The test models' tokenizer must map the test sentences to real ids, not [UNK]."""
    t = load_teacher(tiny_models("tinybert4"))
    ids = t.tokenizer("the river stone")["input_ids"]
    assert t.tokenizer.unk_token_id not in ids and len(ids) == 5
