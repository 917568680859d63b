"""benchmarks/real_tasks' second two-segment task `params` (issue 16): a library parameter's description
paired with its own entry (``name : type``) and with another parameter's of the same module; the
numpydoc / Google-style reader, the de-duplication and the splits of whole modules."""
from __future__ import annotations

import argparse
import json

import pytest

from factory import assert_pair_rows, load_real_task_script

build = load_real_task_script("build")

NUMPYDOC = """Fit the model.

Parameters
----------
X : array-like of shape (n_samples, n_features)
    The training input samples. Internally, it will be
    converted to float32.

    A second paragraph that is not part of the task.
n_estimators : int, default=100
    The number of trees in the forest.
x, y : float
    Two names share this description, so it is left out.
verbose
    Whether to print progress while fitting.

Other Parameters
----------------
**kwargs : dict
    Extra keyword arguments passed on to the solver.

Returns
-------
self : object
    The fitted estimator, which is not a parameter.
"""

GOOGLE = """Build a tokenizer.

Args:
    vocab_file (`str`):
        Path to the vocabulary file
        that holds one token per line.
    do_lower_case (`bool`, *optional*, defaults to `True`): Whether to lowercase the input
        when tokenizing.
    unk_token: The token that stands for unknown words.

Returns:
    A tokenizer, which is not a parameter either.
"""


def test_doc_params_numpydoc():
    params = build.doc_params(NUMPYDOC)
    assert params == [
        ("X", "array-like of shape (n_samples, n_features)", "The training input samples. Internally, it will be converted to float32."),
        ("n_estimators", "int, default=100", "The number of trees in the forest."),
        ("verbose", "", "Whether to print progress while fitting."),
        ("**kwargs", "dict", "Extra keyword arguments passed on to the solver."),
    ]


def test_doc_params_google():
    assert build.doc_params(GOOGLE) == [
        ("vocab_file", "`str`", "Path to the vocabulary file that holds one token per line."),
        ("do_lower_case", "`bool`, *optional*, defaults to `True`", "Whether to lowercase the input when tokenizing."),
        ("unk_token", "", "The token that stands for unknown words."),
    ]
    assert build.doc_params("Just a summary line.\n\nNo sections at all.") == []


def test_doc_params_irregular_layouts():
    """Layouts found in the libraries: a description continued at the entry's own indent, a first entry
    indented deeper than the rest, a ``Returns:`` heading indented inside ``Args:``."""
    google = ("Args:\n    shape_env: The shape environment used for symbolic shape tracking\n"
              "    during graph transformations.\n    Returns:\n        The generated indices of shape (n, 2).\n")
    assert build.doc_params(google) == [
        ("shape_env", "", "The shape environment used for symbolic shape tracking during graph transformations.")]
    numpy = ("Parameters\n----------\n system : tuple\n    The system to simulate.\nx0 : array_like, optional\n"
             "    The initial state vector.\n")
    assert build.doc_params(numpy) == [("system", "tuple", "The system to simulate."),
                                       ("x0", "array_like, optional", "The initial state vector.")]


def _module(params: dict[str, str]) -> str:
    """A source file with one function whose numpydoc documents ``params`` (name -> description)."""
    entries = "".join(f"    {name.strip()} : {'int, optional' if name.endswith(' ') else 'int'}\n        {desc}\n"
                      for name, desc in params.items())  # a trailing space: the same name, another type
    return f'def f({", ".join(dict.fromkeys(n.strip() for n in params))}):\n    """Do it.\n\n    Parameters\n    ----------\n{entries}    """\n'


MODULES = {
    "liba.alpha": {"size": "The number of items that the buffer holds at most.",
                   "name": "The name under which the buffer is registered.",
                   "out": "An array into which the result is written in place."},
    "liba.beta": {"out": "An array into which the result is written in place.",  # alpha's: kept once, in alpha
                  "width": "The same words under two different names here.",
                  "height": "The same words under two different names here."},  # dropped (ambiguous)
    "libb.gamma": {"rate": "The learning rate of the optimiser at its first step.",
                   "steps": "How many optimiser steps to take before stopping."},
    "libb.lonely": {"only": "The single parameter of its module, with no partner."},  # no other name: left out
    "libc.delta": {"axis": "The axis along which the values are summed up.",
                   "axis ": "The axis of the grid that the labels are drawn on."},  # the same name, another type
}


