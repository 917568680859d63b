"""prunekit.data: GLUE folders in the download script's layout, table/text files, the shipped corpus."""
import json
import sys
import types
from pathlib import Path

import pytest

from prunekit.data import (
    GLUE_TASKS,
    TaskSpec,
    TextDataset,
    default_corpus_path,
    get_task,
    load_data,
)
from prunekit.errors import PrunekitError

MNLI_TRAIN_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)
MNLI_DEV_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
)


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    return path


def _mnli_row(i: int, s1: str, s2: str, labels: list[str]) -> str:
    return "\t".join([str(i), "1", f"{i}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", s1, s2, *labels])


@pytest.fixture
def glue_dir(tmp_path: Path) -> Path:
    root = tmp_path / "glue_data"
    # SST-2: header "sentence\tlabel"; the test split has "index\tsentence" and no labels.
    _write(root / "SST-2" / "train.tsv", [
        "sentence\tlabel",
        "a gorgeous , witty , seductive movie .\t1",
        '"Hello," she said , and the film never recovers .\t0',
        "the acting is strong\t1",
    ])
    _write(root / "SST-2" / "dev.tsv", ["sentence\tlabel", "it 's a charming journey .\t1", "dull and lifeless\t0"])
    _write(root / "SST-2" / "test.tsv", ["index\tsentence", "0\tuneasy mishmash of styles", "1\ta sweet film"])
    # CoLA: train/dev have no header (source, label, original judgement, sentence).
    _write(root / "CoLA" / "train.tsv", [
        "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.",
        "gj04\t0\t*\tThey drank the pub.",
        "clc95\t1\t\tThe sailors rode the breeze clear of the rocks.",
    ])
    _write(root / "CoLA" / "dev.tsv", ["gj04\t0\t*\tThe more we study verbs, the crazier they get get.",
                                      "gj04\t1\t\tDay by day the facts are getting murkier."])
    _write(root / "CoLA" / "test.tsv", ["index\tsentence", "0\tBill whistled past the house."])
    # MNLI: many columns; the label is gold_label; two dev files. "-" marks no majority label.
    _write(root / "MNLI" / "train.tsv", [
        MNLI_TRAIN_HEADER,
        _mnli_row(0, "The cat sat.", "A cat sat.", ["entailment", "entailment"]),
        _mnli_row(1, "He is tall.", "He is short.", ["contradiction", "contradiction"]),
        _mnli_row(2, "It rained.", "It was Monday.", ["neutral", "neutral"]),
    ])
    _write(root / "MNLI" / "dev_matched.tsv", [
        MNLI_DEV_HEADER,
        _mnli_row(0, "matched premise one", "hyp one", ["neutral"] * 6),
        _mnli_row(1, "matched premise two", "hyp two", ["entailment"] * 5 + ["-"]),
        _mnli_row(2, "matched premise three", "hyp three", ["contradiction"] * 6),
    ])
    _write(root / "MNLI" / "dev_mismatched.tsv", [
        MNLI_DEV_HEADER,
        _mnli_row(0, "mismatched premise", "hyp", ["contradiction"] * 6),
    ])
    # STS-B: regression score in the last column.
    _write(root / "STS-B" / "dev.tsv", [
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
        "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\tA man wearing a hard hat is dancing.\t5.000",
        "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA young child is riding a horse.\tA child is riding a horse.\t4.750",
        "2\tmain-captions\tMSRvid\t2012test\t0003\tnone\tnone\tA man is feeding a mouse to a snake.\tThe man is feeding a mouse to the snake.\t5.000",
    ])
    # MRPC: Quality, #1 ID, #2 ID, #1 String, #2 String.
    _write(root / "MRPC" / "train.tsv", [
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        '1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " .\tReferring to him as only " the witness " , Amrozi accused his brother .',
        "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain to Safeway in 1998 .\tYucaipa bought Dominick 's in 1995 .",
    ])
    # QQP: a broken row (too few fields) is skipped, as the reference loaders do.
    _write(root / "QQP" / "train.tsv", [
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        "0\t1\t2\tWhat is the step by step guide to invest in share market?\tWhat is the step by step guide to invest in share market in india?\t0",
        "1\t3\t4\tHow do I read and find my YouTube comments?",
        "2\t5\t6\tHow can I be a good geologist?\tWhat should I do to be a great geologist?\t1",
    ])
    return root


# ------------------------------------------------------------------------------ GLUE folders


