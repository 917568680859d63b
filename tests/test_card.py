"""The model card in every compact and distilled dir: Hub metadata, and numbers equal to the reports they come from."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard

from factory import (
    SEQ,
    assert_one_line_error,
    edge_architecture,
    kept_arch,
    labelled_csv,
    make_run_dir,
    scrambled_teacher_dir,
)
from prunekit import card as C
from prunekit.cli import cli
from prunekit.distill import DistillSettings, distill
from prunekit.flops import format_flops
from prunekit.models import default_model_path, load_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first markdown table after ``heading``."""
    section = text.split(heading, 1)[1]
    rows = [ln for ln in section.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:] if not r.startswith("## ")]


def test_compact_card_matches_its_report(tiny_models, tmp_path):
    teacher = load_teacher(str(tiny_models("minilm6", "classification")))
    arch = edge_architecture(teacher.shape, seed=3)
    run = make_run_dir(tmp_path / "run", teacher, arch)
    res = CliRunner().invoke(cli, ["compact", str(run), "-o", str(tmp_path / "mini-0.3"), "--no-fvcore"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "mini-0.3"
    report = json.loads((out / "compact_report.json").read_text())
    assert report["command"] == f"prunekit compact {run} -o {out} --no-fvcore"
    card = ModelCard.load(out / "README.md")  # the Hub's own parser
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"
    assert "prunekit" in card.data.tags and card.data.base_model is None  # a local teacher has no hub id
    text = card.text
    assert text.startswith("\n# mini-0.3") or text.lstrip().startswith("# mini-0.3")  # the published name, not the temp dir's
    layers = table_rows(text, "## Layers")
    assert [[int(h), int(f)] for _, h, f in layers[: len(arch.head_counts)]] == [list(x) for x in zip(report["heads_per_layer"], report["ffn_per_layer"])]
    cost = {r[0]: r[1:] for r in table_rows(text, "A structurally pruned")[:2]}
    assert cost["parameters"] == [f"{report['original']['params']:,}", f"{report['compact']['params']:,}",
                                  f"{report['compact']['params'] / report['original']['params']:.3f}"]
    flops = cost[f"FLOPs per sequence of {SEQ} tokens (analytic)"]
    assert flops[:2] == [format_flops(report["original"]["flops_analytic"]), format_flops(report["compact"]["flops_analytic"])]
    assert f"prunekit compact {run}" in text.split("## How it was made")[1]
    assert 'pipeline("text-classification", model="mini-0.3", trust_remote_code=True)' in text


def test_card_adds_a_bench_table_and_refuses_bad_dirs(tiny_models, tmp_path):
    teacher = load_teacher(str(tiny_models("tinybert4", "embedding")))
    run = make_run_dir(tmp_path / "run", teacher, edge_architecture(teacher.shape, seed=4))
    runner = CliRunner()
    assert runner.invoke(cli, ["compact", str(run), "-o", str(tmp_path / "m"), "--no-fvcore"]).exit_code == 0
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert card.data.library_name == "sentence-transformers" and "sentence-transformers" in card.data.tags
    assert "## Speed" not in card.text
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench.md").write_text("| backend | sentences/s |\n|---|---|\n| torch-sdpa | 123.4 |\n")
    res = runner.invoke(cli, ["card", str(tmp_path / "m"), "--bench", str(bench)])
    assert res.exit_code == 0, res.output
    assert "| torch-sdpa | 123.4 |" in (tmp_path / "m" / "README.md").read_text().split("## Speed")[1]
    # An export into the model dir is listed (its check's numbers from its report), the speed table kept.
    res = runner.invoke(cli, ["export-onnx", str(tmp_path / "m"), "-o", str(tmp_path / "m" / "onnx" / "model.onnx")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "m" / "README.md").read_text()
    report = json.loads((tmp_path / "m" / "onnx" / "model.onnx.json").read_text())
    size = (tmp_path / "m" / "onnx" / "model.onnx").stat().st_size
    row = f"| `onnx/model.onnx` | export | {size / 1e6:.1f} MB | {report['checks'][-1]['max_abs_diff']:.2e} (absolute) |"
    assert row in text.split("## ONNX")[1] and "| torch-sdpa | 123.4 |" in text
    assert 'session = onnxruntime.InferenceSession("m/onnx/model.onnx")' in text
    assert f"prunekit export-onnx {tmp_path / 'm'} -o {tmp_path / 'm' / 'onnx' / 'model.onnx'}" in text.split("## How it was made")[1]
    for args, says in ((["card", str(tmp_path / "nowhere")], "not a model dir"),
                       (["card", str(tmp_path / "m"), "--bench", str(tmp_path)], "has no bench.md")):
        assert_one_line_error(runner.invoke(cli, args), says)


def test_distilled_card_shows_the_metric_before_and_after(tmp_path):
    from factory import make_compact_dir

    teacher = scrambled_teacher_dir(tmp_path / "teacher", "classification")
    student = make_compact_dir(tmp_path, teacher, kept_arch())
    s = DistillSettings(student=str(student), data=str(labelled_csv(tmp_path / "data.csv")), output_dir=str(tmp_path / "d"),
                        stage1_epochs=1, stage2_epochs=1, batch_size=16, max_length=SEQ, augment_copies=0)
    r = distill(s, progress=False)
    report = json.loads((r.output_dir / "distill_report.json").read_text())
    text = ModelCard.load(r.output_dir / "README.md").text
    assert "then distilled from the teacher" in text
    rows = {row[0]: row[1] for row in table_rows(text, "## Quality")}
    metric = report["metric"]
    assert rows["teacher"] == f"{report['teacher_dev'][metric]:.4f}"
    assert rows["this model before distillation"] == f"{report['before'][metric]:.4f}"
    assert rows["this model, distilled (best dev checkpoint)"] == f"{report['best']['value']:.4f}"
    assert re.search(r"^# d$", text, re.M)


def test_teacher_hub_id_and_license():
    packaged = str(default_model_path())
    assert C._teacher_hub_id(packaged) == C.DEFAULT_TEACHER_HUB_ID
    assert C._teacher_hub_id("prajjwal1/bert-tiny") == "prajjwal1/bert-tiny"
    assert C._teacher_hub_id("/no/such/dir/model") is None
    assert C._teacher_card_data(packaged) == {"license": "apache-2.0", "language": "en"}
