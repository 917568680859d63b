"""Pruning the hidden width (issue 20): the gated teacher, compact's slicing, the FLOPs model, the
architecture file, the search with --prune-hidden, and bad hidden widths."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from factory import assert_one_line_error, edge_architecture, make_run_dir, random_batch, scramble, tiny_roberta_teacher
from prunekit.architecture import Architecture
from prunekit.cli import cli
from prunekit.compact import compact, compact_to_dir, fvcore_flops, parity_error
from prunekit.errors import PrunekitError
from prunekit.flops import ModelShape, expected_flops_ratio, model_flops
from prunekit.gates import Gates, masked_layer_norm
from prunekit.models import Teacher, load_teacher, model_output
from prunekit.search import SearchSettings, search

pytestmark = pytest.mark.usefixtures("one_thread")


def with_hidden(arch: Architecture, shape: ModelShape, seed: int, keep: float = 0.6) -> Architecture:
    """``arch`` keeping a random ``keep`` share of the hidden dimensions."""
    g = torch.Generator().manual_seed(seed)
    n = max(1, round(keep * shape.hidden_size))
    arch.hidden = sorted(torch.randperm(shape.hidden_size, generator=g)[:n].tolist())
    return arch


def gated(teacher: Teacher, arch: Architecture, batch: dict) -> torch.Tensor:
    gates = Gates(teacher.model, teacher.shape)
    try:
        with torch.no_grad(), gates.active(*arch.to_masks(teacher.shape)):
            return model_output(teacher.model, teacher.kind, batch)
    finally:
        gates.remove()


def test_masked_layer_norm_is_layer_norm_over_the_kept_dimensions():
    g = torch.Generator().manual_seed(0)
    norm = torch.nn.LayerNorm(10, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(10, generator=g))
        norm.bias.copy_(torch.randn(10, generator=g))
    x = torch.randn(3, 5, 10, generator=g)
    kept = torch.tensor([0, 2, 3, 7, 9])
    gate = torch.zeros(10)
    gate[kept] = 1.0
    out = masked_layer_norm(x, norm, gate)
    ref = torch.nn.functional.layer_norm(x[..., kept], (5,), norm.weight[kept], norm.bias[kept], 1e-6)
    assert (out[..., kept] - ref).abs().max() < 1e-5
    assert out[..., gate == 0].abs().max() == 0
    assert (masked_layer_norm(x, norm, torch.ones(10)) - norm(x)).abs().max() < 1e-5  # all kept: LayerNorm itself


@pytest.mark.parametrize(("shape", "kind"), [("minilm6", "classification"), ("tinybert4", "embedding"), ("bert12", "regression")])
def test_compact_parity_with_the_gated_teacher(tiny_models, shape, kind):
    teacher = load_teacher(str(tiny_models(shape, kind)))
    scramble(teacher.model, 5)
    arch = with_hidden(edge_architecture(teacher.shape, seed=4), teacher.shape, seed=6)
    model = compact(teacher, arch)
    assert model.config.hidden_size == len(arch.hidden) < teacher.shape.hidden_size
    assert model.config.head_dim == teacher.shape.head_dim
    batch = random_batch(teacher.config.vocab_size, batch=4, length=12, seed=2)
    ref = gated(teacher, arch, batch)
    arch_full = Architecture(arch.heads, arch.neurons)  # the same heads and neurons, every hidden dimension
    assert (ref - gated(teacher, arch_full, batch)).abs().max() > 1e-2, "the hidden mask changes nothing"
    for backend in ("eager", "sdpa"):
        out = model_output(model.set_backend(backend), kind, batch)
        assert out.shape == ref.shape  # an embedding model keeps the teacher's output width
        assert (out - ref).abs().max() < 1e-5 * max(1.0, ref.abs().max().item())


def test_parity_roberta_head_with_hidden_pruning():
    teacher, batch = tiny_roberta_teacher()
    arch = with_hidden(edge_architecture(teacher.shape, seed=8), teacher.shape, seed=1, keep=0.5)
    model = compact(teacher, arch)
    ref = gated(teacher, arch, batch)
    assert (model_output(model, "classification", batch) - ref).abs().max() < 1e-5


def test_embedding_model_narrow_output_on_request(tiny_models):
    teacher = load_teacher(str(tiny_models("minilm6", "embedding")))
    arch = with_hidden(edge_architecture(teacher.shape, seed=2), teacher.shape, seed=3)
    batch = random_batch(teacher.config.vocab_size, batch=3, length=10, seed=4)
    wide = compact(teacher, arch)
    narrow = compact(teacher, arch, narrow_output=True)
    assert narrow.output_proj is None and wide.output_proj is not None
    out_wide, out_narrow = model_output(wide, "embedding", batch), model_output(narrow, "embedding", batch)
    assert out_wide.shape[-1] == teacher.shape.hidden_size and out_narrow.shape[-1] == len(arch.hidden)
    assert (out_wide[:, arch.hidden] - out_narrow).abs().max() < 1e-6  # the same numbers, in the teacher's places
    assert parity_error(teacher, arch, narrow) < 1e-5  # compact's own check (on the kept dimensions) passes too


@pytest.mark.parametrize("shape", ["tinybert4", "bert12"])
def test_flops_model_counts_the_hidden_width(tiny_models, shape):
    teacher = load_teacher(str(tiny_models(shape, "classification")))
    s = teacher.shape
    arch = with_hidden(edge_architecture(s, seed=1), s, seed=2, keep=0.4)
    model = compact(teacher, arch)
    seq = 16
    analytic = arch.flops(s, seq).total
    assert analytic == model_flops(s.with_hidden(len(arch.hidden)), seq, arch.head_counts, arch.ffn_widths).total
    assert analytic == fvcore_flops(model, "classification", seq, teacher.config.vocab_size)["matmul"]
    # the differentiable ratio under hard gates is the architecture's ratio
    head, ffn, hidden = arch.to_masks(s)
    assert abs(expected_flops_ratio(s, seq, head, ffn, hidden).item() - arch.flops_ratio(s, seq)) < 1e-6  # float32 sums


def test_architecture_file_round_trip_and_bad_hidden_widths(tmp_path):
    shape = ModelShape(num_layers=2, hidden_size=8, num_heads=2, head_dim=4, intermediate_size=6, num_labels=2)
    arch = Architecture([[0], [0, 1]], [[1, 2], []], hidden=[1, 3, 4])
    arch.save(tmp_path / "a.json", shape, 16)
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["hidden"] == {"size": 3, "dims": [1, 3, 4]}
    assert Architecture.load(tmp_path / "a.json", shape).hidden == [1, 3, 4]
    for hidden, needle in (([], "no hidden dimension"), ([1, 8], "outside 0..7"), ([2, 2], "repeated")):
        data["hidden"] = {"size": len(hidden), "dims": hidden}
        (tmp_path / "b.json").write_text(json.dumps(data))
        with pytest.raises(PrunekitError, match=needle) as e:
            Architecture.load(tmp_path / "b.json", shape)
        assert "\n" not in str(e.value)
    data["hidden"] = {"size": 5, "dims": [1, 2]}
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(PrunekitError, match="claims size 5"):
        Architecture.load(tmp_path / "b.json", shape)


def test_compact_cli_with_a_hidden_pruned_architecture(tiny_models, tmp_path):
    teacher = load_teacher(str(tiny_models("minilm6", "embedding")))
    arch = with_hidden(edge_architecture(teacher.shape, seed=3), teacher.shape, seed=4)
    run = make_run_dir(tmp_path / "run", teacher, arch)
    report = compact_to_dir(run, out_dir=tmp_path / "c", measure_fvcore=False)
    assert report.parity_rel_err < 1e-4
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["hidden_size"] == len(arch.hidden) and config["output_size"] == teacher.shape.hidden_size
    # a hidden width of 0 in the file is one line from the CLI
    data = json.loads((run / "architecture.json").read_text())
    data["hidden"] = {"size": 0, "dims": []}
    (run / "architecture.json").write_text(json.dumps(data))
    result = CliRunner().invoke(cli, ["compact", str(run), "-o", str(tmp_path / "c2")])
    assert_one_line_error(result, "no hidden dimension")
    assert not (tmp_path / "c2").exists()


def test_search_prunes_the_hidden_width_into_the_band(tiny_models, text_file, tmp_path):
    model_dir = tiny_models("minilm6", "embedding")
    s = SearchSettings(model=str(model_dir), data=str(text_file), output_dir=str(tmp_path / "s"), target=0.4, max_steps=60,
                       batch_size=8, max_length=32, checkpoint_every=100, prune_hidden=True, alpha_lr=2.0)
    result = search(s, progress=False)
    arch = result.architecture
    assert arch.hidden is not None and 0 < len(arch.hidden) < 32
    assert 0.38 <= result.achieved_ratio <= 0.42
    saved = Architecture.load(tmp_path / "s" / "architecture.json")
    assert saved.hidden == arch.hidden
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "s" / "alpha.safetensors"))["hidden"].shape == (32,)


def test_prune_hidden_refused_outside_the_gate_search():
    for kw in ({"method": "random"}, {"method": "uniform"}, {"method": "magnitude", "cost": "latency", "backend": "torch-sdpa"}):
        with pytest.raises(PrunekitError, match="--prune-hidden") as e:
            SearchSettings(prune_hidden=True, **kw).validate()
        assert "\n" not in str(e.value)
    SearchSettings(prune_hidden=True, cost="latency", backend="torch-sdpa").validate()  # the gate search under a latency target
