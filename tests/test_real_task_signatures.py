"""benchmarks/real_tasks' two-segment task `signatures` (issue 16's third task): a docstring paired with
its own function's signature and with another function's of the same module, split so that both rows
of a docstring land in one split; the TF-IDF baseline's pair features; the task files' reader."""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "benchmarks" / "real_tasks"
sys.path.insert(0, str(TASKS))  # their own imports of each other (troff, task_files)


def _load(name: str):
    """A script of benchmarks/real_tasks under a name of its own (``build`` is also pypa's package)."""
    spec = importlib.util.spec_from_file_location(f"real_tasks_{name}", TASKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build, task_files = _load("build"), _load("task_files")

MOD_A = '''
def read_file(path, *, encoding="utf-8"):
    """Read the whole file at path and return its text decoded with the encoding."""

def write_file(path, data, *chunks, **options):
    """Write data and any further chunks to the file at path, replacing what it held."""

class Stream:
    def close(self):
        """Close the stream and release every buffer that it still holds."""

    def flush(self):
        """Write out whatever the stream buffered so far to the underlying file."""

def _private(x):
    """A private helper that the task leaves out whatever its docstring says."""

def same_doc_one(x):
    """This exact docstring text is found under two different signatures here."""

def same_doc_two(y):
    """This exact docstring text is found under two different signatures here."""
'''
MOD_B = '''
def lonely(a):
    """The only function of its module, so it has no other signature to pair with."""
'''


@pytest.fixture
def sources(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text(MOD_A)
    (tmp_path / "b.py").write_text(MOD_B)
    monkeypatch.setattr(build, "stdlib_sources", lambda: iter([("moda", tmp_path / "a.py"), ("modb", tmp_path / "b.py")]))
    return tmp_path


def test_signature_text():
    import ast

    fns = {n.name: n for n in ast.walk(ast.parse(MOD_A)) if isinstance(n, ast.FunctionDef)}
    assert build._signature(fns["read_file"]) == "read_file(path, encoding)"
    assert build._signature(fns["write_file"]) == "write_file(path, data, *chunks, **options)"
    assert build._signature(fns["close"]) == "close()"  # self is not a parameter a caller passes


def test_pairs_match_and_mismatch(sources):
    docs, info = build.signature_pairs(max_words=64, min_words=5, seed=0)
    by_doc = {d[0]: d for d in docs}
    assert info["ambiguous_texts_dropped"] == 1  # the docstring under two signatures
    assert not any("private helper" in d or "only function" in d for d in by_doc)  # _private; modb has no partner
    assert len(docs) == 4
    own = {"Read the whole": "read_file(path, encoding)", "Close the stream": "close()"}
    for doc, sig, other, module in docs:
        assert module == "moda" and other != sig and other.split("(")[0] != sig.split("(")[0]
        for start, expected in own.items():
            if doc.startswith(start):
                assert sig == expected


def test_build_pairs_keeps_a_docstrings_rows_together(sources, tmp_path):
    args = argparse.Namespace(train=4, dev=2, test=2, max_words=64, min_words=5, seed=3)
    info = build.build_pairs("signatures", tmp_path / "out", args)
    rows = {s: [json.loads(x) for x in (tmp_path / "out" / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "dev", "test")}
    assert info["sizes"] == {s: len(r) for s, r in rows.items()} and sum(info["sizes"].values()) == 8
    split_of = {}
    for split, rs in rows.items():
        for r in rs:
            assert set(r) == {"text", "text_pair", "label"}
            assert split_of.setdefault(r["text"], split) == split  # both rows of a docstring in one split
    for rs in rows.values():  # each docstring once with its own signature, once with another's
        for text in {r["text"] for r in rs}:
            assert sorted(r["label"] for r in rs if r["text"] == text) == ["match", "mismatch"]
    texts, labels, pairs = task_files.read_jsonl(tmp_path / "out" / "train.jsonl")
    assert len(texts) == len(labels) == len(pairs) == 4


def test_read_jsonl_single_segment(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"text": "a b", "label": "x"}\n{"text": "c d", "label": "y"}\n')
    assert task_files.read_jsonl(p) == (["a b", "c d"], ["x", "y"], None)
    p.write_text('{"text": "a b", "text_pair": "f()", "label": "x"}\n{"text": "c d", "label": "y"}\n')
    with pytest.raises(SystemExit, match="some rows have a text_pair"):
        task_files.read_jsonl(p)


def test_tfidf_pair_features():
    tfidf = _load("tfidf")
    assert tfidf.identifier_words("get_exec_path(env) getExecPath") == ["get", "exec", "path", "env", "get", "exec", "path"]
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(tokenizer=tfidf.identifier_words, lowercase=False, token_pattern=None).fit(
        ["read the file", "read_file(path)", "close the stream", "close()"])
    f = tfidf.pair_features(vec, ["read the file", "close the stream"], ["read_file(path)", "read_file(path)"])
    v = len(vec.vocabulary_)
    assert f.shape == (2, 3 * v + 1)
    shared = f[:, 3 * v].toarray().ravel()  # the cosine of the two segments: 'read' and 'file' shared only in row 0
    assert shared[0] > 0 and shared[1] == 0
