"""bench: a tiny original vs its compact model, tiny repeats; table/JSON/PNG fields; bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory import assert_one_line_error, uneven_compact_dir
from prunekit.bench import BenchSettings, bench
from prunekit.cli import cli
from prunekit.errors import PrunekitError
from prunekit.system import ISA_FLAGS, cpu_info, native_bf16


def test_bench_cli_writes_table_json_png(tiny_models, tmp_path):
    orig = tiny_models("minilm6", "embedding")
    comp, _ = uneven_compact_dir(tiny_models, tmp_path, "minilm6", "embedding")
    out = tmp_path / "res"
    r = CliRunner().invoke(cli, ["bench", str(orig), str(comp), "--batch", "2", "--seq-len", "8", "--repeats", "2",
                                 "--warmup", "1", "--threads", "1", "--backend", "torch-sdpa", "--backend", "ort-fp32",
                                 "--backend", "ort-int8", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "sent/s" in r.output and "meas/FLOPs" in r.output
    res = json.loads((out / "bench.json").read_text())
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG" and "| model |" in (out / "bench.md").read_text()
    assert {(row["model"], row["backend"]) for row in res["rows"]} == {
        (m, b) for m in (orig.name, comp.name) for b in ("torch-sdpa", "ort-fp32", "ort-int8")}
    for row in res["rows"]:
        for key in ("latency_median_ms", "latency_p90_ms", "sentences_per_s", "size_bytes", "params", "flops_analytic",
                    "flops_fvcore", "speedup", "flops_speedup", "speedup_over_flops_speedup"):
            assert row[key] is not None and row[key] > 0, (key, row)
        if row["model"] == orig.name:
            assert row["speedup"] == pytest.approx(1.0)
        else:
            assert row["flops_speedup"] > 1.5 and row["params"] < res["models"][0]["params"]
    assert res["threads"] == 1 and res["system"]["torch"] and res["system"]["onnxruntime"]
    assert "avx2" in res["system"]["cpu"]["isa"] and res["mode"] == "fixed" and res["batches"] == [[2, 8]]
    assert any("ort-int8" in n and "prunekit eval" in n for n in res["notes"])
    # the comparison a user makes: the compact model's fastest backend against the original's
    (best,) = res["best"]
    fastest = max((row for row in res["rows"] if row["model"] == orig.name), key=lambda row: row["sentences_per_s"])
    assert best["reference_backend"] == fastest["backend"] and best["reference_sentences_per_s"] == fastest["sentences_per_s"]
    assert best["speedup"] == pytest.approx(best["sentences_per_s"] / fastest["sentences_per_s"])
    assert "best compact vs best original:" in r.output and f"({orig.name}, {fastest['backend']})" in r.output
    assert "dtype" in r.output and "| int8 |" in r.output
    assert r.output.splitlines()[0].split("; ")[1].startswith(res["system"]["cpu"]["model"])
    # a run on a GPU names the GPU in the table and the plot, the CPU as its host
    from prunekit.bench import format_table, plot

    res["system"]["gpu"], res["settings"]["device"] = "NVIDIA H100 80GB HBM3", "cuda"
    head = format_table(res).splitlines()[0]
    assert "cuda; NVIDIA H100 80GB HBM3 (host " in head, head
    plot(res, tmp_path / "gpu.png")
    assert (tmp_path / "gpu.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_real_lengths(tiny_models, tmp_path, text_file):
    orig = tiny_models("tinybert4", "classification")
    comp, _ = uneven_compact_dir(tiny_models, tmp_path, "tinybert4", "classification")
    res = bench(BenchSettings(models=[str(orig), str(comp)], batch=4, seq_len=32, real_lengths=str(text_file), num_batches=3,
                              repeats=1, warmup=0, threads=1, fvcore=False, backends=["torch-eager", "ort-fp32"]))
    assert res["mode"] == "real-lengths" and len(res["batches"]) == 3 and res["sentences_per_repeat"] == 12
    # each batch as wide as its longest sentence ([CLS], a token a word, [SEP]), not padded to --seq-len
    words = [len(line.split()) for line in text_file.read_text().splitlines()[:12]]
    assert res["batches"] == [[4, max(words[i:i + 4]) + 2] for i in (0, 4, 8)]
    assert len({b[1] for b in res["batches"]}) > 1, "the widths should differ, or the test shows nothing"
    assert len(res["rows"]) == 4


def test_cpu_info_reads_the_cpu_model_flags_and_count():
    """What bench reports about the CPU: /proc/cpuinfo's model name and flags, os.cpu_count()."""
    info = cpu_info()
    assert info["logical_cpus"] == os.cpu_count() and set(info["isa"]) == set(ISA_FLAGS)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        fields = [line.partition(":") for line in cpuinfo.read_text().splitlines()]
        model = next((v.strip() for k, _, v in fields if k.strip() == "model name"), None)
        flags = next((set(v.split()) for k, _, v in fields if k.strip() == "flags"), set())
        if model:
            assert info["model"] == model
        assert info["isa"] == {k: k in flags for k in ISA_FLAGS}
    assert info["model"]
    isa = info["isa"]
    if isa["avx512f"] or isa["amx_bf16"]:  # these imply AVX2 on every x86 CPU that has them
        assert isa["avx2"]
    assert native_bf16(isa) == (isa["avx512_bf16"] or isa["amx_bf16"])