def test_sst2_train_dev_test(glue_dir):
    train = load_data("sst2", "train", glue_dir=glue_dir)
    assert train.task is GLUE_TASKS["sst2"]
    assert train.texts[1] == '"Hello," she said , and the film never recovers .'  # quotes are text in GLUE
    assert train.labels == [1, 0, 1] and train.pairs is None
    dev = load_data("SST-2", "validation", glue_dir=glue_dir)
    assert dev.texts == ["it 's a charming journey .", "dull and lifeless"] and dev.labels == [1, 0]
    test = load_data("sst-2", "test", glue_dir=glue_dir)
    assert test.texts == ["uneasy mishmash of styles", "a sweet film"] and test.labels is None


def test_cola_headerless_train_and_headed_test(glue_dir):
    train = load_data("CoLA", glue_dir=glue_dir)
    assert len(train) == 3 and train.labels == [1, 0, 1]
    assert train.texts[1] == "They drank the pub."
    assert train.task.metrics == ("mcc",)
    test = load_data("cola", "test", glue_dir=glue_dir)
    assert test.texts == ["Bill whistled past the house."] and test.labels is None


def test_mnli_label_ids_and_matched_mismatched(glue_dir):
    train = load_data("mnli", glue_dir=glue_dir)
    # Ids of the Hugging Face glue dataset: entailment=0, neutral=1, contradiction=2.
    assert train.task.label_names == ("entailment", "neutral", "contradiction")
    assert train.labels == [0, 2, 1]
    assert train.pairs == ["A cat sat.", "He is short.", "It was Monday."]
    dev = load_data("mnli", "dev", glue_dir=glue_dir)  # dev = dev_matched; the "-" row is dropped
    assert dev.texts == ["matched premise one", "matched premise three"] and dev.labels == [1, 2]
    assert load_data("mnli", "dev_mismatched", glue_dir=glue_dir).texts == ["mismatched premise"]
    assert load_data("mnli-mm", "dev", glue_dir=glue_dir).texts == ["mismatched premise"]
    assert load_data("MNLI", "validation_matched", glue_dir=glue_dir).texts == dev.texts


def test_stsb_is_regression(glue_dir):
    dev = load_data("sts-b", "dev", glue_dir=glue_dir)
    assert dev.task.kind == "regression" and dev.task.num_labels == 1
    assert dev.labels == [5.0, 4.75, 5.0]
    assert dev.pairs[1] == "A child is riding a horse."


def test_mrpc_pairs_and_qqp_broken_row(glue_dir):
    mrpc = load_data("mrpc", glue_dir=glue_dir)
    assert mrpc.labels == [1, 0] and mrpc.texts[0].startswith("Amrozi") and mrpc.pairs[1].startswith("Yucaipa bought")
    assert mrpc.task.metrics == ("f1", "accuracy")
    qqp = load_data("qqp", glue_dir=glue_dir)
    assert len(qqp) == 2 and qqp.labels == [0, 1]


def test_task_folder_path_and_glue_dir_env(glue_dir, monkeypatch):
    ds = load_data(glue_dir / "SST-2", "dev")
    assert ds.task.name == "sst2" and ds.labels == [1, 0]
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    assert load_data("cola", "dev").labels == [0, 1]
    # A folder with a task's files but another name: --task says which task it is.
    assert load_data(glue_dir, "dev", task="sst2").labels == [1, 0]


def test_glue_max_examples(glue_dir):
    ds = load_data("mnli", glue_dir=glue_dir, max_examples=2)
    assert ds.texts == ["The cat sat.", "He is tall."] and ds.labels == [0, 2]


def test_glue_errors(glue_dir, tmp_path, monkeypatch):
    with pytest.raises(PrunekitError, match=r"unknown GLUE task 'sst3'.*cola, sst2"):
        get_task("sst3")
    with pytest.raises(PrunekitError, match=r"neither a file nor a GLUE task; valid task names are cola"):
        load_data("sst3")
    with pytest.raises(PrunekitError, match=r"no test.tsv in .*STS-B.*dev.tsv"):
        load_data("stsb", "test", glue_dir=glue_dir)
    with pytest.raises(PrunekitError, match=r"unknown split 'eval'"):
        load_data("sst2", "eval", glue_dir=glue_dir)
    with pytest.raises(PrunekitError, match=r"unknown MNLI split"):
        load_data("mnli", "dev_other", glue_dir=glue_dir)
    with pytest.raises(PrunekitError, match=r"no RTE folder in"):
        load_data("rte", glue_dir=glue_dir)
    with pytest.raises(PrunekitError, match=r"GLUE folder not found"):
        load_data("rte", glue_dir=tmp_path / "nowhere")
    with pytest.raises(PrunekitError, match=r"holds GLUE sst2 but --task says cola"):
        load_data(glue_dir / "SST-2", task="cola")
    # Without a local folder and without `datasets`: say how to get the data.
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(PrunekitError, match=r"--glue-dir.*pip install prunekit\[hub\]"):
        load_data("sst2")


