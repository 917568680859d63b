"""`prunekit eval`: task metrics on hand-checked predictions, fidelity, MNLI splits, --compare, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from factory import assert_one_line_error, make_sentences, make_tiny_model
from prunekit.architecture import Architecture
from prunekit.cli import cli
from prunekit.compact import compact_to_dir
from prunekit.data import load_data
from prunekit.evaluate import EvalSettings, evaluate, format_table
from prunekit.flops import model_flops
from prunekit.metrics import compute_metrics
from prunekit.models import load_teacher

SEQ = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def _compact(root: Path, teacher_dir: Path, name: str = "compact") -> Path:
    t = load_teacher(teacher_dir)
    heads = torch.zeros(t.shape.num_layers, t.shape.num_heads)
    heads[:, :2] = 1.0
    ffn = torch.zeros(t.shape.num_layers, t.shape.intermediate_size)
    ffn[:, ::3] = 1.0
    Architecture.from_masks(heads, ffn).save(root / f"{name}.json", t.shape, SEQ)
    compact_to_dir(None, root / f"{name}.json", root / name, model=str(teacher_dir), measure_fvcore=False)
    return root / name


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    out = {}
    for kind in ("classification", "regression", "embedding"):
        t = make_tiny_model(root / f"teacher-{kind}", "minilm6", kind)
        out[kind] = (t, _compact(root, t, f"compact-{kind}"))
    return out


def _csv(path: Path, labels: list, regression: bool = False) -> Path:
    sents = make_sentences(len(labels), seed=5)
    path.write_text("text,label\n" + "\n".join(f"{s},{y}" for s, y in zip(sents, labels)) + "\n")
    return path


def _fixed_predictions(monkeypatch, outputs: torch.Tensor):
    import prunekit.evaluate as E

    monkeypatch.setattr(E, "predict", lambda model, kind, data, device="cpu", batch_size=64: outputs[: len(data)].clone())


def test_classification_metrics_hand_checked(models, tmp_path, monkeypatch):
    teacher, _ = models["classification"]
    labels = [1, 0, 0, 1, 1, 0]
    data = _csv(tmp_path / "d.csv", labels)
    # predicted classes 1 0 1 1 0 0: 4 of 6 right; class 1: tp 2, fp 1, fn 1 -> precision = recall = F1 = 2/3
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [-1.0, 2.0], [3.0, 0.0], [0.5, 0.1]])
    _fixed_predictions(monkeypatch, logits)
    report = evaluate(EvalSettings([str(teacher)], data=str(data)))
    res = report["models"][0]["results"]["dev"]
    assert res["metrics"]["accuracy"] == pytest.approx(4 / 6) and res["metrics"]["f1"] == pytest.approx(2 / 3)
    assert res["metrics"] == compute_metrics(load_data(str(data)).task, logits, torch.tensor(labels))
    assert res["primary"] == "accuracy" and res["scored_against"] == "labels" and res["examples"] == 6


def test_regression_metrics_equal_compute_metrics(models, tmp_path, monkeypatch):
    teacher, _ = models["regression"]
    labels = [0.5, 1.5, 2.0, 3.25, 4.0]
    data = _csv(tmp_path / "r.csv", labels)
    preds = torch.tensor([[0.1], [0.3], [0.2], [0.9], [1.0]])  # ranks 1 3 2 4 5 vs 1 2 3 4 5: Spearman 0.9
    _fixed_predictions(monkeypatch, preds)
    report = evaluate(EvalSettings([str(teacher)], data=str(data)))
    m = report["models"][0]["results"]["dev"]["metrics"]
    assert m["spearman"] == pytest.approx(0.9)
    assert m == compute_metrics(load_data(str(data)).task, preds.flatten(), torch.tensor(labels))


def test_embedding_model_scored_against_its_teacher(models, tmp_path):
    teacher, student = models["embedding"]
    text = tmp_path / "t.txt"
    text.write_text("\n".join(make_sentences(12, seed=2)) + "\n")
    report = evaluate(EvalSettings([str(student)], data=str(text)))
    res = report["models"][0]["results"]["dev"]
    assert res["scored_against"] == str(teacher) and res["primary"] == "similarity_spearman"
    assert set(res["metrics"]) == {"similarity_spearman", "mean_cosine"}
    same = evaluate(EvalSettings([str(teacher)], data=str(text), reference=str(teacher)))["models"][0]["results"]["dev"]["metrics"]
    assert same["mean_cosine"] == pytest.approx(1.0) and same["similarity_spearman"] == pytest.approx(1.0)
    # a classifier on unlabelled data: agreement with the reference's predictions
    cls_teacher, cls_student = models["classification"]
    agree = evaluate(EvalSettings([str(cls_student)], data=str(text)))["models"][0]["results"]["dev"]
    assert agree["primary"] == "teacher_agreement" and 0.0 <= agree["metrics"]["teacher_agreement"] <= 1.0


def test_mnli_reports_matched_and_mismatched(tmp_path):
    teacher = make_tiny_model(tmp_path / "mnli-teacher", "minilm6", "classification", num_labels=3)
    folder = tmp_path / "MNLI"
    folder.mkdir()
    names = ["entailment", "neutral", "contradiction"]
    for split in ("dev_matched", "dev_mismatched"):
        a, b = make_sentences(9, seed=len(split)), make_sentences(9, seed=len(split) + 1)
        rows = ["sentence1\tsentence2\tgold_label"] + [f"{x}\t{y}\t{names[i % 3]}" for i, (x, y) in enumerate(zip(a, b))]
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    report = evaluate(EvalSettings([str(teacher)], data=str(folder)))
    assert report["splits"] == ["dev_matched", "dev_mismatched"]
    assert set(report["models"][0]["results"]) == {"dev_matched", "dev_mismatched"}
    assert "dev_matched:accuracy" in format_table(report)
    only = evaluate(EvalSettings([str(teacher)], data=str(folder), splits=["dev_mismatched"]))
    assert only["splits"] == ["dev_mismatched"]


def _run(args):
    return CliRunner().invoke(cli, args)


def test_cli_compare_table_and_json(models, tmp_path):
    teacher, student = models["classification"]
    data = _csv(tmp_path / "d.csv", [i % 2 for i in range(10)])
    out_json = tmp_path / "report.json"
    result = _run(["eval", str(teacher), "--data", str(data), "--compare", str(student), "--json", str(out_json), "--seq-len", str(SEQ)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(str(teacher)[-20:] in ln and "teacher" in ln for ln in lines)
    assert any(str(student)[-20:] in ln and "compact" in ln for ln in lines)
    assert "accuracy" in result.output and "FLOPs" in result.output
    report = json.loads(out_json.read_text())
    t_row, s_row = report["models"]
    assert t_row["model"] == str(teacher) and s_row["model"] == str(student)
    shape = load_teacher(teacher).shape
    assert t_row["flops"] == model_flops(shape, SEQ).total and t_row["flops_ratio"] == 1.0
    assert s_row["flops"] == model_flops(shape, SEQ, [2] * 6, [22] * 6).total
    assert s_row["flops_ratio"] < 0.5 and s_row["params"] < t_row["params"]
    assert s_row["heads_per_layer"] == [2] * 6


def test_eval_bad_inputs(models, tmp_path):
    teacher, student = models["embedding"]
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    assert_one_line_error(_run(["eval", str(onnx)]), "onnxruntime cannot load")
    text = tmp_path / "t.txt"
    text.write_text("\n".join(make_sentences(6)) + "\n")
    assert_one_line_error(_run(["eval", str(teacher), "--data", str(text)]), "--reference")
    assert_one_line_error(_run(["eval", str(tmp_path / "missing-model"), "--data", str(text)]), "not found")
    cls_teacher, _ = models["classification"]
    three = _csv(tmp_path / "three.csv", [0, 1, 2, 0, 1, 2])
    assert_one_line_error(_run(["eval", str(cls_teacher), "--data", str(three)]), "labels")
    _, cls_student = models["classification"]
    assert_one_line_error(_run(["eval", str(cls_student), "--data", str(text), "--reference", str(teacher)]), "like with like")
    assert_one_line_error(_run(["eval", str(student), "--data", str(text), "--device", "tpu"]), "unknown --device 'tpu'")
    if not torch.cuda.is_available():
        assert_one_line_error(_run(["eval", str(student), "--data", str(text), "--device", "cuda"]), "no CUDA GPU")


def test_eval_names_its_data_and_warns_on_training_data(models, tmp_path, caplog):
    """Without --data eval scores the shipped corpus and says so; data the model was searched or
    distilled on is scored with a warning that it is not held out."""
    from prunekit.data import data_key

    teacher, student = models["embedding"]
    report = evaluate(EvalSettings([str(student)], data=None, max_examples=8))
    assert list(report["models"][0]["results"]) == ["corpus"]
    text = tmp_path / "t.txt"
    text.write_text("\n".join(make_sentences(12, seed=3)) + "\n")
    caplog.clear()
    evaluate(EvalSettings([str(student)], data=str(text)))
    assert "not on held-out data" not in caplog.text
    arch = json.loads((student / "architecture.json").read_text())
    try:
        (student / "architecture.json").write_text(json.dumps({**arch, "data_source": data_key(str(text))}))
        evaluate(EvalSettings([str(student)], data=str(text)))
        assert f"{student} was searched or distilled on {text}: these scores are not on held-out data" in caplog.text
        caplog.clear()
        (student / "architecture.json").write_text(json.dumps({**arch, "data_source": "corpus"}))
        evaluate(EvalSettings([str(student)], data=None, max_examples=8))
        assert "was searched or distilled on the shipped corpus" in caplog.text
    finally:
        (student / "architecture.json").write_text(json.dumps(arch))
