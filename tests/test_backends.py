"""prunekit.backends: every CPU backend's output against fp32 eager within its dtype's tolerance,
torch.compile of the compact model as one graph, clean degradation where a backend is missing,
and `prunekit eval` through backends and on exported .onnx files."""
from __future__ import annotations

import json
import sys

import onnx
import pytest
import torch
from click.testing import CliRunner

from factory import assert_one_line_error, make_sentences, uneven_compact_dir
from prunekit import backends as B
from prunekit.bench import BenchSettings, bench
from prunekit.cli import cli
from prunekit.errors import PrunekitError
from prunekit.export import random_inputs, reference_output
from prunekit.loading import load_model_dir

# max |backend - fp32 eager| / max |fp32 eager| per dtype: fp32 differs by summation order only
# (measured <= 7e-7); bf16 keeps 8 bits of mantissa (2^-8 = 0.4% per rounding; measured <= 1.5e-2
# through 6 layers); int8 rounds weights and activations to 1/255 of their range (measured <= 3.4e-2).
REL_TOL = {"fp32": 1e-5, "bf16": 0.04, "int8": 0.1}
CPU_FAST = ("torch-eager", "torch-sdpa", "torch-bf16", "torch-bf16-packed", "ort-fp32", "ort-opt", "ort-int8", "ort-int8-static")


pytestmark = pytest.mark.usefixtures("one_thread")


def _worst_rel(runner, loaded, seeds=(1, 2)) -> tuple[float, tuple]:
    worst, where = 0.0, None
    for seed in seeds:
        batch = random_inputs(loaded.config, 3, 12, seed)
        ref = reference_output(loaded, batch).float()
        got = runner.run(batch)
        assert got.shape == ref.shape and got.dtype == torch.float32
        diff = (got - ref).abs()
        rel = float(diff.max() / ref.abs().max())
        if rel > worst:
            worst, where = rel, (seed, tuple(int(i) for i in torch.nonzero(diff == diff.max())[0]))
    return worst, where


@pytest.mark.parametrize("kind", ("embedding", "classification"))
def test_cpu_backends_match_fp32_eager(tiny_models, tmp_path, kind):
    src, cfg = uneven_compact_dir(tiny_models, tmp_path, "minilm6", kind)
    assert 0 in cfg.num_heads_per_layer and len(set(cfg.num_heads_per_layer)) > 2  # uneven, with no-head layers
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(make_sentences(24, seed=7)) + "\n")
    for model_dir in (src, tiny_models("minilm6", kind)):
        loaded = load_model_dir(model_dir)
        for backend in CPU_FAST:
            work = tmp_path / f"w-{model_dir.name}-{backend}"
            work.mkdir()
            r = B.build_runner(loaded, model_dir.name, backend, "cpu", 1, work, str(calib))
            if r is None:  # the compact model's own padding-free path
                assert backend == "torch-bf16-packed" and model_dir != src
                continue
            assert r.dtype == B.dtype_of(backend)
            rel, where = _worst_rel(r, loaded)
            assert rel <= REL_TOL[r.dtype], f"{model_dir.name} {backend}: rel diff {rel:.2e} at (seed, row, col) {where}"
        assert not any(m.training for m in loaded.compact_view.modules())


def test_packed_path_equals_padded(tiny_models, tmp_path):
    """sdpa-packed (fp32): every real token's hidden states as the padded path's, zeros at padding."""
    src, cfg = uneven_compact_dir(tiny_models, tmp_path, "bert12", "classification")
    loaded = load_model_dir(src)
    model = loaded.compact_view
    batch = random_inputs(cfg, 4, 20, seed=5)
    assert not bool(batch["attention_mask"].all())
    with torch.no_grad():
        ref = model.set_backend("sdpa")(**batch, output_hidden_states=True)
        got = model.set_backend("sdpa-packed")(**batch, output_hidden_states=True)
    real = batch["attention_mask"].bool()
    for r, g in zip(ref.hidden_states, got.hidden_states):
        torch.testing.assert_close(g[real], r[real], atol=1e-5, rtol=0)
        assert not g[~real].any()
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=0)
    model.train()
    with pytest.raises(PrunekitError, match="inference-only"):
        model(**batch)
    model.eval().set_backend("eager")