class _FakeHubSplit:
    def __init__(self, columns: dict):
        self._c = columns
        self.column_names = list(columns)

    def __len__(self):
        return len(next(iter(self._c.values())))

    def __getitem__(self, name):
        return self._c[name]

    def select(self, idx):
        idx = list(idx)
        return _FakeHubSplit({k: [v[i] for i in idx] for k, v in self._c.items()})


def test_glue_through_datasets_when_no_folder(monkeypatch):
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        if split.startswith("test"):
            return _FakeHubSplit({"premise": ["p"], "hypothesis": ["h"], "label": [-1], "idx": [0]})
        return _FakeHubSplit({"premise": ["p1", "p2", "p3"], "hypothesis": ["h1", "h2", "h3"], "label": [2, 0, 1]})

    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    dev = load_data("mnli-mm", "dev", max_examples=2)
    assert calls[-1] == ("nyu-mll/glue", "mnli", "validation_mismatched")
    assert dev.texts == ["p1", "p2"] and dev.pairs == ["h1", "h2"] and dev.labels == [2, 0]
    test = load_data("mnli", "test")
    assert calls[-1][2] == "test_matched" and test.labels is None  # -1 = hidden label


# ------------------------------------------------------------------------------ files


def test_csv_string_labels_sorted_and_quoting(tmp_path):
    p = tmp_path / "reviews.csv"
    p.write_text('text,label\n"Great, really great",pos\n"Line one\nline two",neg\nmeh,neutral\n', encoding="utf-8")
    ds = load_data(p)
    assert ds.texts == ["Great, really great", "Line one\nline two", "meh"]
    assert ds.task.kind == "classification" and ds.task.name == "custom"
    assert ds.task.label_names == ("neg", "neutral", "pos") and ds.labels == [2, 0, 1]
    assert ds.task.metrics == ("accuracy",)


@pytest.mark.parametrize(
    "values, kind, labels, names",
    [
        (["0", "2", "1", "0"], "classification", [0, 2, 1, 0], ("0", "1", "2")),  # ids kept as given
        (["1", "1", "1"], "classification", [1, 1, 1], ("0", "1")),  # binary slice with one class
        (["1", "5", "5"], "classification", [0, 1, 1], ("1", "5")),  # not 0..K-1: sorted mapping
        (["0.5", "3.25", "1"], "regression", [0.5, 3.25, 1.0], None),
        (["1.0", "0.0", "1.0"], "classification", [1, 0, 1], ("0", "1")),  # integral floats are ids
    ],
)
def test_label_kinds(tmp_path, values, kind, labels, names):
    p = _write(tmp_path / "d.csv", ["sentence,label"] + [f"text {i},{v}" for i, v in enumerate(values)])
    ds = load_data(p)
    assert ds.task.kind == kind and ds.labels == labels and ds.task.label_names == names
    if kind == "regression":
        assert ds.task.num_labels == 1 and ds.task.metrics[0] == "spearman"


def test_tsv_plain_and_pandas_quoted(tmp_path):
    plain = _write(tmp_path / "plain.tsv", ["sentence\tlabel", '"Hello," she said.\t1', "fine\t0"])
    assert load_data(plain).texts == ['"Hello," she said.', "fine"]
    quoted = _write(tmp_path / "quoted.tsv", ["text\tlabel", '"He said ""hi"""\t1', '"tab\there"\t0'])
    assert load_data(quoted).texts == ['He said "hi"', "tab\there"]


def test_jsonl_pairs_and_default_columns(tmp_path):
    p = _write(tmp_path / "d.jsonl", [
        json.dumps({"sentence1": "A man plays.", "sentence2": "A person plays.", "label": 0.8}),
        "",
        json.dumps({"sentence1": "A dog runs.", "sentence2": "A cat sleeps.", "label": 0.1}),
    ])
    ds = load_data(p)
    assert ds.texts == ["A man plays.", "A dog runs."] and ds.pairs == ["A person plays.", "A cat sleeps."]
    assert ds.task.kind == "regression" and ds.labels == [0.8, 0.1]
    p2 = _write(tmp_path / "e.jsonl", [json.dumps({"text": "a", "text_pair": "b", "label": True}),
                                       json.dumps({"text": "c", "text_pair": "d", "label": False})])
    ds2 = load_data(p2)
    assert ds2.pairs == ["b", "d"] and ds2.task.label_names == ("False", "True") and ds2.labels == [1, 0]


