"""What a newcomer's mistakes get: one line that names the mistake (model dirs mixed up, a typo in a
path, a bad option value, models in the wrong order), and results that say what they are."""
from __future__ import annotations

import json
import logging
import time

import pytest
from click.testing import CliRunner

from factory import assert_one_line_error, kept_arch, make_compact_dir, make_sentences
from prunekit.cli import cli
from prunekit.data import load_data

pytestmark = pytest.mark.usefixtures("one_thread")


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_models):
    """(teacher dir, compact dir cut from it, a text file) — an embedding model."""
    root = tmp_path_factory.mktemp("pair")
    teacher = tiny_models("minilm6", "embedding")
    compact = make_compact_dir(root, teacher, kept_arch(6))
    texts = root / "texts.txt"
    texts.write_text("\n".join(make_sentences(40, seed=3)) + "\n")
    return teacher, compact, texts


def test_compact_refuses_a_compact_model(pair, tmp_path):
    _, compact, _ = pair
    assert_one_line_error(run(["compact", compact, "-o", tmp_path / "again"]), "is a compact model already", "prunekit search")
    assert not (tmp_path / "again").exists()


def test_a_compact_model_as_teacher(pair, tmp_path):
    teacher, compact, texts = pair
    r = run(["search", "--model", compact, "--data", texts, "-o", tmp_path / "s", "--max-steps", "2"])
    assert_one_line_error(r, "is a compact model", "give the teacher it was cut from", str(teacher))


def test_a_classifier_head_the_model_does_not_have(pair, tmp_path):
    teacher, _, texts = pair
    for kind in ("classification", "regression"):
        r = run(["search", "--model", teacher, "--kind", kind, "--data", texts, "-o", tmp_path / kind, "--max-steps", "2"])
        assert_one_line_error(r, f"has no {kind} head", "leave --kind at auto")


def test_a_typo_in_a_relative_path_is_not_a_hub_lookup(pair, tmp_path, monkeypatch):
    _, _, texts = pair
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    assert_one_line_error(run(["eval", "runs/nope", "--data", texts]), "model directory not found: runs/nope")
    assert time.perf_counter() - t0 < 20  # not the hub's retries (30 s and more offline)


def test_click_usage_errors_are_one_line(tmp_path):
    assert_one_line_error(run(["search", "--target", "abc"]), "Invalid value for '--target'", "search --help`)")
    assert_one_line_error(run(["export-onnx", "x", "-o", tmp_path / "m.onnx", "--quantize", "int4"]), "'--quantize'")
    assert_one_line_error(run(["no-such-verb"]), "No such command")
    assert run(["--help"]).exit_code == 0 and run(["search", "--help"]).output.startswith("Usage:")


@pytest.mark.parametrize("opt, value, needle", [("--batch-size", "0", "--batch-size must be >= 1, got 0"),
                                                ("--max-length", "4", "--max-length must be >= 8 tokens, got 4")])
def test_one_option_per_message(pair, tmp_path, opt, value, needle):
    teacher, _, texts = pair
    assert_one_line_error(run(["search", "--model", teacher, "--data", texts, "-o", tmp_path / "s", opt, value]), needle)


def test_search_says_when_it_projected(pair, tmp_path):
    teacher, _, texts = pair
    r = run(["search", "--model", teacher, "--data", texts, "-o", tmp_path / "s", "--max-steps", "2", "--batch-size", "8",
             "--max-length", "32", "--target", "0.3", "--quiet"])
    assert r.exit_code == 0, r.output
    arch = json.loads((tmp_path / "s" / "architecture.json").read_text())
    assert arch["projected"] is True  # two steps cannot reach 0.3 by the gates
    assert "projected: the gates ended outside the band" in r.output and "--max-steps" in r.output


