"""Labels in a model's terms: class ids matched by name with config.id2label, in eval, distill,
the search's head importance and the exported file, and MNLI's splits."""
from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from factory import assert_one_line_error, make_tiny_model
from prunekit.cli import cli
from prunekit.data import GLUE_TASKS, TextDataset, align_labels, load_data, model_label_names
from prunekit.distill import _align
from prunekit.errors import PrunekitError
from prunekit.metrics import compute_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

MNLI_MODEL_ORDER = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}  # roberta-large-mnli's order


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _ds(labels, task) -> TextDataset:
    return TextDataset([f"t{i}" for i in range(len(labels))], None, list(labels), task, "test data")


# ------------------------------------------------------------------------------ align_labels


def test_model_label_names_ignores_default_names():
    assert model_label_names({0: "LABEL_0", 1: "LABEL_1"}, 2) is None
    assert model_label_names({"0": "0", "1": "1"}, 2) is None
    assert model_label_names(MNLI_MODEL_ORDER, 3) == ("CONTRADICTION", "NEUTRAL", "ENTAILMENT")
    assert model_label_names({0: "neg"}, 2) is None  # a class without a name: no names at all


def test_glue_ids_follow_the_models_order_by_name():
    mnli = GLUE_TASKS["mnli"]  # entailment=0, neutral=1, contradiction=2
    out = align_labels(_ds([0, 1, 2, 0], mnli), "classification", MNLI_MODEL_ORDER, 3)
    assert out.labels == [2, 1, 0, 2] and out.task.label_names == ("CONTRADICTION", "NEUTRAL", "ENTAILMENT")
    assert out.task.name == "mnli" and out.task.metrics == mnli.metrics
    # the model always says its id 2 (entailment): right on the entailment rows only
    logits = torch.tensor([[0.0, 0.0, 5.0]] * 4)
    assert compute_metrics(out.task, logits, out.labels)["accuracy"] == pytest.approx(0.5)
    same = _ds([0, 1], mnli)
    assert align_labels(same, "classification", {0: "entailment", 1: "neutral", 2: "contradiction"}, 3) is same


def test_binary_f1_scores_the_positive_class_in_the_models_order():
    mrpc = GLUE_TASKS["mrpc"]  # not_equivalent=0, equivalent=1; F1 of "equivalent"
    ds = _ds([1, 1, 1, 0], mrpc)
    out = align_labels(ds, "classification", {0: "equivalent", 1: "not_equivalent"}, 2)
    assert out.labels == [0, 0, 0, 1] and out.task.positive == 0
    always_equivalent = torch.tensor([[5.0, 0.0]] * 4)  # the model's id 0
    m = compute_metrics(out.task, always_equivalent, out.labels)
    assert m["accuracy"] == pytest.approx(0.75) and m["f1"] == pytest.approx(2 * 0.75 / 1.75)


def test_class_id_labels_keep_their_ids(tmp_path):
    binary_slice = load_data(_write(tmp_path / "a.csv", ["text,label", "x,0", "y,1"]))
    out = align_labels(binary_slice, "classification", None, 3)  # a dev slice of a 3-class task
    assert out.labels == [0, 1] and out.task.num_labels == 3
    gap = load_data(_write(tmp_path / "b.csv", ["text,label", "x,0", "y,2", "z,2"]))
    assert gap.labels == [0, 1, 1]  # read as sorted ids; the model's ids are the written ones
    assert align_labels(gap, "classification", MNLI_MODEL_ORDER, 3).labels == [0, 2, 2]
    with pytest.raises(PrunekitError, match=r"class id 2 .* 2 classes \(ids 0\.\.1\)"):
        align_labels(gap, "classification", None, 2)


def test_custom_names_match_case_and_separators(tmp_path):
    ds = load_data(_write(tmp_path / "nli.csv", ["premise,hypothesis,label", "a,b,entailment", "c,d,Not Entailment"]))
    assert ds.task.label_names == ("Not Entailment", "entailment") and ds.pairs == ["b", "d"]
    out = align_labels(ds, "classification", {0: "ENTAILMENT", 1: "not_entailment"}, 2)
    assert out.labels == [0, 1] and out.task.positive == 1


def test_unknown_name_is_an_error_and_no_common_name_a_warning(tmp_path, caplog):
    ds = load_data(_write(tmp_path / "s.csv", ["text,label", "x,pos", "y,neg", "z,meh"]))
    with pytest.raises(PrunekitError, match=r"'meh' that the model does not have: its classes are neg, pos, neutral"):
        align_labels(ds, "classification", {0: "neg", 1: "pos", 2: "neutral"}, 3)
    with caplog.at_level(logging.WARNING, logger="prunekit.data"):
        out = align_labels(ds, "classification", None, 3)
    assert out is ds and "sorted order (meh=0, neg=1, pos=2)" in caplog.text
    with pytest.raises(PrunekitError, match="3 classes .* the model predicts 2"):
        align_labels(ds, "classification", None, 2)