@pytest.fixture
def sources(tmp_path, monkeypatch):
    walk = []
    for module, params in MODULES.items():
        path = tmp_path / f"{module}.py"
        path.write_text(_module(params))
        walk.append((module, path))
    monkeypatch.setattr(build, "library_sources", lambda: iter(walk))
    return tmp_path


def test_param_docs(sources):
    docs, info = build.param_docs(max_words=64, min_words=5)
    assert info["read"] == 11 and info["ambiguous_texts_dropped"] == 1
    texts = [d[0] for d in docs]
    assert len(texts) == len(set(texts)) == 5  # the shared `out` once, width/height and lonely's left out
    assert ("An array into which the result is written in place.", "out : int", "liba.alpha") in docs
    assert not any(d[2] in ("libb.lonely", "libc.delta") for d in docs)  # delta: one name under two types
    rows, alone = build.pair_rows(docs, seed=0, name=build._param_name)
    assert alone == 0 and len(rows) == 10
    assert_pair_rows(rows, docs, build._param_name)  # a mismatch: another parameter of the same module


def test_mismatch_names_another_parameter():
    """A mismatch's entry names another parameter, not only another entry: ``axis : int`` and ``axis : int,
    optional`` are one name."""
    docs = [("The axis along which the values are summed up.", "axis : int", "m"),
            ("The axis of the grid that the labels are drawn on.", "axis : int, optional", "m"),
            ("The factor that every value is multiplied by.", "scale : float", "m")]
    for seed in range(10):
        rows, _ = build.pair_rows(docs, seed=seed, name=build._param_name)
        assert {r["text_pair"] for r in rows if r["label"] == "mismatch" and "axis" in r["text"]} == {"scale : float"}


def test_param_docs_per_module_cap(sources, monkeypatch):
    monkeypatch.setattr(build, "PARAMS_PER_MODULE", 2)
    docs, _ = build.param_docs(max_words=64, min_words=5)
    per_module = {}
    for d in docs:
        per_module[d[2]] = per_module.get(d[2], 0) + 1
    assert per_module == {"liba.alpha": 2, "libb.gamma": 2}


def test_build_params_splits_whole_modules(tmp_path, monkeypatch):
    """Splits are whole modules: the test set shares no module with train (one module at most sits on
    the edge of two neighbouring splits)."""
    walk = []
    for m in range(30):
        module = f"lib.m{m:02d}"
        path = tmp_path / f"{module}.py"
        word = "".join(chr(97 + int(d)) for d in f"{m:02d}")  # 7 -> "ah": no digits, the de-duplication masks them
        path.write_text(_module({f"p{m}_{i}": f"The {('first', 'second', 'third', 'fourth')[i]} parameter of module {word}, "
                                 "described in words." for i in range(4)}))
        walk.append((module, path))
    monkeypatch.setattr(build, "library_sources", lambda: iter(walk))
    args = argparse.Namespace(train=120, dev=40, test=80, max_words=64, min_words=5, seed=1)
    info = build.build_pairs("params", tmp_path / "out", args)
    rows = {s: [json.loads(x) for x in (tmp_path / "out" / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "dev", "test")}
    assert info["sizes"] == {s: len(r) for s, r in rows.items()} and sum(info["sizes"].values()) == 240
    modules = {s: {r["text_pair"].split("_")[0] for r in rs} for s, rs in rows.items()}
    assert not modules["test"] & modules["train"]
    assert len(modules["test"] & modules["dev"]) <= 1 and len(modules["dev"] & modules["train"]) <= 1
    assert modules["test"] != {f"p{m}" for m in range(len(modules["test"]))}  # modules drawn by a hash, not by name
    for rs in rows.values():
        assert [r["label"] for r in rs].count("match") == len(rs) // 2
        for r in rs:  # a mismatch's entry is another parameter of the same module
            word = r["text"].split("module ")[1].split(",")[0]
            assert r["text_pair"].startswith(f"p{int(''.join(str(ord(c) - 97) for c in word))}_")
