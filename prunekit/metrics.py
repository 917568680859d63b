"""Task metrics (GLUE's accuracy, F1, MCC, Pearson, Spearman) and embedding fidelity.

All scores are fractions (0.91, not 91.0), computed by scikit-learn and SciPy so they match
what everyone else reports. `primary_metric(task)` is the one number a table leads with.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from prunekit.data import TaskSpec
from prunekit.errors import PrunekitError

log = logging.getLogger(__name__)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def primary_metric(task: TaskSpec) -> str:
    """The metric a task is ranked by: MCC for CoLA, F1 for MRPC/QQP, Spearman for STS-B,
    accuracy for the other GLUE tasks, `similarity_spearman` for unlabelled data."""
    if not task.metrics:
        raise PrunekitError(f"task {task.name} lists no metrics")
    return task.metrics[0]


def compute_metrics(task: TaskSpec, predictions: Any, labels: Any) -> dict[str, float]:
    """Score predictions against labels with every metric of `task`, primary metric first.

    predictions: class ids [N] or logits [N, C] (argmax is taken) for classification; scores
        [N] or [N, 1] for regression. Lists, NumPy arrays and torch tensors all work.
    """
    if task.kind == "unlabelled":
        raise PrunekitError(
            f"task {task.name} is unlabelled: score it with embedding_fidelity(student, teacher), not labels"
        )
    if labels is None:
        raise PrunekitError(f"no labels to score {task.name} against (a test split?); evaluate on the dev split")
    preds = _to_numpy(predictions)
    y = _to_numpy(labels)
    n_pred = preds.shape[0] if preds.ndim else 0
    n_lab = y.shape[0] if y.ndim else 0
    if n_pred == 0 or n_lab == 0:
        raise PrunekitError(f"cannot score {task.name} on empty input ({n_pred} predictions, {n_lab} labels)")
    if n_pred != n_lab:
        raise PrunekitError(f"{n_pred} predictions but {n_lab} labels for {task.name}; score the same examples")

    if task.kind == "regression":
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
        if preds.ndim != 1:
            raise PrunekitError(
                f"{task.name} is a regression task: predictions must be one score per example, got shape {preds.shape}"
            )
        preds, y = preds.astype(np.float64), y.astype(np.float64)
    else:
        if preds.ndim == 2:
            if preds.shape[1] != task.num_labels:
                raise PrunekitError(
                    f"the model gives {preds.shape[1]} logits per example but {task.name} has {task.num_labels} "
                    f"labels; use a model fine-tuned for {task.name}"
                )
            preds = preds.argmax(axis=1)
        elif preds.ndim != 1:
            raise PrunekitError(f"classification predictions must be class ids [N] or logits [N, C], got {preds.shape}")
        if preds.dtype.kind == "f":
            if not np.all(preds == np.round(preds)):
                raise PrunekitError(f"{task.name} is classification: predictions must be class ids, got fractions")
        preds, y = preds.astype(np.int64), y.astype(np.int64)

    out: dict[str, float] = {}
    for name in task.metrics:
        if name not in _METRICS:
            raise ValueError(f"task {task.name} asks for unknown metric {name!r}; known: {sorted(_METRICS)}")
        out[name] = _METRICS[name](task, preds, y)
    return out


def _accuracy(task: TaskSpec, p: np.ndarray, y: np.ndarray) -> float:
    return float(accuracy_score(y, p))


def _f1(task: TaskSpec, p: np.ndarray, y: np.ndarray) -> float:
    # GLUE's F1 (MRPC, QQP) is binary with its class 1 as positive (`task.positive`: that class's
    # id in the model's order); macro F1 for more classes.
    if task.num_labels <= 2:
        return float(f1_score(y, p, pos_label=task.positive, average="binary", zero_division=0.0))
    return float(f1_score(y, p, labels=list(range(task.num_labels)), average="macro", zero_division=0.0))


def _mcc(task: TaskSpec, p: np.ndarray, y: np.ndarray) -> float:
    return float(matthews_corrcoef(y, p))


def _correlation(fn, p: np.ndarray, y: np.ndarray, name: str) -> float:
    if len(p) < 2 or np.all(p == p[0]) or np.all(y == y[0]):
        # Undefined for constant input (a collapsed model predicts one value): say so, not 0.
        log.warning("%s correlation is undefined for constant predictions or labels; reporting nan", name)
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(p, y)[0])


def _pearson(task: TaskSpec, p: np.ndarray, y: np.ndarray) -> float:
    return _correlation(stats.pearsonr, p, y, "Pearson")


def _spearman(task: TaskSpec, p: np.ndarray, y: np.ndarray) -> float:
    return _correlation(stats.spearmanr, p, y, "Spearman")


_METRICS = {
    "accuracy": _accuracy,
    "f1": _f1,
    "mcc": _mcc,
    "pearson": _pearson,
    "spearman": _spearman,
}


_WARNED_WIDTHS: set[tuple[int, int]] = set()  # width pairs already warned about (once per process)


def embedding_fidelity(student_emb: Any, teacher_emb: Any, *, max_items: int = 2000) -> dict[str, float]:
    """How well a student's sentence embeddings keep the teacher's, on the same N sentences.

    mean_cosine: mean cosine similarity between each student embedding and the teacher's
        embedding of the same sentence (1.0 = same directions).
    similarity_spearman: Spearman correlation between the upper triangles of the student's and
        the teacher's N x N cosine-similarity matrices -- whether the student ranks sentence
        pairs as similar in the same order as the teacher, which is what retrieval and
        clustering use. This is the primary one: it is blind to a rotation of the space that
        mean_cosine would punish, and it needs no common width (for a student whose narrow output
        differs in width from the teacher's, mean_cosine is left out).
    Only the first `max_items` rows enter the pairwise term (its cost grows with N^2).
    """
    s = _to_numpy(student_emb).astype(np.float64)
    t = _to_numpy(teacher_emb).astype(np.float64)
    if s.ndim != 2 or t.ndim != 2:
        raise PrunekitError(f"embeddings must be [N, D] matrices, got shapes {s.shape} and {t.shape}")
    if s.shape[0] != t.shape[0]:
        raise PrunekitError(f"student embeddings {s.shape} and teacher embeddings {t.shape} differ in the number of sentences; "
                            f"embed the same sentences with the same pooling")
    n = s.shape[0]
    if n < 3:
        raise PrunekitError(f"embedding fidelity needs at least 3 sentences, got {n}: give more data (or a larger --max-examples)")

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    su, tu = unit(s), unit(t)
    out = {}
    if s.shape[1] == t.shape[1]:
        out["mean_cosine"] = float(np.mean(np.sum(su * tu, axis=1)))
    elif (s.shape[1], t.shape[1]) not in _WARNED_WIDTHS:  # compact --narrow-output: no common space for directions
        _WARNED_WIDTHS.add((s.shape[1], t.shape[1]))
        log.warning("the embeddings are %d wide, the reference's %d: mean_cosine left out (no common space); "
                    "similarity_spearman compares pairwise similarities (as for a compact --narrow-output model; "
                    "otherwise check the reference)", s.shape[1], t.shape[1])
    m = min(n, max_items)
    iu = np.triu_indices(m, k=1)
    sim_s = (su[:m] @ su[:m].T)[iu]
    sim_t = (tu[:m] @ tu[:m].T)[iu]
    if np.ptp(sim_s) == 0 or np.ptp(sim_t) == 0:
        log.warning("similarity_spearman is undefined when all pairwise similarities are equal; reporting nan")
        rho = float("nan")
    else:
        rho = float(stats.spearmanr(sim_s, sim_t)[0])
    return {"similarity_spearman": rho, **out}



__all__ = ["compute_metrics", "primary_metric", "embedding_fidelity"]
