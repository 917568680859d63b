"""benchmarks/real_tasks' two-segment task `signatures` (issue 16's third task): a docstring paired with
its own function's signature and with another function's of the same module, split so that both rows
of a docstring land in one split; the TF-IDF baseline's pair features; the task files' reader."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from factory import assert_pair_rows, load_real_task_script

TASKS = Path(__file__).resolve().parents[1] / "benchmarks" / "real_tasks"


build, task_files = load_real_task_script("build"), load_real_task_script("task_files")

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
# the same docstring and signature in two modules (as keys() of collections and _collections_abc)
MOD_C = '''
def shared(a):
    """A function defined with this very docstring in two different modules."""

def other(b):
    """Some other function of the module that the shared one can be paired with."""
'''


@pytest.fixture
def sources(tmp_path, monkeypatch):
    for name, text in (("a", MOD_A), ("b", MOD_B), ("c", MOD_C)):
        (tmp_path / f"{name}.py").write_text(text)
    walk = [("moda", tmp_path / "a.py"), ("modb", tmp_path / "b.py"), ("modz", tmp_path / "c.py"), ("modc", tmp_path / "c.py")]
    monkeypatch.setattr(build, "stdlib_sources", lambda: iter(walk))
    return tmp_path


def test_signature_text():
    import ast

    fns = {n.name: n for n in ast.walk(ast.parse(MOD_A)) if isinstance(n, ast.FunctionDef)}
    assert build._signature(fns["read_file"]) == "read_file(path, encoding)"
    assert build._signature(fns["write_file"]) == "write_file(path, data, *chunks, **options)"
    assert build._signature(fns["close"]) == "close()"  # self is not a parameter a caller passes


def test_docs_and_pairs(sources):
    docs, info = build.signature_docs(max_words=64, min_words=5)
    assert info["ambiguous_texts_dropped"] == 1  # the docstring under two signatures
    texts = [d[0] for d in docs]
    assert not any("private helper" in t for t in texts)  # _private
    assert len(texts) == len(set(texts)) == 7
    shared = next(d for d in docs if d[1] == "shared(a)")
    assert shared[2] == "modc"  # in two modules: the first by name, whatever the walk's or the hashes' order
    assert ("Read the whole file at path and return its text decoded with the encoding.", "read_file(path, encoding)", "moda") in docs
    rows, alone = build.pair_rows(docs, seed=0)
    assert alone == 1  # lonely(a): no other function in modb
    assert_pair_rows(rows, docs, lambda sig: sig.split("(")[0])  # a mismatch: another function of the same module
    assert len(rows) == 2 * (len(docs) - alone)


def test_docs_do_not_depend_on_string_hashing(sources):
    """The build gives the same docstrings under any PYTHONHASHSEED (sets of strings iterate in the
    process's hash order)."""
    import subprocess

    code = (f"import sys, json, importlib.util; sys.path.insert(0, {str(TASKS)!r}); "
            f"spec = importlib.util.spec_from_file_location('b', {str(TASKS / 'build.py')!r}); "
            "b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b); "
            f"from pathlib import Path; t = Path({str(sources)!r}); "
            "b.stdlib_sources = lambda: iter([('modz', t / 'c.py'), ('modc', t / 'c.py'), ('moda', t / 'a.py')]); "
            "print(json.dumps(b.pair_rows(b.signature_docs(64, 5)[0], 0)))")
    outs = {subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "PYTHONHASHSEED": str(h)},
                           capture_output=True, text=True, check=True).stdout for h in (1, 2, 3)}
    assert len(outs) == 1 and "shared(a)" in outs.pop()


def test_build_pairs_splits_before_pairing(sources, tmp_path):
    args = argparse.Namespace(train=8, dev=4, test=4, max_words=64, min_words=5, seed=3)
    info = build.build_pairs("signatures", tmp_path / "out", args)
    rows = {s: [json.loads(x) for x in (tmp_path / "out" / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "dev", "test")}
    assert info["sizes"] == {s: len(r) for s, r in rows.items()}
    assert sum(info["sizes"].values()) == 2 * info["docstrings_used"]
    split_of = {}
    for split, rs in rows.items():
        texts = {r["text"] for r in rs}
        for r in rs:
            assert set(r) == {"text", "text_pair", "label"}
            assert split_of.setdefault(r["text"], split) == split  # both rows of a docstring in one split
            if r["label"] == "mismatch":  # the partner's own docstring is in the same split
                assert any(x["text_pair"] == r["text_pair"] and x["label"] == "match" and x["text"] in texts for x in rs)
        for text in texts:  # each docstring once with its own signature, once with another's
            assert sorted(r["label"] for r in rs if r["text"] == text) == ["match", "mismatch"]
    texts, labels, pairs = task_files.read_jsonl(tmp_path / "out" / "train.jsonl")
    assert len(texts) == len(labels) == len(pairs) == info["sizes"]["train"]


def test_read_jsonl_single_segment(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"text": "a b", "label": "x"}\n{"text": "c d", "label": "y"}\n')
    assert task_files.read_jsonl(p) == (["a b", "c d"], ["x", "y"], None)
    p.write_text('{"text": "a b", "text_pair": "f()", "label": "x"}\n{"text": "c d", "label": "y"}\n')
    with pytest.raises(SystemExit, match="some rows have a text_pair"):
        task_files.read_jsonl(p)


def test_tfidf_pair_features():
    tfidf = load_real_task_script("tfidf")
    assert tfidf.identifier_words("get_exec_path(env) getExecPath") == ["get", "exec", "path", "env", "get", "exec", "path"]
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(tokenizer=tfidf.identifier_words, lowercase=False, token_pattern=None).fit(
        ["read the file", "read_file(path)", "close the stream", "close()"])
    f = tfidf.pair_features(vec, ["read the file", "close the stream"], ["read_file(path)", "read_file(path)"])
    v = len(vec.vocabulary_)
    assert f.shape == (2, 3 * v + 5)
    cosine = f[:, 3 * v].toarray().ravel()  # the two segments' cosine ('read', 'file' shared in row 0 only)
    a, b = vec.transform(["read the file"]).toarray().ravel(), vec.transform(["read_file(path)"]).toarray().ravel()
    assert cosine[0] == pytest.approx(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) and cosine[0] > 0 and cosine[1] == 0
    # the overlap: shared words of 3+ letters (read, file; none), at least 1, at least 2, share of the pair's (read, file, path)
    assert f[:, 3 * v + 1:].toarray().tolist() == [[2, 1, 1, pytest.approx(2 / 3)], [0, 0, 0, 0]]
    assert tfidf.shared_words("Read the FILE", "read_file(path)") == (2, 3)


def test_overlap_rule():
    tfidf = load_real_task_script("tfidf")
    dev = (["read the file", "close the stream", "open a door", "paint the wall"],
           ["match", "mismatch", "mismatch", "match"], ["read_file()", "open_file()", "open_window()", "paint_wall()"])
    test = (["open the door", "open a file"], ["match", "mismatch"], ["open_door()", "open_window()"])
    rule = tfidf.overlap_rule(dev, test)
    # shared words 2, 0, 1, 2: "at least 1" gets dev's "open" row wrong, "at least 2" none; test's rows share 2 and
    # 1 words, so the k picked on dev (2) gets both right where k=1 would get one
    assert rule == {"min_shared_words": 2, "dev_accuracy": 1.0, "test_accuracy": 1.0}