def test_numbers_as_the_models_class_names(tmp_path):
    stars = load_data(_write(tmp_path / "stars.csv", ["text,label", "a,4", "b,4", "c,1"]))
    digits = {0: "1", 1: "2", 2: "3", 3: "4", 4: "5"}  # a rating model whose classes are named "1".."5"
    assert align_labels(stars, "classification", digits, 5).labels == [3, 3, 0]
    assert align_labels(stars, "classification", None, 5).labels == [4, 4, 1]  # no names: ids as written
    one_based = load_data(_write(tmp_path / "all5.csv", ["text,label"] + [f"t{i},{i}" for i in range(1, 6)]))
    with pytest.raises(PrunekitError, match="class id 5 .* look 1-based: subtract 1"):
        align_labels(one_based, "classification", None, 5)
    many = load_data(_write(tmp_path / "many.csv", ["text,label"] + [f"t{i},LABEL_{i}" for i in range(12)]))
    assert align_labels(many, "classification", None, 12).labels == list(range(12))  # not LABEL_10=2 (sorted)


def test_whole_number_scores_for_a_regression_model(tmp_path):
    ds = load_data(_write(tmp_path / "sts.csv", ["sentence1,sentence2,score", "a,b,5", "c,d,0", "e,f,3"]),
                   label_column="score")
    assert ds.task.kind == "classification"  # on its own the file looks like classes
    out = align_labels(ds, "regression", None, 1)
    assert out.task.kind == "regression" and out.labels == [5.0, 0.0, 3.0]