@pytest.fixture(scope="module")
def compiled_classifier(tiny_models, tmp_path_factory):
    """A tiny compact classifier with uneven heads, loaded, for the torch.compile tests (skipped
    where inductor cannot compile: no C++ compiler)."""
    why = B.unavailable("compile-fp32")
    if why:
        pytest.skip(why)
    src, _ = uneven_compact_dir(tiny_models, tmp_path_factory.mktemp("compile"), "tinybert4", "classification")
    return load_model_dir(src)


@pytest.mark.parametrize("backend", ("compile-fp32", "compile-bf16"))
def test_compile_compact_is_one_graph(compiled_classifier, backend):
    """fullgraph=True: a graph break in the compact model fails here; fp32 and bf16 against eager."""
    loaded = compiled_classifier
    torch._dynamo.reset()
    r = B.build_runner(loaded, "c", backend)
    rel, where = _worst_rel(r, loaded, seeds=(1,))
    assert rel <= REL_TOL[r.dtype], f"{backend}: rel diff {rel:.2e} at {where}"


def test_compiled_packed_path_is_one_graph_for_every_batch_shape(compiled_classifier, tiny_models):
    """The padding-free path compiled with dynamic shapes: batches of other sizes, lengths and real-token
    counts (one without padding) run the same graph, each within bf16's reach of fp32 eager: on
    these batches every bf16 backend (eager, packed, compiled) measured 2.2-6.6% (this tiny
    classifier's logits are small), so twice the single-batch tolerance."""
    loaded = compiled_classifier
    torch._dynamo.reset()
    r = B.build_runner(loaded, "c", "compile-bf16-packed")
    frames = []
    for b, t, seed in ((3, 12, 1), (5, 20, 2), (2, 7, 3), (4, 9, 4)):
        batch = random_inputs(loaded.config, b, t, seed)
        if seed == 4:
            batch["attention_mask"][:] = 1
        ref = reference_output(loaded, batch).float()
        got = r.run(batch)
        assert got.shape == ref.shape and float((got - ref).abs().max() / ref.abs().max()) <= 2 * REL_TOL["bf16"], (b, t)
        frames.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    # one graph for all four shapes (without dynamic=True: [1, 2, 2, 2]); a batch or length of 1 would
    # compile once more (dynamo specialises sizes 0 and 1), which eval's last batch may pay
    assert frames[-1] == frames[0], f"compile-bf16-packed recompiled for a new batch shape: {frames}"
    # the original model has no padding-free path
    assert B.build_runner(load_model_dir(tiny_models("tinybert4", "classification")), "o", "compile-bf16-packed") is None


def test_compile_takes_the_plain_weights_when_widths_are_padded(compiled_classifier):
    """On CUDA the compact model multiplies with widths padded to multiples of 8, copies cached by the
    weights' data_ptr, which dynamo cannot trace (found on an H100): compiled, the forward takes the
    plain weights (inductor pads itself) and matches eager."""
    loaded = compiled_classifier
    torch._dynamo.reset()
    before = loaded.compact_view.config.backend
    m = loaded.compact_view.set_backend("sdpa", ffn_align=8)
    try:
        assert any(layer.ffn_width % 8 for layer in m._encoder().layers), "this test needs a width that is not a multiple of 8"
        batch = random_inputs(loaded.config, 2, 9, 5)
        with torch.no_grad():
            ref = m(**batch).logits
            got = torch.compile(m, fullgraph=True)(**batch).logits
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    finally:
        m.set_backend(before)


def test_compiled_forward_does_not_ask_whether_a_cuda_graph_is_captured(compiled_classifier, monkeypatch):
    """On CUDA, `_capturing` asks torch.cuda whether a graph is being captured, which dynamo cannot
    trace: the forward must not ask while it is compiled (emulated: here tensors are never on CUDA)."""
    from prunekit import portable_modeling as modeling  # the padded forward (and its _capturing) lives there

    loaded = compiled_classifier
    assert not modeling._capturing(torch.zeros(1))
    monkeypatch.setattr(modeling, "_capturing", lambda x: torch.cuda.is_current_stream_capturing())
    torch._dynamo.reset()
    r = B.build_runner(loaded, "c", "compile-fp32")
    rel, where = _worst_rel(r, loaded, seeds=(1,))
    assert rel <= REL_TOL["fp32"], f"compile-fp32 as on CUDA: rel diff {rel:.2e} at {where}"


