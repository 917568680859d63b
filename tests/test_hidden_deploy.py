"""A compact model whose hidden width is narrower than its teacher's (issue 20) through every path
after compact: ONNX export checked in onnxruntime, eval and bench (FLOPs in the narrow width), the CPU
backends, the padding-free and Triton paths, and loading without prunekit (transformers with
trust_remote_code, sentence-transformers with the output projection as a Dense module)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from factory import (
    SEQ,
    edge_architecture,
    labelled_csv,
    make_run_dir,
    make_sentences,
    random_batch,
    scrambled_teacher_dir,
)
from prunekit import backends as B
from prunekit.cli import cli
from prunekit.compact import compact_to_dir
from prunekit.export import random_inputs, reference_output
from prunekit.flops import model_flops
from prunekit.loading import load_model_dir
from prunekit.modeling import load_compact, save_compact
from prunekit.models import load_teacher, model_output
from prunekit.portable import write_sentence_transformers_files
from test_backends import CPU_FAST, REL_TOL
from test_hidden import with_hidden

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_ST = importlib.util.find_spec("sentence_transformers") is not None  # a dev dependency
ST_MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
              {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
              {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]


def hidden_pruned(tmp_path: Path, kind: str, seed: int = 3, st_teacher: bool = False):
    """A scrambled minilm6 teacher (hidden 32) and a compact model of it keeping 19 hidden dimensions
    and uneven heads (a layer with none, one with nothing): (teacher dir, compact dir, teacher, arch).
    An embedding model's output projection is then trained away from compact's scatter of the kept
    dimensions (random weights, saved as distill saves them), so that every path must really apply it.
    ``st_teacher``: the teacher is a sentence-transformers model with a Normalize module."""
    teacher_dir = scrambled_teacher_dir(tmp_path / f"teacher-{kind}", kind, seed=seed)
    if st_teacher:
        (teacher_dir / "modules.json").write_text(json.dumps(ST_MODULES))
        (teacher_dir / "1_Pooling").mkdir()
        (teacher_dir / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}))
        (teacher_dir / "2_Normalize").mkdir()
        (teacher_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": SEQ, "do_lower_case": False}))
    teacher = load_teacher(str(teacher_dir))
    arch = with_hidden(edge_architecture(teacher.shape, seed=seed), teacher.shape, seed=seed + 1)
    out = tmp_path / f"{kind}-compact"
    compact_to_dir(make_run_dir(tmp_path / f"{kind}-run", teacher, arch, SEQ), out_dir=out, measure_fvcore=False)
    if kind == "embedding":
        retrain_projection(out, seed)
    return teacher_dir, out, teacher, arch


def retrain_projection(model_dir: Path, seed: int) -> torch.nn.Linear:
    """New output_proj weights in ``model_dir``, saved and its sentence-transformers files written again
    the way distill writes its output (from the dir itself: the student)."""
    model = load_compact(model_dir)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.output_proj.weight.copy_(torch.randn(model.output_proj.weight.shape, generator=g) / 4)
        model.output_proj.bias.copy_(torch.randn(model.output_proj.bias.shape, generator=g) / 4)
    save_compact(model, model_dir)
    write_sentence_transformers_files(model_dir, str(model_dir), model.config.hidden_size, SEQ)
    return model.output_proj


@pytest.mark.parametrize("kind", ["classification", "embedding"])
def test_export_onnx_and_eval_of_the_graph(tmp_path, kind):
    _, out, teacher, arch = hidden_pruned(tmp_path, kind)
    onnx_file = tmp_path / "model.onnx"
    result = CliRunner().invoke(cli, ["export-onnx", str(out), "-o", str(onnx_file)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "model.onnx.json").read_text())
    assert report["hidden_size"] == len(arch.hidden) and report["shape"]["hidden_size"] == teacher.shape.hidden_size
    card = (out / "README.md").read_text()
    assert f"The hidden width is cut to {len(arch.hidden)} of the teacher's {teacher.shape.hidden_size} dimensions" in card
    assert ("a final linear map puts the sentence embeddings back in the teacher's width" in card) == (kind == "embedding")

    from prunekit.export import session

    loaded = load_model_dir(out)
    sess = session(onnx_file)
    for seed in (1, 2):
        batch = random_inputs(loaded.config, 3, 13, seed)
        got = sess.run(None, {i.name: batch[i.name].numpy() for i in sess.get_inputs()})[0]
        want = reference_output(loaded, batch).numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4  # export's own tolerance
    if kind == "embedding":
        assert got.shape[-1] == teacher.shape.hidden_size  # the teacher's output width, by default

    # eval of the .onnx file: the FLOPs of the narrow width, over the teacher's, from the export report
    data = labelled_csv(tmp_path / "d.csv", 16) if kind == "classification" else tmp_path / "d.txt"
    if kind == "embedding":
        data.write_text("\n".join(make_sentences(16, seed=2)) + "\n")
    result = CliRunner().invoke(cli, ["eval", str(onnx_file), "--data", str(data), "--seq-len", str(SEQ), "--json",
                                      str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "eval.json").read_text())["models"][0]
    assert row["flops"] == arch.flops(teacher.shape, SEQ).total
    assert row["flops_ratio"] == pytest.approx(arch.flops_ratio(teacher.shape, SEQ))


@pytest.mark.parametrize("kind", ["classification", "embedding"])
def test_optimized_fp16_export(tmp_path, kind):
    """The GPU route (fusions, then fp16; checked in onnxruntime's CPU provider, which runs fp16 graphs)."""
    from prunekit.export import ExportSettings, export_onnx

    _, out, _, arch = hidden_pruned(tmp_path, kind)
    r = export_onnx(out, tmp_path / "fp16.onnx", ExportSettings(optimize=True, fp16=True))
    assert [c.stage for c in r.checks] == ["export", "optimize", "fp16"] and all(c.ok for c in r.checks)
    assert r.fused["heads_match"] and len(r.fused["attention_heads"]) == sum(1 for h in arch.head_counts if h)


@pytest.mark.parametrize("kind", ["classification", "embedding"])
def test_eval_and_bench_count_the_narrow_width(tmp_path, kind):
    teacher_dir, out, teacher, arch = hidden_pruned(tmp_path, kind)
    data = labelled_csv(tmp_path / "d.csv", 16) if kind == "classification" else tmp_path / "d.txt"
    if kind == "embedding":
        data.write_text("\n".join(make_sentences(16, seed=2)) + "\n")
    result = CliRunner().invoke(cli, ["eval", str(out), "--data", str(data), "--seq-len", str(SEQ), "--json",
                                      str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "eval.json").read_text())["models"][0]
    assert row["flops"] == arch.flops(teacher.shape, SEQ).total
    assert row["flops_ratio"] == pytest.approx(arch.flops_ratio(teacher.shape, SEQ))

    seq = 16
    result = CliRunner().invoke(cli, ["bench", str(teacher_dir), str(out), "--device", "cpu", "--backend", "torch-sdpa",
                                      "--batch", "2", "--seq-len", str(seq), "--repeats", "1", "--warmup", "0", "--threads", "1",
                                      "-o", str(tmp_path / "bench")])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "bench" / "bench.json").read_text())
    original, mine = (m["flops"] for m in res["models"])
    analytic = arch.flops(teacher.shape, seq).total
    assert original["analytic"] == model_flops(teacher.shape, seq).total
    assert mine["analytic"] == analytic
    # fvcore counts the same matrix products, plus an embedding model's output projection (H' x H per sentence)
    extra = 2 * len(arch.hidden) * teacher.shape.hidden_size if kind == "embedding" else 0
    assert mine["fvcore"] == analytic + extra
    assert {r["backend"] for r in res["rows"]} == {"torch-sdpa"} and len(res["rows"]) == 2