def test_distill_numbers_dev_like_train_without_model_names(tmp_path):
    cfg = types.SimpleNamespace(id2label={0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    train = load_data(_write(tmp_path / "tr.csv", ["text,label", "a,neg", "b,neu", "c,pos"]))
    dev = load_data(_write(tmp_path / "dv.csv", ["text,label", "a,neg", "b,pos", "c,pos"]))
    assert dev.labels == [0, 1, 1]  # on its own: neg=0, pos=1
    _, dv = _align(train, dev, "classification", cfg, 3)
    assert dv.labels == [0, 2, 2]  # train's numbering: pos=2
    typo = load_data(_write(tmp_path / "typo.csv", ["text,label", "a,neg", "b,positive"]))
    with pytest.raises(PrunekitError, match="'positive' that the training data does not have: its classes are neg, neu, pos;"):
        _align(train, typo, "classification", cfg, 3)
    ids_train = load_data(_write(tmp_path / "ids_tr.csv", ["text,label", "a,0", "b,2"]))
    ids_dev = load_data(_write(tmp_path / "ids_dv.csv", ["text,label", "a,2", "b,2"]))
    tr, dv = _align(ids_train, ids_dev, "classification", cfg, 3)
    assert tr.labels == [0, 2] and dv.labels == [2, 2]  # ids as written on both sides


# ------------------------------------------------------------------------------ eval end to end


@pytest.fixture(scope="module")
def mnli_model(tmp_path_factory):
    """A 3-class model in roberta-large-mnli's label order that always predicts ENTAILMENT."""
    d = make_tiny_model(tmp_path_factory.mktemp("labels") / "m", kind="classification", num_labels=3)
    cfg = json.loads((d / "config.json").read_text())
    cfg["id2label"] = {str(k): v for k, v in MNLI_MODEL_ORDER.items()}
    cfg["label2id"] = {v: k for k, v in MNLI_MODEL_ORDER.items()}
    (d / "config.json").write_text(json.dumps(cfg))
    sd = load_file(d / "model.safetensors")
    sd["classifier.weight"].zero_()
    sd["classifier.bias"].copy_(torch.tensor([0.0, 0.0, 5.0]))
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    return d


def _mnli_file(path: Path, labels: list[str]) -> Path:
    head = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t" \
           "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
    rows = [f"{i}\t1\t{i}e\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tthe cat sat {i}\ta cat sat\t{g}\t{g}"
            for i, g in enumerate(labels)]
    return _write(path, [head] + rows)


def test_eval_scores_mnli_in_the_models_label_order(mnli_model, tmp_path):
    glue = tmp_path / "glue"
    _mnli_file(glue / "MNLI" / "dev_matched.tsv", ["entailment"] * 3 + ["neutral"])
    _mnli_file(glue / "MNLI" / "dev_mismatched.tsv", ["contradiction", "entailment"])
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["eval", str(mnli_model), "--data", "mnli", "--glue-dir", str(glue), "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())["models"][0]["results"]
    assert res["dev_matched"]["metrics"]["accuracy"] == pytest.approx(0.75)
    assert res["dev_mismatched"]["metrics"]["accuracy"] == pytest.approx(0.5)
    # one MNLI file is one split (not the same file scored twice as matched and mismatched)
    r = CliRunner().invoke(cli, ["eval", str(mnli_model), "--data", str(glue / "MNLI" / "dev_mismatched.tsv"),
                                 "--json", str(out), "--force"])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["splits"] == ["dev"] and report["models"][0]["results"]["dev"]["examples"] == 2
    # mnli-mm (as the task name, or as --task for the folder) is the mismatched dev set alone
    for args in (["--data", "mnli-mm", "--glue-dir", str(glue)], ["--data", str(glue / "MNLI"), "--task", "mnli-mm"]):
        r = CliRunner().invoke(cli, ["eval", str(mnli_model), *args, "--json", str(out), "--force"])
        assert r.exit_code == 0, r.output
        report = json.loads(out.read_text())
        assert report["splits"] == ["dev"] and report["models"][0]["results"]["dev"]["examples"] == 2
    # --task mnli-mm picks the mismatched file from a task folder too
    assert load_data(glue / "MNLI", "dev", task="mnli-mm").texts == load_data(glue / "MNLI" / "dev_mismatched.tsv").texts
    assert load_data("mnli", "dev", task="mnli-mm", glue_dir=glue).labels == [2, 0]


def test_eval_names_a_label_the_model_lacks(mnli_model, tmp_path):
    p = _write(tmp_path / "nli.csv", ["text,label", "a,entailment", "b,maybe"])
    assert_one_line_error(CliRunner().invoke(cli, ["eval", str(mnli_model), "--data", str(p)]), "'maybe' that the model does not have")


# ------------------------------------------------------------------------------ search, export, a partial MNLI folder
def test_search_head_importance_reads_labels_in_the_models_ids(mnli_model, tmp_path, monkeypatch):
    from prunekit import baselines
    from prunekit.search import SearchSettings, search

    seen = []
    real = baselines.head_importance_scores

    def spy(teacher, data, settings, device):
        seen.extend(data.labels.tolist() if hasattr(data.labels, "tolist") else list(data.labels))
        return real(teacher, data, settings, device)

    monkeypatch.setattr(baselines, "head_importance_scores", spy)
    p = _write(tmp_path / "nli.csv", ["sentence1,sentence2,label", "a,b,entailment", "c,d,contradiction", "e,f,neutral"])
    search(SearchSettings(model=str(mnli_model), data=str(p), task="mnli", method="head-importance", target=0.5,
                          output_dir=str(tmp_path / "hi"), max_length=16), force=True, progress=False)
    assert seen == [2, 0, 1]  # ENTAILMENT is the model's id 2


def test_exported_file_keeps_the_class_names(mnli_model, tmp_path):
    onnx_path = tmp_path / "m.onnx"
    r = CliRunner().invoke(cli, ["export-onnx", str(mnli_model), "-o", str(onnx_path)])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "m.onnx.json").read_text())["id2label"] == {str(k): v for k, v in MNLI_MODEL_ORDER.items()}
    p = _mnli_file(tmp_path / "MNLI" / "dev_matched.tsv", ["entailment"] * 3 + ["neutral"])
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["eval", str(onnx_path), "--data", str(p), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["models"][0]["results"]["dev"]["metrics"]["accuracy"] == pytest.approx(0.75)
    # a report from before the field: the names come from the model dir it names, while it exists
    report = json.loads((tmp_path / "m.onnx.json").read_text())
    del report["id2label"]
    (tmp_path / "m.onnx.json").write_text(json.dumps(report))
    r = CliRunner().invoke(cli, ["eval", str(onnx_path), "--data", str(p), "--json", str(out), "--force"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["models"][0]["results"]["dev"]["metrics"]["accuracy"] == pytest.approx(0.75)


def test_mnli_folder_without_its_mismatched_file(mnli_model, tmp_path, caplog):
    _mnli_file(tmp_path / "MNLI" / "dev_matched.tsv", ["entailment", "neutral"])
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["eval", str(mnli_model), "--data", str(tmp_path / "MNLI"), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["splits"] == ["dev_matched"] and "dev_matched set alone" in caplog.text