@pytest.fixture
def no_compiler(monkeypatch):
    """No C or C++ compiler on PATH or in CC/CXX."""
    monkeypatch.setattr(B.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)


@pytest.fixture
def no_onnxruntime(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


def test_without_a_cxx_compiler_inductor_backends_say_so(no_compiler):
    assert "C++ compiler" in B.unavailable("compile-bf16")


def test_without_onnxruntime_ort_backends_say_so(no_onnxruntime):
    assert "onnxruntime is not installed" in B.unavailable("ort-int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("backend", ("torch-sdpa", "triton-fp16"))
def test_cuda_backends_without_cuda_say_so(backend):
    """Every backend asked for on CUDA says why not (was an UnboundLocalError)."""
    assert B.unavailable(backend, "cuda") == "torch sees no CUDA device"


@pytest.mark.parametrize("backend, needs_c", (("triton-fp16", True), ("triton-fp16-graph", True), ("compile-fp16", True),
                                              ("torch-fp16", False)))
def test_without_a_c_compiler_triton_cannot_build_its_cuda_launcher(no_compiler, monkeypatch, backend, needs_c):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    why = B.unavailable(backend, "cuda")
    if needs_c:
        assert why and "C compiler" in why, why
    else:
        assert why is None, why


def test_bench_skips_backends_that_cannot_run_here_with_a_note(tiny_models, no_compiler, no_onnxruntime):
    orig = str(tiny_models("tinybert4", "embedding"))
    res = bench(BenchSettings(models=[orig], backends=["torch-sdpa", "compile-fp32", "ort-fp32"], batch=2, seq_len=8,
                              repeats=1, warmup=0, threads=1, fvcore=False))
    assert [r["backend"] for r in res["rows"]] == ["torch-sdpa"]
    assert any(n.startswith("compile-fp32: skipped (") for n in res["notes"])
    assert any(n.startswith("ort-fp32: skipped (onnxruntime is not installed") for n in res["notes"])


def test_eval_on_a_backend_that_cannot_run_here_is_one_line(tiny_models, tmp_path, no_onnxruntime):
    orig = str(tiny_models("tinybert4", "embedding"))
    data = tmp_path / "t.txt"
    data.write_text("\n".join(make_sentences(6)) + "\n")
    r = CliRunner().invoke(cli, ["eval", orig, "--data", str(data), "--reference", orig, "--backend", "ort-fp32", "--max-length", "32"])
    line = assert_one_line_error(r)
    assert line == "error: backend ort-fp32 cannot run here: onnxruntime is not installed (pip install onnxruntime)"


def test_an_unknown_backend_is_refused():
    with pytest.raises(PrunekitError, match="unknown backend 'torch-fp8'"):
        B.check_backend("torch-fp8", "cpu")


def _labelled(path, n=24):
    sents = make_sentences(n, seed=11)
    path.write_text("text,label\n" + "\n".join(f"{s},{i % 2}" for i, s in enumerate(sents)) + "\n")
    return path


@pytest.fixture(scope="module")
def classifier_onnx(tiny_models, tmp_path_factory):
    """A tiny compact classifier, labelled data, and the classifier exported twice: fp32 (--optimize)
    and int8 (static, calibrated on the data); also the int8 export's output."""
    root = tmp_path_factory.mktemp("classifier-onnx")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        src, _ = uneven_compact_dir(tiny_models, root, "tinybert4", "classification")
        data = _labelled(root / "d.csv")
        fp32, int8 = root / "m.onnx", root / "m8.onnx"
        r = CliRunner().invoke(cli, ["export-onnx", str(src), "-o", str(fp32), "--optimize"])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(cli, ["export-onnx", str(src), "-o", str(int8), "--optimize", "--quantize", "int8",
                                     "--calibration", str(data)])
        assert r.exit_code == 0, r.output
    finally:
        torch.set_num_threads(n)
    return {"root": root, "src": src, "data": data, "fp32": fp32, "int8": int8, "int8_output": r.output}


@pytest.fixture(scope="module")
def embedding_onnx(tiny_models, tmp_path_factory):
    """A tiny compact embedding model exported to ONNX, and unlabelled text."""
    root = tmp_path_factory.mktemp("embedding-onnx")
    emb, _ = uneven_compact_dir(tiny_models, root, "tinybert4", "embedding")
    f = root / "e.onnx"
    r = CliRunner().invoke(cli, ["export-onnx", str(emb), "-o", str(f)])
    assert r.exit_code == 0, r.output
    text = root / "t.txt"
    text.write_text("\n".join(make_sentences(10, seed=3)) + "\n")
    return {"onnx": f, "text": text}


def test_calibrated_int8_export_is_static_and_unoptimized(classifier_onnx):
    out = classifier_onnx["int8_output"]
    assert "int8-static" in out and "--optimize left off" in out
    assert any(n.op_type == "QLinearMatMul" for n in onnx.load(str(classifier_onnx["int8"])).graph.node)


def test_eval_through_backends_and_onnx_files(classifier_onnx, tmp_path):
    c = classifier_onnx
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["eval", str(c["src"]), "--data", str(c["data"]), "--backend", "torch-eager,torch-bf16",
                                 "--backend", "ort-int8", "--compare", str(c["fp32"]), "--compare", str(c["int8"]),
                                 "--json", str(out), "--seq-len", "32", "--max-length", "32"])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["models"]
    assert [(x["backend"], x["dtype"]) for x in rows] == [("torch-eager", "fp32"), ("torch-bf16", "bf16"), ("ort-int8", "int8"),
                                                         ("ort", "fp32"), ("ort-int8-static", "int8")]
    acc = [x["results"]["dev"]["metrics"]["accuracy"] for x in rows]
    assert acc[3] == acc[0]  # the fp32 ONNX file predicts what PyTorch does
    assert rows[0]["results"]["dev"]["primary_delta"] is None
    assert rows[1]["results"]["dev"]["primary_delta"] == pytest.approx(acc[1] - acc[0])
    # the ONNX rows know their model from the export report: compact, its FLOPs and params
    assert rows[3]["type"] == "compact" and rows[3]["flops"] == rows[0]["flops"] and rows[3]["params"] == rows[0]["params"]
    assert "vs fp32" in r.output and "ort-int8-static (int8)" in r.output


def test_eval_without_an_fp32_backend_scores_the_fp32_model_too(classifier_onnx, tmp_path):
    """No fp32 backend given: the model's own fp32 row is scored too, so bf16 still has its change."""
    c = classifier_onnx
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["eval", str(c["src"]), "--data", str(c["data"]), "--backend", "torch-bf16", "--json", str(out),
                                 "--max-length", "32"])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["models"]
    assert [(x["backend"], x["dtype"]) for x in rows] == [("torch", "fp32"), ("torch-bf16", "bf16")]
    acc = [x["results"]["dev"]["metrics"]["accuracy"] for x in rows]
    assert rows[0]["results"]["dev"]["primary_delta"] is None
    assert rows[1]["results"]["dev"]["primary_delta"] == pytest.approx(acc[1] - acc[0])


