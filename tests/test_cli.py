"""The command line: help, the search verb end to end, and one clear line for every bad input."""
import json

import pytest
from click.testing import CliRunner

from factory import assert_one_line_error, make_sentences
from prunekit.cli import cli

VERBS = ("search", "compact", "distill", "export-onnx", "bench", "eval")


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_help_lists_every_verb():
    result = run(["--help"])
    assert result.exit_code == 0
    for verb in VERBS:
        assert verb in result.output


def test_search_help_explains_options_with_defaults():
    out = run(["search", "--help"]).output
    for opt in ("--target", "--method", "--tolerance", "--lambda-cost", "--topk-fraction", "--freeze-weights", "--resume", "--force", "--seed"):
        assert opt in out
    flat = " ".join(out.split())
    assert "[default: 0.3]" in flat and "[default: search]" in flat


def _search_args(tmp_path, model, data, *extra):
    return ["search", "--model", str(model), "--data", str(data), "-o", str(tmp_path / "run"), "--max-steps", "6", "--batch-size", "8", "--max-length", "32", "--quiet", *extra]


def test_search_cli_end_to_end(tiny_models, text_file, tmp_path):
    result = run(_search_args(tmp_path, tiny_models(), text_file, "--target", "0.5"))
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "run" / "architecture.json") in result.output
    assert "FLOPs ratio 0.4" in result.output or "FLOPs ratio 0.5" in result.output
    arch = json.loads((tmp_path / "run" / "architecture.json").read_text())
    assert 0.475 <= arch["achieved_flops_ratio"] <= 0.525


@pytest.mark.parametrize("target", ["0", "-0.2", "1.5", "nan"])
def test_target_outside_range(tiny_models, text_file, tmp_path, target):
    assert_one_line_error(run(_search_args(tmp_path, tiny_models(), text_file, "--target", target)), "--target", "(0, 1]")
    assert not list(tmp_path.glob("run*"))


def test_model_dir_not_bert(tmp_path, text_file):
    from transformers import GPT2Config

    d = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_head=2, n_embd=8).save_pretrained(d)
    assert_one_line_error(run(_search_args(tmp_path, d, text_file)), "not BERT-family")


def test_model_dir_missing_or_empty(tmp_path, text_file):
    assert_one_line_error(run(_search_args(tmp_path, tmp_path / "nope", text_file)), "not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run(_search_args(tmp_path, tmp_path / "empty", text_file)), "config.json")


def test_corrupt_weights(tiny_models, tmp_path, text_file):
    import shutil

    d = tmp_path / "broken"
    shutil.copytree(tiny_models(), d)
    (d / "model.safetensors").write_bytes(b"\x00" * 100)
    assert_one_line_error(run(_search_args(tmp_path, d, text_file)), "broken")


def test_missing_data_file(tiny_models, tmp_path):
    assert_one_line_error(run(_search_args(tmp_path, tiny_models(), tmp_path / "missing.csv")), "missing.csv")


def test_malformed_jsonl(tiny_models, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine line"}\n{not json\n')
    assert_one_line_error(run(_search_args(tmp_path, tiny_models(), bad)), "line 2")


def test_label_column_that_does_not_exist(tiny_models, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "\n".join(f"{s},1" for s in make_sentences(10)) + "\n")
    assert_one_line_error(run(_search_args(tmp_path, tiny_models(), data, "--label-column", "gold")), "gold")


def test_empty_data(tiny_models, tmp_path):
    data = tmp_path / "empty.txt"
    data.write_text("\n\n")
    assert_one_line_error(run(_search_args(tmp_path, tiny_models(), data)))


def test_existing_output_needs_force(tiny_models, text_file, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("precious")
    assert_one_line_error(run(_search_args(tmp_path, tiny_models(), text_file)), "--force")
    assert (tmp_path / "run" / "keep.txt").read_text() == "precious"
    result = run(_search_args(tmp_path, tiny_models(), text_file, "--force"))
    assert result.exit_code == 0 and not (tmp_path / "run" / "keep.txt").exists()


def test_resume_without_partial_run(tiny_models, text_file, tmp_path):
    assert_one_line_error(run(_search_args(tmp_path, tiny_models(), text_file, "--resume")), "nothing to resume")


def test_cuda_requested_without_gpu(tiny_models, text_file, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_one_line_error(run(_search_args(tmp_path, tiny_models(), text_file, "--device", "cuda")), "cuda")


@pytest.mark.parametrize("args", [["export-onnx", "x", "-o", "x.onnx"], ["bench", "x"]])
def test_export_and_bench_reject_a_missing_model_dir(args):
    assert_one_line_error(run(args), "not a directory")