def test_eval_teacher_first_against_its_students(pair, tmp_path):
    teacher, compact, texts = pair
    out = tmp_path / "r.json"
    for models in ([teacher, "--compare", compact], [compact, "--compare", teacher]):
        r = run(["eval", *models, "--data", texts, "--json", out, "--seq-len", "32", "--force"])
        assert r.exit_code == 0, r.output
        rows = {row["type"]: row for row in json.loads(out.read_text())["models"]}
        t, c = rows["teacher"]["results"]["dev"], rows["compact"]["results"]["dev"]
        assert t["metrics"]["similarity_spearman"] == pytest.approx(1.0) and c["metrics"]["similarity_spearman"] < 1.0
        # the FLOPs ratio is against the original, whichever model comes first
        assert rows["teacher"]["flops_ratio"] == 1.0 and rows["compact"]["flops_ratio"] < 1.0


def test_bench_original_first_and_backends_that_apply(pair, tmp_path):
    teacher, compact, _ = pair
    common = ["--batch", "2", "--seq-len", "16", "--repeats", "1", "--warmup", "0", "--no-fvcore"]
    assert_one_line_error(run(["bench", compact, teacher, "--backend", "torch-eager", *common]),
                          "give the original model first", "is a compact model")
    assert_one_line_error(run(["bench", teacher, "--backend", "torch-bf16-packed", *common]),
                          "no backend could run these models", "compact models only")


def test_first_string_column_as_text_is_said(tmp_path, caplog):
    p = tmp_path / "d.csv"
    p.write_text("foo,bar\nhello there,1\nbye now,0\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="prunekit.data"):
        assert load_data(p).texts == ["hello there", "bye now"]
    assert "read from column 'foo'" in caplog.text and "--text-column" in caplog.text


def test_distill_checks_the_students_architecture_file(pair, tmp_path):
    import shutil

    teacher, compact, texts = pair
    broken = tmp_path / "broken"
    shutil.copytree(compact, broken)
    (broken / "architecture.json").write_text("{oops")
    r = run(["distill", broken, "--teacher", teacher, "--data", texts, "-o", tmp_path / "d", "--stage1-epochs", "0.1",
             "--stage2-epochs", "0.1"])
    assert_one_line_error(r, "architecture.json")
    assert not (tmp_path / "d").exists()


def test_kind_against_the_models_own_head(tiny_models, pair, tmp_path):
    _, _, texts = pair
    cls = tiny_models("minilm6", "classification")
    r = run(["search", "--model", cls, "--kind", "regression", "--data", texts, "-o", tmp_path / "r", "--max-steps", "2"])
    assert_one_line_error(r, "is a classifier with 2 labels, not a regression model")


def test_eval_an_original_beside_another_teachers_student(tiny_models, pair, tmp_path):
    _, compact, texts = pair  # cut from minilm6; tinybert4 is no teacher of it
    other = tiny_models("tinybert4", "embedding")
    assert_one_line_error(run(["eval", other, "--compare", compact, "--data", texts]), "pass --reference MODEL")


def test_a_cuda_index_the_machine_lacks_is_one_line(monkeypatch):
    """`--device cuda:3` on a one-GPU machine: said at once, not a raw 'invalid device ordinal' later."""
    import torch

    from prunekit.distributed import resolve_device
    from prunekit.errors import PrunekitError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(PrunekitError, match=r"--device cuda:3 asked for, but this machine has 1 CUDA GPU \(cuda:0\)"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda", 0) and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(PrunekitError, match=r"unknown --device 'cuda:x'"):
        resolve_device("cuda:x")


@pytest.mark.parametrize("device", ["mps", "xpu", "meta", "cuda:3"])
def test_devices_prunekit_does_not_run_on_are_one_line(pair, tmp_path, device):
    """Device names torch knows but prunekit does not run on (or a GPU this machine lacks): one line,
    exit 2, from every verb that takes --device (it was a traceback from eval, search and distill)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    teacher, compact, texts = pair
    for args in (["eval", compact, "--data", texts], ["bench", teacher, compact],
                 ["search", "--model", teacher, "--data", texts, "-o", tmp_path / "s", "--max-steps", "2"],
                 ["distill", compact, "--data", texts, "-o", tmp_path / "d"]):
        assert_one_line_error(run(args + ["--device", device]), "--device", device)