def test_eval_scores_an_embedding_onnx_file_against_its_teacher(embedding_onnx, tiny_models):
    """An embedding model's ONNX file is scored against the teacher its export report names."""
    e = embedding_onnx
    r = CliRunner().invoke(cli, ["eval", str(e["onnx"]), "--data", str(e["text"]), "--max-length", "32"])
    assert r.exit_code == 0 and "similarity_spearman" in r.output, r.output
    assert "scored by fidelity to" in r.output and str(tiny_models("tinybert4", "embedding")) in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_onnx_file_asked_to_run_on_cuda_without_cuda_is_refused(embedding_onnx):
    """One line, never a quiet run on the CPU."""
    with pytest.raises(PrunekitError, match=r"cannot run .*e\.onnx on cuda: torch sees no CUDA device"):
        B.build_runner(B.load_onnx_file(embedding_onnx["onnx"]), "m", "ort", device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ("cuda", "cuda:1"))
def test_an_onnx_file_whose_cuda_provider_does_not_load_is_refused(embedding_onnx, monkeypatch, device):
    """CUDA present and listed, but the provider does not load (missing CUDA libraries): onnxruntime
    falls back to the CPU by itself, which must not pass for a CUDA run."""
    import onnxruntime as ort

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(PrunekitError, match="fell back to CPUExecutionProvider instead of CUDA|cannot load"):
        B.build_runner(B.load_onnx_file(embedding_onnx["onnx"]), "m", "ort", device=device)