def test_explicit_columns_and_first_string_column(tmp_path):
    p = _write(tmp_path / "d.csv", ["id,review,summary,stars", "1,loved it,good,5", "2,hated it,bad,1"])
    ds = load_data(p)  # no text/sentence column: the first non-numeric column
    assert ds.texts == ["loved it", "hated it"] and ds.labels is None and ds.task.kind == "unlabelled"
    ds = load_data(p, text_column="summary", pair_column="review", label_column="stars")
    assert ds.texts == ["good", "bad"] and ds.pairs == ["loved it", "hated it"]
    assert ds.task.label_names == ("1", "5") and ds.labels == [1, 0]


def test_task_forces_glue_spec(tmp_path):
    p = _write(tmp_path / "mrpc_like.tsv", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                                           "1\t1\t2\tfirst a\tfirst b", "0\t3\t4\tsecond a\tsecond b"])
    ds = load_data(p, task="mrpc")
    assert ds.task is GLUE_TASKS["mrpc"] and ds.texts == ["first a", "second a"] and ds.pairs == ["first b", "second b"]
    assert ds.labels == [1, 0]
    nli = _write(tmp_path / "nli.csv", ["premise,hypothesis,label", "p,h,contradiction", "q,k,entailment"])
    ds = load_data(nli, task="mnli")
    assert ds.texts == ["p", "q"] and ds.pairs == ["h", "k"] and ds.labels == [2, 0]
    bad = _write(tmp_path / "bad.csv", ["text,label", "x,maybe"])
    with pytest.raises(PrunekitError, match=r"line 2: label 'maybe' is not a sst2 label: use one of negative, positive"):
        load_data(bad, task="sst2")
    with pytest.raises(PrunekitError, match=r"unknown GLUE task 'movies'"):
        load_data(bad, task="movies")


def test_txt_and_max_examples(tmp_path):
    p = _write(tmp_path / "s.txt", ["First line here.", "", "   ", "Second line.", "Third\u2028with a line separator."])
    ds = load_data(p)
    assert ds.texts == ["First line here.", "Second line.", "Third\u2028with a line separator."]
    assert ds.labels is None and ds.pairs is None and ds.task.kind == "unlabelled"
    assert load_data(p, max_examples=2).texts == ds.texts[:2]
    assert load_data(p, max_examples=100).texts == ds.texts
    for bad in (0, -3, 1.5, "2"):
        with pytest.raises(PrunekitError, match="max_examples must be a positive whole number"):
            load_data(p, max_examples=bad)
    with pytest.raises(PrunekitError, match=r"\.txt file .*no columns"):
        load_data(p, label_column="label")


