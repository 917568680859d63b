"""Compaction: parity with the gated teacher, backends, save/load through the Auto classes, FLOPs, CLI, bad input."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from transformers.activations import ACT2FN

from factory import assert_one_line_error, edge_architecture, make_run_dir, random_batch, scramble, tiny_roberta_teacher
from prunekit.architecture import Architecture
from prunekit.cli import cli
from prunekit.compact import compact, compact_to_dir, fvcore_flops
from prunekit.errors import PrunekitError
from prunekit.flops import model_flops
from prunekit.gates import Gates
from prunekit.modeling import CompactBertForSequenceClassification, CompactBertModel, load_compact, pad_ffn_widths
from prunekit.models import Teacher, load_teacher, model_output

SHAPES = ("tinybert4", "minilm6", "bert12")
HAS_FVCORE = importlib.util.find_spec("fvcore") is not None
KINDS = ("embedding", "classification", "regression")


def gated_output(teacher: Teacher, arch: Architecture, batch: dict) -> torch.Tensor:
    gates = Gates(teacher.model, teacher.shape)
    try:
        with torch.no_grad(), gates.active(*arch.to_masks(teacher.shape)):
            return model_output(teacher.model, teacher.kind, batch)
    finally:
        gates.remove()


def run_output(model, kind: str, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model_output(model, kind, batch)


def scrambled_teacher(tiny_models, shape: str, kind: str, seed: int = 0) -> Teacher:
    teacher = load_teacher(str(tiny_models(shape, kind)))
    scramble(teacher.model, seed)
    return teacher


# ------------------------------------------------------------------------------------------------
# Parity
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_parity_with_gated_teacher(tiny_models, shape, kind):
    teacher = scrambled_teacher(tiny_models, shape, kind)
    arch = edge_architecture(teacher.shape, seed=SHAPES.index(shape) * 3 + KINDS.index(kind))
    model = compact(teacher, arch)
    assert model.config.num_heads_per_layer == arch.head_counts
    assert model.config.intermediate_sizes == arch.ffn_widths
    assert model.config.kept_heads == arch.heads
    batch = random_batch(teacher.config.vocab_size, batch=5, length=13, seed=1)
    ref = gated_output(teacher, arch, batch)
    full = run_output(teacher.model, kind, batch)
    assert (full - ref).abs().max() > 1e-2, "the masks change nothing: the test would prove nothing"
    for backend in ("eager", "sdpa"):
        out = run_output(model.set_backend(backend), kind, batch)
        diff = (out - ref).abs().max().item()
        assert diff < 1e-5, f"{backend}: max |compact - gated| = {diff:.2e}"


def test_parity_keep_everything_is_the_teacher(tiny_models):
    teacher = scrambled_teacher(tiny_models, "minilm6", "classification", seed=3)
    shape = teacher.shape
    arch = Architecture.from_masks(torch.ones(shape.num_layers, shape.num_heads), torch.ones(shape.num_layers, shape.intermediate_size))
    model = compact(teacher, arch)
    batch = random_batch(teacher.config.vocab_size, 4, 11, seed=2)
    assert (run_output(model, "classification", batch) - run_output(teacher.model, "classification", batch)).abs().max() < 1e-5
    from prunekit.compact import count_params

    assert count_params(model) == count_params(teacher.model)


def test_pad_ffn_widths_keeps_outputs(tiny_models, tmp_path):
    teacher = scrambled_teacher(tiny_models, "minilm6", "classification", seed=16)
    arch = edge_architecture(teacher.shape, seed=17)
    model = compact(teacher, arch)
    batch = random_batch(teacher.config.vocab_size, 3, 9, seed=18)
    before = run_output(model, "classification", batch)
    pad_ffn_widths(model, 8)
    widths = model.config.intermediate_sizes
    assert all(w % 8 == 0 for w in widths) and [w == 0 for w in widths] == [w == 0 for w in arch.ffn_widths]
    assert all(0 <= w - a < 8 for w, a in zip(widths, arch.ffn_widths))
    assert [layer.up.out_features for layer in model.bert.layers if layer.up is not None] == [w for w in widths if w]
    assert (run_output(model, "classification", batch) - before).abs().max() < 1e-6
    model.save_pretrained(tmp_path / "padded")  # still a valid compact model
    assert (run_output(load_compact(tmp_path / "padded"), "classification", batch) - before).abs().max() < 1e-6


def test_attention_maps_and_hidden_states_match_the_kept_heads(tiny_models):
    teacher = scrambled_teacher(tiny_models, "minilm6", "embedding", seed=4)
    arch = edge_architecture(teacher.shape, seed=5)
    model = compact(teacher, arch)
    batch = random_batch(teacher.config.vocab_size, 3, 9, seed=6)
    gates = Gates(teacher.model, teacher.shape)
    with torch.no_grad(), gates.active(*arch.to_masks(teacher.shape)):
        ref = teacher.model(**batch, output_attentions=True, output_hidden_states=True)
    gates.remove()
    with torch.no_grad():
        out = model(**batch, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == len(out.hidden_states) - 1 == teacher.shape.num_layers
    for i, heads in enumerate(model.config.kept_heads):
        assert out.attentions[i].shape[1] == len(heads)
        torch.testing.assert_close(out.attentions[i], ref.attentions[i][:, heads], atol=1e-5, rtol=0)
    for mine, theirs in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


def test_parity_roberta_positions():
    teacher, batch = tiny_roberta_teacher()
    arch = edge_architecture(teacher.shape, seed=8)
    model = compact(teacher, arch)
    assert model.config.position_style == "roberta"
    ref = gated_output(teacher, arch, batch)
    for backend in ("eager", "sdpa"):
        assert (run_output(model.set_backend(backend), "classification", batch) - ref).abs().max() < 1e-5


def test_parity_triton_interpreted(tiny_models):
    import prunekit_kernels

    ok, why = prunekit_kernels.triton_available("cpu")
    if not ok:
        pytest.skip(why)
    teacher = scrambled_teacher(tiny_models, "minilm6", "classification", seed=10)
    arch = edge_architecture(teacher.shape, seed=11)
    model = compact(teacher, arch).set_backend("triton")
    batch = random_batch(teacher.config.vocab_size, 3, 7, seed=12)
    ref = gated_output(teacher, arch, batch)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        eager = compact(teacher, arch)(**batch, output_hidden_states=True)
    assert (out.logits - ref).abs().max() < 1e-5
    valid = batch["attention_mask"].bool()
    for mine, theirs in zip(out.hidden_states, eager.hidden_states):
        assert (mine[valid] - theirs[valid]).abs().max() < 1e-5
        assert (mine[~valid] == 0).all()  # padding comes back as zeros
    # The same kernels on the padded batch (what the padding-free path is measured against).
    model.set_backend("triton-padded")
    with torch.no_grad():
        padded = model(**batch, output_hidden_states=True)
    assert (padded.logits - ref).abs().max() < 1e-5
    assert (padded.hidden_states[-1] - eager.hidden_states[-1]).abs().max() < 1e-5  # padding rows too
    # An embedding model's pooled output through the packed path too.
    emb_teacher = scrambled_teacher(tiny_models, "tinybert4", "embedding", seed=13)
    emb_arch = edge_architecture(emb_teacher.shape, seed=14)
    emb = compact(emb_teacher, emb_arch).set_backend("triton")
    b2 = random_batch(emb_teacher.config.vocab_size, 2, 5, seed=15)
    assert (run_output(emb, "embedding", b2) - gated_output(emb_teacher, emb_arch, b2)).abs().max() < 1e-5
    torch.testing.assert_close(emb.encode(**b2), run_output(emb, "embedding", b2))


# ------------------------------------------------------------------------------------------------
# Backends: clear errors
# ------------------------------------------------------------------------------------------------
def test_backend_errors(tiny_models, monkeypatch):
    teacher = load_teacher(str(tiny_models("minilm6", "embedding")))
    model = compact(teacher, edge_architecture(teacher.shape, 0))
    with pytest.raises(PrunekitError, match="unknown backend"):
        model.set_backend("flash")
    import prunekit_kernels

    monkeypatch.setattr(prunekit_kernels, "triton_available", lambda device=None: (False, "no GPU here"))
    with pytest.raises(PrunekitError, match="triton backend cannot run on cpu: no GPU here"):
        model.set_backend("triton")
    monkeypatch.undo()
    if prunekit_kernels.triton_available("cpu")[0]:
        model.set_backend("triton").train()
        with pytest.raises(PrunekitError, match="inference-only"):
            model(**random_batch(teacher.config.vocab_size, 2, 4, 0))


# ------------------------------------------------------------------------------------------------
# FLOPs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,kind", [("tinybert4", "classification"), ("minilm6", "embedding"), ("bert12", "regression")])
def test_fvcore_matches_analytic(tiny_models, shape, kind):
    teacher = load_teacher(str(tiny_models(shape, kind)))
    arch = edge_architecture(teacher.shape, seed=21)
    model = compact(teacher, arch).set_backend("sdpa")  # fvcore must switch to eager itself
    for seq_len in (16, 37):
        analytic = model_flops(teacher.shape, seq_len, arch.head_counts, arch.ffn_widths).total
        measured = fvcore_flops(model, kind, seq_len, teacher.config.vocab_size)
        assert measured["matmul"] == analytic, measured["by_operator"]
        assert measured["by_operator"]["matmul"] > 0  # attention matmuls are counted
        assert model.config.backend == "sdpa"
    original = fvcore_flops(teacher.model, kind, 16, teacher.config.vocab_size)
    assert original["matmul"] == model_flops(teacher.shape, 16).total


# ------------------------------------------------------------------------------------------------
# Save / load
# ------------------------------------------------------------------------------------------------
def test_compact_to_dir_and_auto_classes(tiny_models, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    teacher = load_teacher(str(tiny_models("bert12", "classification")))
    arch = edge_architecture(teacher.shape, seed=31)
    run = make_run_dir(tmp_path / "run", teacher, arch)
    report = compact_to_dir(run, out_dir=tmp_path / "out", measure_fvcore=False)
    out = tmp_path / "out"
    assert {"config.json", "model.safetensors", "architecture.json", "compact_report.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert report.compact["flops_analytic"] == model_flops(teacher.shape, 32, arch.head_counts, arch.ffn_widths).total
    assert report.original["params"] > report.compact["params"]
    assert json.loads((out / "compact_report.json").read_text())["heads_per_layer"] == arch.head_counts

    in_memory = compact(teacher, arch)
    batch = random_batch(teacher.config.vocab_size, 3, 10, seed=32)
    expected = run_output(in_memory, "classification", batch)
    assert type(AutoConfig.from_pretrained(out)).__name__ == "CompactBertConfig"
    clf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert isinstance(clf, CompactBertForSequenceClassification)
    assert torch.equal(run_output(clf, "classification", batch), expected)
    base = AutoModel.from_pretrained(out).eval()  # the encoder alone, from the classifier's weights
    assert isinstance(base, CompactBertModel)
    with torch.no_grad():
        torch.testing.assert_close(base(**batch).last_hidden_state, in_memory.bert(**batch).last_hidden_state, atol=0, rtol=0)
    assert AutoTokenizer.from_pretrained(out)("the river")["input_ids"]
    loaded = load_compact(out, backend="sdpa")
    assert loaded.config.backend == "sdpa"
    assert torch.allclose(run_output(loaded, "classification", batch), expected, atol=1e-6)


def test_embedding_model_round_trip(tiny_models, tmp_path):
    from transformers import AutoModel

    teacher = load_teacher(str(tiny_models("tinybert4", "embedding")))
    arch = edge_architecture(teacher.shape, seed=41)
    run = make_run_dir(tmp_path / "run", teacher, arch)
    compact_to_dir(run, out_dir=tmp_path / "out", measure_fvcore=False)
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    batch = random_batch(teacher.config.vocab_size, 2, 8, seed=42)
    assert torch.allclose(run_output(model, "embedding", batch), gated_output(teacher, arch, batch), atol=1e-6)


def test_weights_from_search_checkpoint(tiny_models, tmp_path):
    from prunekit.checkpoint import write_checkpoint

    teacher = load_teacher(str(tiny_models("minilm6", "embedding")))
    arch = edge_architecture(teacher.shape, seed=51)
    run = make_run_dir(tmp_path / "run", teacher, arch)
    with pytest.raises(PrunekitError, match="no trained weights"):
        compact_to_dir(run, out_dir=tmp_path / "a", weights="search", measure_fvcore=False)
    trained = {f"student.{k}": v.clone() + 0.5 for k, v in teacher.model.state_dict().items()}
    write_checkpoint(run / "checkpoints", 10, trained, {})
    compact_to_dir(run, out_dir=tmp_path / "b", weights="search", measure_fvcore=False)
    model = load_compact(tmp_path / "b")
    want = trained["student.embeddings.word_embeddings.weight"]
    assert torch.equal(model.embeddings.word_embeddings.weight, want)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def test_cli_compact(tiny_models, tmp_path):
    teacher = load_teacher(str(tiny_models("minilm6", "classification")))
    arch = edge_architecture(teacher.shape, seed=61)
    run = make_run_dir(tmp_path / "run", teacher, arch)
    runner = CliRunner()
    res = runner.invoke(cli, ["compact", str(run), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "FLOPs analytic (T=32)" in res.output and "FLOPs fvcore x2" in res.output and "parameters" in res.output
    report = json.loads((tmp_path / "out" / "compact_report.json").read_text())
    if HAS_FVCORE:  # a dependency; missing only on a bare machine such as the lent GPU's image
        flops_line = next(line for line in res.output.splitlines() if line.startswith("FLOPs fvcore"))
        analytic_line = next(line for line in res.output.splitlines() if line.startswith("FLOPs analytic"))
        assert flops_line.split()[-5:] == analytic_line.split()[-5:]  # same numbers, same ratio
    assert report["compact"]["flops_fvcore"] == (report["compact"]["flops_analytic"] if HAS_FVCORE else None)
    assert report["original"]["flops_fvcore"] == (report["original"]["flops_analytic"] if HAS_FVCORE else None)

    assert_one_line_error(runner.invoke(cli, ["compact", str(run), "-o", str(tmp_path / "out")]), "already exists", "--force")
    forced = runner.invoke(cli, ["compact", str(run), "-o", str(tmp_path / "out"), "--force", "--no-fvcore"])
    assert forced.exit_code == 0, forced.output
    # Default output: beside the run dir.
    default = runner.invoke(cli, ["compact", str(run), "--no-fvcore"])
    assert default.exit_code == 0 and (tmp_path / "run-compact" / "model.safetensors").is_file()
    # --architecture and --model without a run dir.
    explicit = runner.invoke(cli, ["compact", "--architecture", str(run / "architecture.json"), "--model",
                                   str(tiny_models("minilm6", "classification")), "-o", str(tmp_path / "x"), "--no-fvcore"])
    assert explicit.exit_code == 0, explicit.output


# ------------------------------------------------------------------------------------------------
# Bad input: one clear line, nothing half-written
# ------------------------------------------------------------------------------------------------
def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_bad_inputs(tiny_models, tmp_path):
    runner = CliRunner()
    teacher = load_teacher(str(tiny_models("bert12", "embedding")))
    run = make_run_dir(tmp_path / "run", teacher, edge_architecture(teacher.shape, 71))

    def fails(args, match):
        assert_one_line_error(runner.invoke(cli, ["compact", *args]), match)
        assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []

    fails([str(tmp_path / "missing"), "-o", str(tmp_path / "out")], "run directory not found")
    fails([str(run), "--model", str(tiny_models("minilm6", "embedding")), "-o", str(tmp_path / "out")], "hidden size 24, this one has 32")
    fails(["-o", str(tmp_path / "out")], "give a search run dir")
    other = tmp_path / "other"
    other.mkdir()
    fails([str(other), "-o", str(tmp_path / "out")], "not a search run dir")
    data = json.loads((run / "architecture.json").read_text())
    (run / "architecture.json").write_text(json.dumps(dict(data, layers=data["layers"][:-1])))
    fails([str(run), "-o", str(tmp_path / "out")], "11 layers but the model has 12")
    # Same sizes, another model: caught by the config hash.
    data["base_model"]["config_hash"] = "0123456789abcdef"
    (run / "architecture.json").write_text(json.dumps(data))
    fails([str(run), "-o", str(tmp_path / "out")], "was searched for")
    (run / "architecture.json").write_text("{not json")
    fails([str(run), "-o", str(tmp_path / "out")], "not valid JSON")


def test_load_compact_missing_or_corrupt_weights(tiny_models, tmp_path):
    teacher = load_teacher(str(tiny_models("minilm6", "regression")))
    run = make_run_dir(tmp_path / "run", teacher, edge_architecture(teacher.shape, 81))
    out = tmp_path / "out"
    compact_to_dir(run, out_dir=out, measure_fvcore=False)
    assert load_compact(out).config.task_kind == "regression"
    weights = out / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # cut short
    with pytest.raises(PrunekitError, match="corrupt or incomplete"):
        load_compact(out)
    weights.write_bytes(b"\x00" * 64)  # garbage
    with pytest.raises(PrunekitError, match="corrupt or incomplete"):
        load_compact(out)
    os.remove(weights)
    with pytest.raises(PrunekitError, match="no model.safetensors"):
        load_compact(out)
    with pytest.raises(PrunekitError, match="no config.json"):
        load_compact(tmp_path / "run")
    with pytest.raises(PrunekitError, match="not a prunekit compact model"):
        load_compact(tiny_models("minilm6", "regression"))


def test_compact_a_real_search_run(tiny_models, text_file, tmp_path):
    runner = CliRunner()
    model = tiny_models("minilm6", "embedding")
    res = runner.invoke(cli, ["search", "--model", str(model), "--data", str(text_file), "--method", "random", "--target", "0.4",
                              "-o", str(tmp_path / "run"), "--max-length", "32", "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["compact", str(tmp_path / "run"), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "compact_report.json").read_text())
    assert report["compact"]["flops_fvcore"] == (report["compact"]["flops_analytic"] if HAS_FVCORE else None)
    assert 0.35 < report["compact"]["flops_analytic"] / report["original"]["flops_analytic"] <= 0.42
    assert report["teacher"] == str(model)


# ------------------------------------------------------------------------------------------------
# GPU speed paths that must not change outputs: aligned widths, packed capacity, CUDA graphs
# ------------------------------------------------------------------------------------------------
def _triton_cpu_or_skip():
    import prunekit_kernels

    ok, why = prunekit_kernels.triton_available("cpu")
    if not ok:
        pytest.skip(why)


def test_aligned_widths_keep_outputs_and_saved_shapes(tiny_models, tmp_path):
    # tinybert4: head_dim 3, so QKV widths (9 per head) are unaligned too; FFN widths are random.
    teacher = scrambled_teacher(tiny_models, "tinybert4", "classification", seed=20)
    arch = edge_architecture(teacher.shape, seed=21)
    model = compact(teacher, arch)
    assert any(w % 8 for w in arch.ffn_widths if w) and any((9 * h) % 8 for h in arch.head_counts if h)
    batch = random_batch(teacher.config.vocab_size, 3, 9, seed=22)
    ref = run_output(model.set_backend("eager"), "classification", batch)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for backend in ("eager", "sdpa"):
        out = run_output(model.set_backend(backend, ffn_align=8), "classification", batch)
        assert (out - ref).abs().max() < 1e-5, backend
    for layer in model.bert.layers:
        qw, qb, uw, ub, dw = layer.aligned_weights(8)
        if layer.qkv is not None:
            assert qw.shape[0] % 8 == 0 and qb.shape[0] == qw.shape[0]
            assert (qw[layer.qkv.out_features:] == 0).all()
        if layer.up is not None:
            assert uw.shape[0] % 8 == 0 and dw.shape[1] == uw.shape[0] and ub.shape[0] == uw.shape[0]
            assert (dw[:, layer.ffn_width:] == 0).all() and (ub[layer.ffn_width:] == 0).all()
        assert all(a is b for a, b in zip(layer.aligned_weights(8), layer.aligned_weights(8)))  # cached
        assert layer.aligned_weights(1)[2] is (layer.up.weight if layer.up is not None else None)
    # The copies follow an in-place change of the weights, and are never part of the saved model.
    layer = next(la for la in model.bert.layers if la.up is not None and la.ffn_width % 8)
    with torch.no_grad():
        layer.up.weight.mul_(1.5)
    changed_eager = run_output(model.set_backend("eager"), "classification", batch)
    assert (run_output(model.set_backend("sdpa", ffn_align=8), "classification", batch) - changed_eager).abs().max() < 1e-5
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    model.save_pretrained(tmp_path / "m")
    assert load_compact(tmp_path / "m").config.intermediate_sizes == arch.ffn_widths
    # With autograd on, the parameters themselves are used: gradients reach them.
    model.set_backend("sdpa", ffn_align=8)
    model.bert(**batch).last_hidden_state.sum().backward()
    assert layer.up.weight.grad is not None and layer.up.weight.grad.abs().sum() > 0
    with pytest.raises(PrunekitError, match="ffn_align must be a positive int"):
        model.set_backend("sdpa", ffn_align=0)
    # A model copied (or cast) inside inference mode has inference-tensor parameters, which have no
    # version counter: the aligned copies (taken on CUDA by default) still work and are cached.
    with torch.inference_mode():
        frozen = copy.deepcopy(model.eval()).set_backend("sdpa", ffn_align=8)
        assert frozen.bert.layers[0].attn_norm.weight.is_inference()
        out = frozen(**batch).logits
        assert (out - run_output(model.set_backend("eager"), "classification", batch)).abs().max() < 1e-5
        layer = next(la for la in frozen.bert.layers if la.up is not None and la.ffn_width % 8)
        assert all(a is b for a, b in zip(layer.aligned_weights(8), layer.aligned_weights(8)))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter on spare rows' uninitialised values
def test_aligned_widths_and_token_capacity_triton_interpreted(tiny_models):
    _triton_cpu_or_skip()
    teacher = scrambled_teacher(tiny_models, "tinybert4", "classification", seed=23)
    arch = edge_architecture(teacher.shape, seed=24)
    model = compact(teacher, arch)
    batch = random_batch(teacher.config.vocab_size, 3, 7, seed=25)
    ref = run_output(model.set_backend("eager"), "classification", batch)
    n = int(batch["attention_mask"].sum())
    with torch.no_grad():
        eager_hidden = model.bert(**batch).last_hidden_state
    valid = batch["attention_mask"].bool()
    for backend in ("triton", "triton-padded"):
        for align in (1, 8):
            model.set_backend(backend, ffn_align=align)
            assert (run_output(model, "classification", batch) - ref).abs().max() < 1e-5, (backend, align)
    # Packed into more rows than real tokens (what a CUDA graph uses): same outputs, zeros at padding.
    model.set_backend("triton", ffn_align=8)
    for capacity in (n, n + 5, 3 * 7):
        with torch.no_grad():
            out = model(**batch, token_capacity=capacity, output_hidden_states=True)
        assert (out.logits - ref).abs().max() < 1e-5, capacity
        last = out.hidden_states[-1]
        assert (last[valid] - eager_hidden[valid]).abs().max() < 1e-5 and (last[~valid] == 0).all()


@pytest.mark.parametrize("act", sorted(ACT2FN))
def test_tanh_gelu_close_is_exactly_the_close_activations(act):
    """The activations the cuBLASLt epilogue may stand in for are those within 5e-4 of tanh GELU
    everywhere (checked on [-20, 20]; gelu_10 clips at 10, so it is not)."""
    from prunekit.modeling import TANH_GELU_CLOSE

    x = torch.linspace(-20, 20, 40001, dtype=torch.float64)
    try:
        with torch.no_grad():
            y = ACT2FN[act](x.clone())
    except Exception:  # noqa: BLE001 - an activation that takes parameters or other shapes: never close
        y = None
    close = y is not None and y.shape == x.shape and float((y - F.gelu(x, approximate="tanh")).abs().max()) < 5e-4
    assert (act in TANH_GELU_CLOSE) == close, act


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter on spare rows' uninitialised values
def test_gelu_in_the_up_gemm_epilogue(tiny_models, monkeypatch):
    """On CUDA in fp16/bf16 the Triton path takes bias + GELU in the up projection's cuBLASLt
    epilogue (torch._addmm_activation; on CUDA the tanh form, on the CPU erf GELU, as PyTorch's own
    test_linalg expects). When, and that the call is right: forced on here (CPU, interpreted
    kernels, fp32), an erf-GELU model keeps fp32 parity with eager, with widths aligned to 8 or
    not; a tanh-GELU model stays within the two forms' 4.7e-4 gap per activation; exact_gelu=True
    and the sdpa-packed path never take it."""
    _triton_cpu_or_skip()
    from types import SimpleNamespace

    from prunekit import modeling

    on_cuda = lambda dtype: SimpleNamespace(is_cuda=True, dtype=dtype)  # noqa: E731
    assert modeling._gelu_in_gemm(on_cuda(torch.float16), False) and modeling._gelu_in_gemm(on_cuda(torch.bfloat16), False)
    assert not modeling._gelu_in_gemm(on_cuda(torch.float16), True)  # exact_gelu=True
    assert not modeling._gelu_in_gemm(on_cuda(torch.float32), False)  # fp32 keeps exact GELU
    assert not modeling._gelu_in_gemm(SimpleNamespace(is_cuda=False, dtype=torch.float16), False)

    teacher = scrambled_teacher(tiny_models, "tinybert4", "classification", seed=26)
    erf_model = compact(teacher, edge_architecture(teacher.shape, seed=27))
    cfg = copy.deepcopy(erf_model.config)
    cfg.hidden_act = "gelu_pytorch_tanh"
    tanh_model = CompactBertForSequenceClassification(cfg).eval()
    tanh_model.load_state_dict(erf_model.state_dict())
    relu = copy.deepcopy(cfg)
    relu.hidden_act = "relu"
    relu_model = CompactBertForSequenceClassification(relu).eval()
    relu_model.load_state_dict(erf_model.state_dict())

    calls = []
    addmm_act = torch._addmm_activation
    monkeypatch.setattr(torch, "_addmm_activation", lambda *a, **k: calls.append(1) or addmm_act(*a, **k))
    monkeypatch.setattr(modeling, "_gelu_in_gemm", lambda x, exact: not exact)  # as on CUDA in fp16
    batch = random_batch(teacher.config.vocab_size, 3, 7, seed=28)
    n_up = sum(m.up is not None for m in erf_model.bert.layers)
    assert n_up and any(m.ffn_width % 8 for m in erf_model.bert.layers if m.up is not None)
    for model, tol, n_calls in ((erf_model, 1e-5, n_up), (tanh_model, 2e-3, n_up), (relu_model, 1e-5, 0)):
        ref = run_output(model.set_backend("eager"), "classification", batch)
        for align in (1, 8):
            calls.clear()
            out = run_output(model.set_backend("triton", ffn_align=align), "classification", batch)
            assert len(calls) == n_calls and (out - ref).abs().max() < tol, (model.config.hidden_act, align)
    # one function whatever the model's GELU: the epilogue's own
    assert (run_output(erf_model.set_backend("triton"), "classification", batch)
            - run_output(tanh_model.set_backend("triton"), "classification", batch)).abs().max() == 0
    # exact_gelu=True: the model's own GELU through the bias_gelu kernel (tanh_model: exact parity now)
    calls.clear()
    out = run_output(tanh_model.set_backend("triton", exact_gelu=True), "classification", batch)
    assert not calls and (out - run_output(tanh_model.set_backend("eager"), "classification", batch)).abs().max() < 1e-5
    tanh_model.set_backend("triton")
    assert not tanh_model.bert._exact_gelu  # set_backend without it goes back to the default
    # the padding-free PyTorch path computes what sdpa does
    calls.clear()
    run_output(tanh_model.set_backend("sdpa-packed"), "classification", batch)
    assert not calls


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_token_capacity_path_never_syncs(tiny_models):
    """The packed forward with a capacity calls no op that makes the host wait for the device
    (item, nonzero, is_nonzero, boolean indexing): it can be captured in a CUDA graph."""
    _triton_cpu_or_skip()
    from torch.utils._python_dispatch import TorchDispatchMode

    syncing = {"aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::masked_select",
               "aten::item", "aten::equal", "aten::allclose"}

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func._schema.name)
            return func(*args, **(kwargs or {}))

    teacher = scrambled_teacher(tiny_models, "minilm6", "classification", seed=26)
    model = compact(teacher, edge_architecture(teacher.shape, seed=27)).set_backend("triton", ffn_align=8)
    batch = random_batch(teacher.config.vocab_size, 2, 6, seed=28)
    tolist = torch.Tensor.tolist  # reads CPU memory without dispatching an op: count it by hand

    def run(feed=batch, **kw):
        calls = []
        with torch.no_grad(), Record() as rec:
            torch.Tensor.tolist = lambda self: calls.append("tolist") or tolist(self)
            try:
                model(**feed, **kw)
            finally:
                torch.Tensor.tolist = tolist
        return rec.ops + calls

    with torch.no_grad():
        model(**batch, token_capacity=12)  # warm (kernel compilation outside the recording)
    ops = run(token_capacity=12)
    assert ops and not (syncing | {"tolist"}) & set(ops), sorted((syncing | {"tolist"}) & set(ops))
    ops = run()  # without a capacity: exactly one sync (the real-token count and longest length)
    assert sum(op in syncing or op == "tolist" for op in ops) == 1
    # No padding at all: the same one sync finds every token real; then the padded kernels run
    # without a mask, nothing gathered or scattered back; the outputs are the eager model's.
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()
    assert "aten::index_select" in ops
    full = dict(batch, attention_mask=torch.ones_like(batch["attention_mask"]))
    ops = run(full)
    assert sum(op in syncing or op == "tolist" for op in ops) == 1
    assert not {"aten::index_select", "aten::index_put_", "aten::index_copy_"} & set(ops)
    ref = run_output(copy.deepcopy(model).set_backend("eager"), "classification", full)
    assert (run_output(model, "classification", full) - ref).abs().max() < 1e-5


def test_cuda_graph_runner_without_cuda(tiny_models):
    teacher = scrambled_teacher(tiny_models, "minilm6", "classification", seed=29)
    model = compact(teacher, edge_architecture(teacher.shape, seed=30)).eval()
    batch = random_batch(teacher.config.vocab_size, 3, 6, seed=31)
    with pytest.raises(PrunekitError, match="CUDA graphs need the model on a CUDA device"):
        model.capture_cuda_graph(3, 6)
    runner = model.set_backend("sdpa").capture_cuda_graph(3, 6, fallback=True)
    torch.testing.assert_close(runner(**batch).logits, run_output(model, "classification", batch))
    with pytest.raises(PrunekitError, match=r"made for inputs of shape \[3, 6\]"):
        runner(batch["input_ids"][:2], batch["attention_mask"][:2])
    model.set_backend("eager")
    with pytest.raises(PrunekitError, match="backend changed"):
        runner(**batch)
    with pytest.raises(PrunekitError, match="inference"):
        model.train().capture_cuda_graph(3, 6, fallback=True)
    model.eval()
    # sdpa-packed reads its token count on the host: a capture of it would fail on CUDA
    with pytest.raises(PrunekitError, match="cannot capture the 'sdpa-packed' backend"):
        model.set_backend("sdpa-packed").capture_cuda_graph(3, 6, fallback=True)
    # Capacity buckets of the packed backend: a multiple of the granularity, at most B*T.
    import prunekit_kernels

    if prunekit_kernels.triton_available("cpu")[0]:
        r = model.set_backend("triton").capture_cuda_graph(32, 128, fallback=True)
        assert r.token_granularity == 256
        assert [r.capacity_for(n) for n in (0, 1, 256, 257, 4095, 4096)] == [256, 256, 256, 512, 4096, 4096]
        assert r.capacity_for(4096) == 32 * 128


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs in the GPU session)")
def test_cuda_graph_runner_on_cuda(tiny_models):
    import prunekit_kernels

    teacher = scrambled_teacher(tiny_models, "tinybert4", "classification", seed=32)
    model = compact(teacher, edge_architecture(teacher.shape, seed=33)).to("cuda").eval()
    b, t = 4, 16
    batches = [{k: v.cuda() for k, v in random_batch(teacher.config.vocab_size, b, t, seed=s).items()} for s in (34, 35)]
    batches[1]["attention_mask"][1:] = 0  # far fewer real tokens: another capacity bucket
    batches[1]["attention_mask"][1:, :2] = 1
    full = dict(batches[0], attention_mask=torch.ones_like(batches[0]["attention_mask"]))
    batches.append(full)  # no padding: the packed path's graph of its own (FULL), no mask, nothing packed
    backends = ["sdpa"] + (["triton", "triton-padded"] if prunekit_kernels.triton_available("cuda")[0] else [])
    for backend in backends:
        model.set_backend(backend)
        runner = model.capture_cuda_graph(b, t, token_granularity=16)
        for batch in batches + batches:  # replays, with both buckets
            with torch.inference_mode():
                ref = model(**batch).logits
            out = runner(**batch).logits
            assert (out - ref).abs().max() < 1e-4, backend
        assert len(runner.graphs) == (3 if backend == "triton" else 1)
        if backend == "triton":
            from prunekit.cuda_graphs import FULL

            assert FULL in runner.graphs


def test_architecture_is_checked_against_the_whole_model(tiny_models, tmp_path):
    """A count that disagrees with the indices listed, or a saved shape of another model, is refused before any write."""
    teacher = load_teacher(str(tiny_models("bert12", "classification")))
    run = make_run_dir(tmp_path / "run", teacher, edge_architecture(teacher.shape, seed=71))
    good = json.loads((run / "architecture.json").read_text())
    runner = CliRunner()
    cases = {
        "claims 13 heads": (lambda d: d["layers"][0].update(num_heads=len(d["layers"][0]["heads"]) + 1), "claims num_heads"),
        "another FFN width": (lambda d: d["layers"][2].update(ffn_width=len(d["layers"][2]["ffn_neurons"]) + 3), "claims ffn_width"),
        "a 13-head shape": (lambda d: d["shape"].update(num_heads=d["shape"]["num_heads"] + 1), "with head count"),
        "a 13-layer shape": (lambda d: d["shape"].update(num_layers=13), "with layer count 13"),
    }
    for edit, says in cases.values():  # each error line names what is wrong
        bad = json.loads(json.dumps(good))
        edit(bad)
        (run / "architecture.json").write_text(json.dumps(bad))
        r = runner.invoke(cli, ["compact", str(run), "-o", str(tmp_path / "out"), "--no-fvcore"])
        assert_one_line_error(r, says)
        assert not (tmp_path / "out").exists()