def test_ort_providers_ask_for_the_gpu_of_the_device():
    """On cuda:N onnxruntime's CUDA provider is asked for GPU N (its default is GPU 0)."""
    from prunekit.export import ort_providers

    assert ort_providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert ort_providers("cuda")[0] == ("CUDAExecutionProvider", {"device_id": 0}) and ort_providers("cpu") is None


def test_a_provider_the_onnxruntime_build_lacks_is_left_out(embedding_onnx, monkeypatch):
    """Options and all: the session runs on what the build has."""
    import onnxruntime as ort

    from prunekit.export import ort_providers, session

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert session(embedding_onnx["onnx"], ort_providers("cuda:1")).get_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize("case", ("--kind on an ONNX file", "--calibration without --quantize", "--backend on an ONNX file",
                                  "a CUDA-only backend on the CPU"))
def test_eval_and_export_bad_input_is_one_line(classifier_onnx, embedding_onnx, tiny_models, tmp_path, case):
    c, e = classifier_onnx, embedding_onnx
    f, text, src, data = str(e["onnx"]), str(e["text"]), str(c["src"]), str(c["data"])
    args, msg = {
        "--kind on an ONNX file": (["eval", f, "--data", text, "--kind", "classification", "--max-length", "32"],
                                   "is a embedding model"),
        "--calibration without --quantize": (["export-onnx", src, "-o", str(tmp_path / "x.onnx"), "--calibration", data],
                                             "--quantize int8"),
        "--backend on an ONNX file": (["eval", f, "--data", text, "--backend", "torch-bf16", "--max-length", "32"],
                                      "--backend applies to model dirs"),
        "a CUDA-only backend on the CPU": (["eval", str(tiny_models("tinybert4", "classification")), "--data", data,
                                            "--backend", "triton"], "backend 'triton' runs on cuda only"),
    }[case]
    assert_one_line_error(CliRunner().invoke(cli, args), msg)


def test_recompile_limit_is_raised_only_inside_a_compiled_runner():
    import torch._dynamo.config as dc

    from prunekit.backends import _with_recompile_room

    before = (dc.recompile_limit, dc.accumulated_recompile_limit)
    inside = _with_recompile_room(lambda: (dc.recompile_limit, dc.accumulated_recompile_limit))
    assert inside[0] >= 64 and inside[1] >= 1024
    assert (dc.recompile_limit, dc.accumulated_recompile_limit) == before  # the caller's settings are left alone


def test_help_names_every_backend():
    """The CLI's --backend help of bench and eval lists every backend there is (no drift)."""
    for verb in ("bench", "eval"):
        out = CliRunner().invoke(cli, [verb, "--help"], terminal_width=1000).output
        text = " ".join(out.split())
        for name in B.BACKENDS:
            if name != "ort":
                assert name in text, (verb, name)
    assert set(B.COUNTERPART) <= set(B.COMPACT_ONLY) and not set(B.COUNTERPART.values()) & set(B.COMPACT_ONLY)


class _FakeGraph:
    """Stands in for a CUDA graph on the CPU: replay recomputes the captured call from the static inputs."""

    def __init__(self, fn, static, use_mask, out):
        self.fn, self.static, self.use_mask, self.out = fn, static, use_mask, out

    def replay(self):
        self.out.copy_(self.fn(**self.static, use_mask=self.use_mask))


class _CpuShapeGraphs(B.ShapeGraphs):
    def _capture(self, feed, use_mask):
        static = {k: v.clone() for k, v in feed.items()}
        out = self.fn(**static, use_mask=use_mask)
        self.captured.append((tuple(feed["input_ids"].shape), use_mask))
        return _FakeGraph(self.fn, static, use_mask, out), static, out