def test_file_errors(tmp_path):
    with pytest.raises(PrunekitError, match=r"file not found: .*missing\.csv"):
        load_data(tmp_path / "missing.csv")
    with pytest.raises(PrunekitError, match=r"unknown extension '\.parquet'"):
        load_data(_write(tmp_path / "d.parquet", ["x"]))
    with pytest.raises(PrunekitError, match=r"malformed CSV at line 3: 3 fields but the header has 2"):
        load_data(_write(tmp_path / "a.csv", ["text,label", "ok,1", "too,many,2"]))
    with pytest.raises(PrunekitError, match=r"malformed CSV at line 3"):
        load_data(_write(tmp_path / "q.csv", ["text,label", "ok,1", '"bad" quote,1']))
    with pytest.raises(PrunekitError, match=r"malformed JSONL at line 2: Expecting"):
        load_data(_write(tmp_path / "b.jsonl", ['{"text": "ok"}', '{"text": broken}']))
    with pytest.raises(PrunekitError, match=r"malformed JSONL at line 1: a list, not an object"):
        load_data(_write(tmp_path / "c.jsonl", ['["text"]']))
    with pytest.raises(PrunekitError, match=r"no label column 'gold'; its columns are 'text', 'label'"):
        load_data(_write(tmp_path / "d.csv", ["text,label", "ok,1"]), label_column="gold")
    with pytest.raises(PrunekitError, match=r"no text column 'body'; its columns are 'text', 'label'"):
        load_data(tmp_path / "d.csv", text_column="body")
    with pytest.raises(PrunekitError, match=r"header but no rows"):
        load_data(_write(tmp_path / "e.csv", ["text,label"]))
    with pytest.raises(PrunekitError, match=r"is empty"):
        load_data(_write(tmp_path / "f.csv", []))
    with pytest.raises(PrunekitError, match=r"no examples in"):
        load_data(_write(tmp_path / "g.txt", ["", "  "]))
    latin1 = tmp_path / "h.csv"
    latin1.write_bytes("text,label\nok,1\ncaf\u00e9,0\n".encode("latin-1"))
    with pytest.raises(PrunekitError, match=r"not UTF-8 text \(bad byte at line 3\); re-save it as UTF-8"):
        load_data(latin1)
    with pytest.raises(PrunekitError, match=r"line 3 has no value in label column 'label'"):
        load_data(_write(tmp_path / "i.csv", ["text,label", "a,1", "b,", "c,0"]))
    with pytest.raises(PrunekitError, match=r"line 2 has no text in column 'text'"):
        load_data(_write(tmp_path / "j.jsonl", ['{"text": "a", "label": 1}', '{"label": 0}']))
    with pytest.raises(PrunekitError, match=r"holds one value only \('spam'\)"):
        load_data(_write(tmp_path / "k.csv", ["text,label", "a,spam", "b,spam"]))
    with pytest.raises(PrunekitError, match=r"not a GLUE task folder"):
        load_data(tmp_path)


def test_bom_and_crlf(tmp_path):
    p = tmp_path / "w.csv"
    p.write_bytes("\ufefftext,label\r\nhello,a\r\nworld,b\r\n".encode("utf-8"))
    ds = load_data(p)
    assert ds.texts == ["hello", "world"] and ds.task.label_names == ("a", "b")


# ------------------------------------------------------------------------------ TextDataset


def _toy(n: int) -> TextDataset:
    spec = TaskSpec("custom", "classification", 2, ("0", "1"), ("accuracy", "f1"))
    return TextDataset([f"t{i}" for i in range(n)], [f"p{i}" for i in range(n)], [i % 2 for i in range(n)], spec, "toy")


def test_subset_and_split_are_deterministic():
    ds = _toy(100)
    sub = ds.subset([5, 2])
    assert sub.texts == ["t5", "t2"] and sub.pairs == ["p5", "p2"] and sub.labels == [1, 0] and sub.task is ds.task
    a, b = ds.split(0.2, seed=0)
    assert len(a) == 20 and len(b) == 80
    assert sorted(a.texts + b.texts, key=lambda t: int(t[1:])) == ds.texts  # a partition
    assert a.texts == sorted(a.texts, key=lambda t: int(t[1:]))  # each part keeps the original order
    for x, y in zip(a.texts, a.pairs):
        assert x[1:] == y[1:]  # texts, pairs and labels stay aligned
    a2, _ = ds.split(0.2, seed=0)
    a3, _ = ds.split(0.2, seed=1)
    assert a2.texts == a.texts and a3.texts != a.texts
    tiny_a, tiny_b = _toy(3).split(0.01, seed=0)
    assert len(tiny_a) == 1 and len(tiny_b) == 2  # both parts non-empty
    with pytest.raises(PrunekitError, match="between 0 and 1"):
        ds.split(1.0, seed=0)
    with pytest.raises(PrunekitError, match="cannot split 1 example"):
        _toy(1).split(0.5, seed=0)


# ------------------------------------------------------------------------------ shipped corpus


def test_shipped_corpus():
    path = default_corpus_path()
    assert path.is_file() and path.stat().st_size < 600_000
    ds = load_data(None)
    assert len(ds) > 2000 and ds.task.kind == "unlabelled" and ds.labels is None
    assert len(set(ds.texts)) == len(ds.texts)
    assert all(6 <= len(t.split()) <= 40 and ">>>" not in t for t in ds.texts)
    assert load_data(None, max_examples=10).texts == ds.texts[:10]
    with pytest.raises(PrunekitError, match="unlabelled"):
        load_data(None, task="sst2")