def test_bad_input(tiny_models, tmp_path):
    orig = str(tiny_models("tinybert4", "embedding"))
    runner = CliRunner()
    (tmp_path / "notmodel").mkdir()
    cases = ((["bench", str(tmp_path / "notmodel")], "not a model directory"),
             (["bench", orig, "--backend", "triton"], "backend 'triton' runs on cuda only, not on --device cpu"),
             (["bench", orig, "--backend", "ort-cuda-fp16"], "runs on cuda only"),
             (["bench", orig, "--backend", "torch-fp8"], "unknown backend 'torch-fp8' for --device cpu"),
             (["bench", orig, "--seq-len", "1000"], "--seq-len"))
    import torch

    if not torch.cuda.is_available():
        cases += ((["bench", orig, "--device", "cuda"], "this machine has no CUDA GPU"),)
    for args, msg in cases:
        assert_one_line_error(runner.invoke(cli, args), msg)
    with pytest.raises(PrunekitError, match="at least one model"):
        bench(BenchSettings(models=[]))


def test_graph_captures_inside_the_timing_are_reported(tiny_models, monkeypatch, text_file):
    """A *-graph runner that captures a CUDA graph during the timed repeats (no warm-up for that batch
    shape: real lengths give several, and only the first runs untimed when the runner is built)
    gets a note saying its times include the capture; with a warm-up there is none."""
    import prunekit.bench as bench_mod
    from prunekit.backends import Runner

    def fake_build(lm, name, backend, *a, **kw):
        seen = set()

        def run(batch):  # "captures" once per new batch shape, as ShapeGraphs does
            seen.add(tuple(batch["input_ids"].shape))
            return batch["input_ids"].float()

        return Runner(name, backend, run, 0, "fp32", captures=lambda: len(seen))

    monkeypatch.setattr(bench_mod, "build_runner", fake_build)
    orig = str(tiny_models("tinybert4", "embedding"))
    for warmup, noted in ((0, True), (1, False)):
        res = bench(BenchSettings(models=[orig], backends=["torch-sdpa"], batch=2, seq_len=64, repeats=2, warmup=warmup,
                                  threads=1, fvcore=False, real_lengths=str(text_file)))
        assert len({tuple(b) for b in res["batches"]}) > 1
        notes = [n for n in res["notes"] if "CUDA graph capture(s) inside the timed repeats" in n]
        assert bool(notes) == noted, (warmup, res["notes"])


def test_a_backend_whose_first_run_fails_is_a_note_and_the_rest_is_timed(tiny_models, monkeypatch):
    """A runner that builds but fails on its first batch (a Triton launcher without a C compiler, a
    CUDA provider that cannot load): one note, no traceback; the other backends are timed."""
    import prunekit.bench as bench_mod

    real = bench_mod.build_runner

    def flaky(lm, name, backend, *a, **kw):
        r = real(lm, name, backend, *a, **kw)
        if backend == "torch-eager":
            def run(batch):
                raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.\nmore")
            r.run = run
        return r

    monkeypatch.setattr(bench_mod, "build_runner", flaky)
    orig = str(tiny_models("tinybert4", "embedding"))
    res = bench(BenchSettings(models=[orig], backends=["torch-sdpa", "torch-eager"], batch=2, seq_len=8, repeats=1, warmup=0,
                              threads=1, fvcore=False))
    assert [r["backend"] for r in res["rows"]] == ["torch-sdpa"]
    assert any(n.endswith("torch-eager: skipped (its first run failed: Failed to find C compiler. Please specify via CC "
                          "environment variable.)") for n in res["notes"]), res["notes"]


def test_device_auto_and_cpu_n_resolve_once(tiny_models):
    """--device auto is resolved before anything uses it (it reached tensor.to("auto")); cpu:1 is the CPU."""
    import torch

    orig = str(tiny_models("tinybert4", "embedding"))
    for device in ("auto", "cpu:1"):
        res = bench(BenchSettings(models=[orig], device=device, backends=["torch-sdpa"], batch=2, seq_len=8, repeats=1,
                                  warmup=0, threads=1, fvcore=False))
        assert res["settings"]["device"] == ("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")
        assert [r["backend"] for r in res["rows"]] == ["torch-sdpa"]


def test_noise_note_names_the_noisy_rows():
    from prunekit.bench import noise_notes

    rows = [{"model": "orig", "backend": "torch-sdpa", "latency_median_ms": 10.0, "latency_p90_ms": 11.0},
            {"model": "compact", "backend": "ort-fp32", "latency_median_ms": 2.0, "latency_p90_ms": 8.0}]
    (note,) = noise_notes(rows)
    assert "compact ort-fp32 (4.0x)" in note and "orig" not in note
    assert noise_notes(rows[:1]) == []


def test_models_named_by_as_many_parent_dirs_as_tell_them_apart():
    from prunekit.bench import _unique_names

    assert _unique_names(["runs/teacher", "runs/a/search-0.3-S/distilled", "runs/a/search-0.1-S/distilled", "other/x"]) == [
        "teacher", "search-0.3-S/distilled", "search-0.1-S/distilled", "x"]
    assert _unique_names(["a/b/m", "c/b/m", "d"]) == ["a/b/m", "c/b/m", "d"]
    assert _unique_names(["m", "m", "runs/m"]) == ["m", "m'", "runs/m"]