@pytest.mark.parametrize("kind", ("embedding", "classification"))
def test_shape_graphs_keys_inputs_and_eviction(tiny_models, tmp_path, kind):
    """The graph bookkeeping of the *-graph backends, on the CPU: one graph per shape and padding,
    a batch without padding captured without a mask, new inputs reach a replayed graph, the oldest
    graph dropped past `keep`; outputs equal the model's own (original: the 4-D mask form)."""
    src, cfg = uneven_compact_dir(tiny_models, tmp_path, "tinybert4", kind)
    for model_dir in (src, tiny_models("tinybert4", kind)):
        loaded = load_model_dir(model_dir)
        model = B._torch_model(loaded, "torch-fp16-graph").eval()
        graphs = _CpuShapeGraphs(B._graph_fn(model, loaded.kind, loaded.is_compact), keep=2, unmasked_when_full=True)
        graphs.captured = []
        padded = random_inputs(cfg, 3, 12, seed=1)
        assert not bool(padded["attention_mask"].all())
        full = dict(random_inputs(cfg, 3, 12, seed=2), attention_mask=torch.ones(3, 12, dtype=torch.long))
        again = random_inputs(cfg, 3, 12, seed=4)
        again["attention_mask"][2, 7:] = 0  # padded too: the first graph replayed with new inputs
        other = random_inputs(cfg, 2, 9, seed=3)
        other["attention_mask"][1, 5:] = 0
        fn = B.TaskOutput(model, loaded.kind)
        for batch in (padded, full, padded, again, other, full):
            with torch.no_grad():
                want = fn(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                got = graphs(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        # captured: padded, full (no mask); the 3rd and 4th calls replay; `other` evicts `full`, which is recaptured
        assert graphs.captured == [((3, 12), True), ((3, 12), False), ((2, 9), True), ((3, 12), False)]
        assert list(graphs.graphs) == [(2, 9, True), (3, 12, False)]
    masked = _CpuShapeGraphs(B._graph_fn(model, loaded.kind, loaded.is_compact), unmasked_when_full=False)
    masked.captured = []
    for batch in (full, padded):  # (the original's form) one masked graph serves both
        with torch.no_grad():
            want = fn(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            torch.testing.assert_close(masked(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), want,
                                       atol=1e-5, rtol=1e-5)
    assert masked.captured == [((3, 12), True)]


CUDA_REL_TOL = {"fp32": 1e-4, "fp16": 0.02, "bf16": 0.04}  # fp16: 11 mantissa bits, fp32 accumulation


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs in the GPU session)")
@pytest.mark.parametrize("kind", ("embedding", "classification"))
def test_cuda_backends_match_fp32(tiny_models, tmp_path, kind):
    """Every CUDA backend against fp32 eager on the CPU, for a compact model with uneven heads and
    no-head layers and for its original, on padded and unpadded batches (graphs replayed twice)."""
    src, cfg = uneven_compact_dir(tiny_models, tmp_path, "minilm6", kind)
    for model_dir in (src, tiny_models("minilm6", kind)):
        loaded = load_model_dir(model_dir)
        # torch.compile once (compact model): each compile takes seconds, and the CPU tests cover the rest
        backends = [b for b in B.CUDA_BACKENDS if not b.startswith("compile-")] + (["compile-fp16"] if model_dir == src else [])
        for backend in backends:
            why = B.unavailable(backend, "cuda")
            if why:  # onnxruntime without its CUDA provider, inductor without a compiler: not prunekit's to run
                assert backend.startswith(("ort-", "compile-")), f"{backend} unavailable on CUDA: {why}"
                print(f"{backend}: skipped ({why})")
                continue
            work = tmp_path / f"cuda-{model_dir.name}-{backend}"
            work.mkdir()
            r = B.build_runner(loaded, model_dir.name, backend, "cuda", None, work)
            if r is None:
                assert backend in B.COMPACT_ONLY and model_dir != src
                continue
            cuda_runner_matches(r, loaded, f"{model_dir.name} {backend}")


def cuda_runner_matches(r, loaded, what: str) -> torch.Tensor:
    """``r`` (a CUDA runner) against fp32 eager on the CPU, on padded, unpadded and padded again
    batches (a graph replayed twice); the last output."""
    for seed in (1, 2, 1):
        batch = random_inputs(loaded.config, 3, 12, seed)
        if seed == 2:
            batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
        ref = reference_output(loaded, batch).float()
        got = r.run({k: v.cuda() for k, v in batch.items()})
        assert got.shape == ref.shape, what
        rel = float((got - ref).abs().max() / ref.abs().max())
        assert rel <= CUDA_REL_TOL[r.dtype], f"{what} seed {seed}: rel diff {rel:.2e}"
    return got