def test_split_file_inside_glue_folder_reads_as_glue(glue_dir):
    cola = load_data(glue_dir / "CoLA" / "train.tsv")  # headerless: the GLUE layout, not a generic TSV
    assert cola.task is GLUE_TASKS["cola"] and cola.labels == [1, 0, 1] and len(cola) == 3
    mm = load_data(glue_dir / "MNLI" / "dev_mismatched.tsv")
    assert mm.texts == ["mismatched premise"] and mm.labels == [2]
    # Naming columns makes it a plain table file again.
    sst = load_data(glue_dir / "SST-2" / "dev.tsv", text_column="sentence", label_column="label")
    assert sst.task.name == "custom" and sst.labels == [1, 0]


# ------------------------------------------------------------------------------------------------
# Column and quoting rules: GLUE-style TSV, CSV-quoted TSV, long fields, hub-style pair columns, empty cells.
def test_tsv_quotes_are_text_glue_style(tmp_path):
    p = _write(tmp_path / "q.tsv", ["text\tlabel", '"This movie is great.\t1', "The plot drags.\t0",
                                    'I loved it anyway."\t1', '"the bird sleeps"\t0'])
    ds = load_data(p)
    assert ds.texts == ['"This movie is great.', "The plot drags.", 'I loved it anyway."', '"the bird sleeps"']
    assert ds.labels == [1, 0, 1, 0]
    # a field holding a tab or a newline needs CSV quoting, which is read when the lines do not split evenly
    q = _write(tmp_path / "pandas.tsv", ["text\tlabel", '"line one\nline two"\t1', '"tab\there"\t0'])
    assert load_data(q).texts == ["line one\nline two", "tab\there"]
    bad = _write(tmp_path / "bad.tsv", ["text\tlabel", "a\tb\tc", "d\t0"])
    with pytest.raises(PrunekitError, match=r"malformed TSV at line 2: 3 fields but the header has 2"):
        load_data(bad)


def test_tsv_written_with_csv_quoting(tmp_path):
    import csv

    rows = [("He said \"great movie\" twice", 1), ("plain text", 0), ("tab\tinside", 1)]
    for name, quoting in (("pandas.tsv", csv.QUOTE_MINIMAL), ("r.tsv", csv.QUOTE_NONNUMERIC)):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t", quoting=quoting)
            w.writerow(["text", "label"])
            w.writerows(rows if name == "r.tsv" else rows[:2])  # without a tab, lines split evenly either way
        ds = load_data(tmp_path / name)
        assert ds.texts == [t for t, _ in (rows if name == "r.tsv" else rows[:2])] and ds.labels is not None


def test_long_csv_field(tmp_path):
    long = "word " * 40_000  # 200 KB, over the csv module's default field limit
    p = tmp_path / "long.csv"
    p.write_text(f'text,label\n"{long}",1\nshort,0\n', encoding="utf-8")
    assert load_data(p).texts[0] == long


@pytest.mark.parametrize("cols, text, pair", [
    (("premise", "hypothesis"), "premise", "hypothesis"),
    (("question1", "question2"), "question1", "question2"),
    (("question", "sentence"), "question", "sentence"),
    (("idx", "sentence1", "sentence2"), "sentence1", "sentence2"),
])
def test_hub_pair_columns(tmp_path, cols, text, pair):
    rows = [{c: f"{c} {i}" for c in cols} | {"label": i % 2} for i in range(4)]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    ds = load_data(p)
    assert ds.texts[0] == f"{text} 0" and ds.pairs is not None and ds.pairs[0] == f"{pair} 0"
    # naming the text column takes its partner
    assert load_data(p, text_column=text).pairs[0] == f"{pair} 0"
    # a one-sentence task takes no pair by name
    if "sentence" in cols:
        assert load_data(p, task="sst2").pairs is None


def test_hub_stsb_test_labels_are_hidden(monkeypatch):
    class Split(dict):
        column_names = property(lambda self: list(self))

    def load_dataset(path, name, split):
        return Split(sentence1=["a", "b"], sentence2=["c", "d"], label=[-1.0, -1.0], idx=[0, 1])

    Split.__len__ = lambda self: 2
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_data("stsb", "test").labels is None


def test_empty_text_cell_is_an_error(tmp_path):
    p = _write(tmp_path / "e.csv", ["text,text_pair,label", "a,b,1", ",c,0"])
    with pytest.raises(PrunekitError, match="line 3 has no text in column 'text'"):
        load_data(p)
    q = _write(tmp_path / "p.tsv", ["text\ttext_pair\tlabel", "a\t \t1"])
    with pytest.raises(PrunekitError, match="line 2 has no pair text in column 'text_pair'"):
        load_data(q)