def _worst_rel(runner, loaded, seeds=(1, 2)) -> float:
    worst = 0.0
    for seed in seeds:
        batch = random_inputs(loaded.config, 3, 12, seed)
        ref = reference_output(loaded, batch).float()
        got = runner.run(batch)
        assert got.shape == ref.shape and got.dtype == torch.float32
        worst = max(worst, float((got - ref).abs().max() / ref.abs().max()))
    return worst


@pytest.mark.parametrize("kind", ["classification", "embedding"])
def test_cpu_backends_match_fp32_eager(tmp_path, kind):
    _, out, teacher, _ = hidden_pruned(tmp_path, kind)
    loaded = load_model_dir(out)
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(make_sentences(24, seed=7)) + "\n")
    for backend in CPU_FAST:
        work = tmp_path / f"w-{backend}"
        work.mkdir()
        r = B.build_runner(loaded, out.name, backend, "cpu", 1, work, str(calib))
        rel = _worst_rel(r, loaded)
        assert rel <= REL_TOL[r.dtype], f"{backend}: rel diff {rel:.2e}"
    if kind == "embedding":
        assert r.run(random_inputs(loaded.config, 2, 5, 3)).shape == (2, teacher.shape.hidden_size)


def _paths_match_eager(model_dir: Path, kind: str, backends: tuple) -> None:
    """Each backend's hidden states at the real tokens, and the task output, as eager's (fp32)."""
    model = load_compact(model_dir, backend="eager")
    batch = random_batch(model.config.vocab_size, 3, 9, seed=5)
    with torch.no_grad():
        eager = model(**batch, output_hidden_states=True).hidden_states
    ref = model_output(model, kind, batch)
    valid = batch["attention_mask"].bool()
    assert not valid.all()  # padding, so that the padding-free paths pack
    for backend in backends:
        model.set_backend(backend)
        with torch.no_grad():
            states = model(**batch, output_hidden_states=True).hidden_states
        for mine, theirs in zip(states, eager):
            assert mine.shape[-1] == model.config.hidden_size < model.config.base_hidden_size
            assert (mine[valid] - theirs[valid]).abs().max() < 1e-5, backend
        assert (model_output(model, kind, batch) - ref).abs().max() < 1e-5, backend
        if kind == "embedding":
            torch.testing.assert_close(model.encode(**batch), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["classification", "embedding"])
