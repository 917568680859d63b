"""The bag-of-words baseline of issue 16: word TF-IDF (1-2 grams) + a linear SVM, C tuned on dev.

A two-segment task (``signatures``: rows with a ``text_pair``) gets the pair's features: each
segment's TF-IDF vector (words, identifiers split at ``_`` and case changes, one vocabulary for both),
their element-wise product (which words the two share, each with its own weight), its sum (the
cosine of the two) and the count of shared words (of 3 letters or more), so the linear model can score
a match and not only each side alone. For such a task the JSON also holds a rule without learning,
``match`` when the segments share a word (``overlap_rule``): on ``signatures`` and ``params`` it is
within a point of the TF-IDF model, so most of what a bag of words gets there is word overlap.

Reads ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` of a task built by ``build.py``; fits on
train for each C in ``--cs``, keeps the C with the best dev accuracy (the smallest on a tie) and
reports its test accuracy (and macro F1). Writes
``benchmarks/results/real_tasks/tfidf_<task>.json``. From the repo root (seconds per task):

    .venv/bin/python benchmarks/real_tasks/build.py
    .venv/bin/python benchmarks/real_tasks/tfidf.py                      # every built task
    .venv/bin/python benchmarks/real_tasks/tfidf.py --task docstrings
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score, f1_score
from sklearn.svm import LinearSVC
from task_files import read_jsonl

from prunekit.io import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "real_tasks"


def identifier_words(text: str) -> list[str]:
    """Lower-case words, identifiers split too: ``get_exec_path`` and ``getExecPath`` -> get, exec, path."""
    return re.findall(r"[a-z]+|[0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text).lower())


def shared_words(text: str, pair: str) -> tuple[int, int]:
    """(words of 3 letters or more that the two segments share, such words in ``pair``), identifiers split."""
    a, b = ({w for w in identifier_words(t) if len(w) >= 3} for t in (text, pair))
    return len(a & b), len(b)


def pair_features(vec: TfidfVectorizer, texts: list[str], pairs: list[str]):
    """[text, pair, text * pair, sum(text * pair), overlap] of the two segments' TF-IDF vectors, the
    overlap being the shared words' count, whether it is at least 1 and 2, and its share of ``pair``'s."""
    a, b = vec.transform(texts), vec.transform(pairs)
    both = a.multiply(b).tocsr()
    overlap = np.array([(n, n >= 1, n >= 2, n / max(1, m)) for n, m in map(shared_words, texts, pairs)], dtype=float)
    return sp.hstack([a, b, both, sp.csr_matrix(np.asarray(both.sum(axis=1))), sp.csr_matrix(overlap)]).tocsr()


def overlap_rule(dev: tuple, test: tuple) -> dict:
    """A two-segment task's floor without learning: ``match`` when the segments share at least k words of
    3 letters or more (identifiers split), k in 1..3 picked on dev. Where it comes near the TF-IDF
    model, the task is mostly word overlap."""
    def accuracy(split: tuple, k: int) -> float:
        texts, labels, pairs = split
        return float(np.mean([(shared_words(x, p)[0] >= k) == (y == "match") for x, y, p in zip(texts, labels, pairs)]))

    k = max((1, 2, 3), key=lambda k: (accuracy(dev, k), -k))
    return {"min_shared_words": k, "dev_accuracy": accuracy(dev, k), "test_accuracy": accuracy(test, k)}


def run(task: str, data_dir: Path, cs: list[float]) -> dict:
    t0 = time.perf_counter()
    train, dev, test = (read_jsonl(data_dir / f"{s}.jsonl") for s in ("train", "dev", "test"))
    (xtr, ytr, ptr), (xdev, ydev, pdev), (xte, yte, pte) = train, dev, test
    if ptr is None:
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True,
                              token_pattern=r"(?u)\b\w+\b")
        ftr, fdev, fte = vec.fit_transform(xtr), vec.transform(xdev), vec.transform(xte)
        model = "TfidfVectorizer(ngram_range=(1, 2), sublinear_tf) + LinearSVC"
    else:
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=False, tokenizer=identifier_words,
                              token_pattern=None).fit(sorted(set(xtr) | set(ptr)))  # each text once
        ftr, fdev, fte = (pair_features(vec, x, p) for x, p in ((xtr, ptr), (xdev, pdev), (xte, pte)))
        model = ("TfidfVectorizer(ngram_range=(1, 2), sublinear_tf, identifiers split) of each segment, their product, "
                 "its sum and the shared words' count + LinearSVC")
    sweep = []
    for c in cs:
        clf = LinearSVC(C=c, max_iter=20000).fit(ftr, ytr)
        sweep.append({"C": c, "dev_accuracy": accuracy_score(ydev, clf.predict(fdev))})
    best = max(sweep, key=lambda r: (r["dev_accuracy"], -r["C"]))
    clf = LinearSVC(C=best["C"], max_iter=20000).fit(ftr, ytr)
    pred = clf.predict(fte)
    return {
        "task": task, "data": str(data_dir), "model": model, "segments": 1 if ptr is None else 2,
        "sklearn": sklearn.__version__, "n_train": len(xtr), "n_dev": len(xdev), "n_test": len(xte),
        "n_classes": len(set(ytr)), "vocabulary": len(vec.vocabulary_), "C_sweep": sweep, "C": best["C"],
        "dev_accuracy": best["dev_accuracy"], "test_accuracy": accuracy_score(yte, pred),
        "test_macro_f1": f1_score(yte, pred, average="macro"), "seconds": round(time.perf_counter() - t0, 1),
        **({} if ptr is None else {"overlap_rule": overlap_rule(dev, test)}),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", action="append", help="repeatable; default: every task under --data")
    ap.add_argument("--data", default=str(REPO / "runs" / "real_tasks"), help="the tasks' folder (build.py --out)")
    ap.add_argument("--cs", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0])
    ap.add_argument("--out", default=str(RESULTS), help="writes OUT/tfidf_<task>.json")
    args = ap.parse_args(argv)
    tasks = args.task or sorted(p.parent.name for p in Path(args.data).glob("*/test.jsonl"))
    if not tasks:
        raise SystemExit(f"no task under {args.data}: run benchmarks/real_tasks/build.py first")
    for task in tasks:
        r = run(task, Path(args.data) / task, args.cs)
        out = Path(args.out) / f"tfidf_{task}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(r, indent=1) + "\n")
        print(f"{task}: C={r['C']} dev {r['dev_accuracy']:.4f} test {r['test_accuracy']:.4f} "
              f"(macro F1 {r['test_macro_f1']:.4f}; {r['n_train']}/{r['n_dev']}/{r['n_test']}, "
              f"{r['n_classes']} classes, {r['seconds']} s) -> {out}")
        if "overlap_rule" in r:
            o = r["overlap_rule"]
            print(f"  word-overlap rule (>= {o['min_shared_words']} shared words): dev {o['dev_accuracy']:.4f} "
                  f"test {o['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