def test_sdpa_and_padding_free_paths_match_eager(tmp_path, kind):
    _, out, _, _ = hidden_pruned(tmp_path, kind)
    _paths_match_eager(out, kind, ("sdpa", "sdpa-packed"))


@pytest.mark.parametrize("kind", ["classification", "embedding"])
def test_triton_paths_match_eager_interpreted(tmp_path, kind):
    import prunekit_kernels

    ok, why = prunekit_kernels.triton_available("cpu")
    if not ok:
        pytest.skip(why)
    _, out, _, _ = hidden_pruned(tmp_path, kind)
    _paths_match_eager(out, kind, ("triton", "triton-padded"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs in the GPU session)")
@pytest.mark.parametrize("kind", ["classification", "embedding"])
def test_cuda_backends_match_fp32(tmp_path, kind):
    """Every CUDA backend (torch.compile once) on a narrow-hidden compact model against fp32 eager on
    the CPU, on padded and unpadded batches, each graph replayed twice; the Triton paths' hidden
    states at the real tokens too."""
    from test_backends import CUDA_REL_TOL, cuda_runner_matches

    teacher_dir, out, teacher, _ = hidden_pruned(tmp_path, kind)
    loaded = load_model_dir(out)
    for backend in B.CUDA_BACKENDS:
        why = B.unavailable(backend, "cuda")
        if why:
            assert backend.startswith(("ort-", "compile-")), f"{backend} unavailable on CUDA: {why}"
            continue
        if backend.startswith("compile-") and backend != "compile-fp16":
            continue
        work = tmp_path / f"cuda-{backend}"
        work.mkdir()
        got = cuda_runner_matches(B.build_runner(loaded, out.name, backend, "cuda", None, work), loaded, backend)
        if kind == "embedding":
            assert got.shape[-1] == teacher.shape.hidden_size
    model = load_compact(out, backend="eager")
    batch = random_batch(model.config.vocab_size, 3, 9, seed=5)
    with torch.no_grad():
        eager = model(**batch, output_hidden_states=True).hidden_states
    valid = batch["attention_mask"].bool()
    model.cuda()
    for backend in ("triton", "triton-padded"):
        model.set_backend(backend)
        with torch.no_grad():
            states = model(**{k: v.cuda() for k, v in batch.items()}, output_hidden_states=True).hidden_states
        for mine, theirs in zip(states, eager):
            assert mine.shape[-1] == model.config.hidden_size < model.config.base_hidden_size
            rel = float((mine.cpu()[valid] - theirs[valid]).abs().max() / theirs[valid].abs().max())
            assert rel <= CUDA_REL_TOL["fp32"], f"{backend}: hidden states rel diff {rel:.2e}"


def test_sentence_transformers_files_carry_the_projection(tmp_path):
    """Pooling over the narrow width, then the model's output_proj as a Dense module (the teacher's
    Normalize after it, renumbered); written again from a student, the Dense holds the new weights."""
    from safetensors.torch import load_file

    _, out, teacher, arch = hidden_pruned(tmp_path, "embedding", st_teacher=True)
    modules = json.loads((out / "modules.json").read_text())
    assert [(m["idx"], m["path"], m["type"].rsplit(".", 1)[-1]) for m in modules] == [
        (0, "", "Transformer"), (1, "1_Pooling", "Pooling"), (2, "2_Dense", "Dense"), (3, "3_Normalize", "Normalize")]
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == len(arch.hidden)
    assert json.loads((out / "2_Dense" / "config.json").read_text()) == {
        "in_features": len(arch.hidden), "out_features": teacher.shape.hidden_size, "bias": True,
        "activation_function": "torch.nn.modules.linear.Identity"}
    assert (out / "3_Normalize").is_dir()

    # hidden_pruned wrote them again in place after training the projection: the Dense holds those weights
    student = load_compact(out)
    dense = load_file(str(out / "2_Dense" / "model.safetensors"))
    assert set(dense) == {"linear.weight", "linear.bias"}
    torch.testing.assert_close(dense["linear.weight"], student.output_proj.weight.detach(), atol=0, rtol=0)

    # distill's output: the trained model saved in a new dir, the sentence-transformers files taken from the student's
    final = tmp_path / "distilled"
    final.mkdir()
    with torch.no_grad():
        student.output_proj.weight.mul_(-2.0)
        student.output_proj.bias.add_(1.0)
    save_compact(student, final)
    teacher.tokenizer.save_pretrained(final)
    write_sentence_transformers_files(final, str(out), student.config.hidden_size, SEQ)
    assert json.loads((final / "modules.json").read_text()) == modules  # one Dense, not two
    dense = load_file(str(final / "2_Dense" / "model.safetensors"))
    torch.testing.assert_close(dense["linear.weight"], student.output_proj.weight.detach(), atol=0, rtol=0)
    torch.testing.assert_close(dense["linear.bias"], student.output_proj.bias.detach(), atol=0, rtol=0)
    if not HAS_ST:
        pytest.skip("sentence-transformers is not installed (it is a dev dependency)")
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    sentences = make_sentences(4, seed=6)
    st = SentenceTransformer(str(final), trust_remote_code=True, device="cpu")
    got = torch.tensor(st.encode(sentences, convert_to_numpy=True))
    enc = AutoTokenizer.from_pretrained(final)(sentences, padding=True, truncation=True, max_length=SEQ, return_tensors="pt")
    with torch.no_grad():
        want = torch.nn.functional.normalize(model_output(student, "embedding", dict(enc)), dim=-1)
    assert got.shape == (4, teacher.shape.hidden_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # a child Python that imports transformers and sentence-transformers: ~15 s
def test_loads_without_prunekit(tmp_path):
    from test_portable import TOL, without_prunekit

    _, out, teacher, arch = hidden_pruned(tmp_path, "embedding")
    batch = random_batch(teacher.config.vocab_size, 3, 8, seed=42)
    sentences = make_sentences(5, seed=4)
    code = f'''
import torch
from transformers import AutoModel
batch = {{k: torch.tensor(v) for k, v in {json.dumps({k: v.tolist() for k, v in batch.items()})}.items()}}
with torch.no_grad():
    result = {{"hidden": AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True).eval()(**batch).last_hidden_state.tolist()}}
if {HAS_ST}:
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer({str(out)!r}, trust_remote_code=True, device="cpu")
    result["st"] = st.encode({sentences!r}, convert_to_numpy=True).tolist()
'''
    got = without_prunekit(code, tmp_path)
    model = load_compact(out, backend="sdpa")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape[-1] == len(arch.hidden)
    torch.testing.assert_close(torch.tensor(got["hidden"]), hidden, **TOL)
    if not HAS_ST:
        pytest.skip("sentence-transformers is not installed (it is a dev dependency)")
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(out)(sentences, padding=True, truncation=True, max_length=SEQ, return_tensors="pt")
    with torch.no_grad():
        mine = model_output(model, "embedding", dict(enc))
    assert mine.shape[-1] == teacher.shape.hidden_size
    torch.testing.assert_close(torch.tensor(got["st"]), mine, **TOL)  # no Normalize module: the projected mean
