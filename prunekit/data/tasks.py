"""Tasks and datasets: what a task is (its kind, labels and metrics), the GLUE task registry, and
:class:`TextDataset`, the one form every data source is read into."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prunekit.errors import PrunekitError

KINDS = ("classification", "regression", "unlabelled")


@dataclass(frozen=True)
class TaskSpec:
    """What a task's labels are and which metrics score it; `metrics[0]` is the primary one."""

    name: str  # "sst2", "mnli", "custom", "corpus", ...
    kind: str  # "classification" | "regression" | "unlabelled"
    num_labels: int  # 0 for unlabelled, 1 for regression
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    positive: int = 1  # the class binary F1 scores (GLUE: 1, e.g. MRPC "equivalent")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"TaskSpec.kind must be one of {KINDS}, got {self.kind!r}")
        if self.label_names is not None and len(self.label_names) != self.num_labels:
            raise ValueError(f"TaskSpec {self.name}: {len(self.label_names)} label names for {self.num_labels} labels")


@dataclass
class TextDataset:
    """Texts (and optional second segments and labels) of one split, with the task they belong to."""

    texts: list[str]
    pairs: list[str] | None  # second segment for pair tasks
    labels: list[int] | list[float] | None
    task: TaskSpec
    source: str  # human-readable origin

    def __post_init__(self) -> None:
        n = len(self.texts)
        if self.pairs is not None and len(self.pairs) != n:
            raise ValueError(f"{len(self.pairs)} pairs for {n} texts")
        if self.labels is not None and len(self.labels) != n:
            raise ValueError(f"{len(self.labels)} labels for {n} texts")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Iterable[int]) -> TextDataset:
        """The examples at `indices`, in that order."""
        idx = [int(i) for i in indices]
        return TextDataset(
            texts=[self.texts[i] for i in idx],
            pairs=None if self.pairs is None else [self.pairs[i] for i in idx],
            labels=None if self.labels is None else [self.labels[i] for i in idx],
            task=self.task,
            source=self.source,
        )

    def split(self, fraction: float, seed: int) -> tuple[TextDataset, TextDataset]:
        """Shuffle with `seed` and cut in two: the first part gets `round(fraction * len)` examples.

        Deterministic across Python/NumPy versions (the order comes from a hash of seed and
        index, not from a random generator). Each part keeps the original order.
        """
        if not 0.0 < fraction < 1.0:
            raise PrunekitError(f"split fraction must be between 0 and 1 (exclusive), got {fraction}")
        n = len(self)
        if n < 2:
            raise PrunekitError(f"cannot split {n} example(s) from {self.source} in two: give more data")
        order = sorted(range(n), key=lambda i: _stable_hash(f"{seed}:{i}"))
        k = min(max(round(fraction * n), 1), n - 1)
        return self.subset(sorted(order[:k])), self.subset(sorted(order[k:]))


def _stable_hash(s: str) -> bytes:
    return hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest()


_UNLABELLED_METRICS = ("similarity_spearman", "mean_cosine")  # keys of metrics.embedding_fidelity


_REGRESSION_METRICS = ("spearman", "pearson")


_NLI3 = ("entailment", "neutral", "contradiction")


_NLI2 = ("entailment", "not_entailment")


# Primary metric first, as the BERT paper reports GLUE: MCC for CoLA, F1 for MRPC/QQP,
# Spearman for STS-B, accuracy for the rest.
GLUE_TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec("cola", "classification", 2, ("unacceptable", "acceptable"), ("mcc",)),
    "sst2": TaskSpec("sst2", "classification", 2, ("negative", "positive"), ("accuracy",)),
    "mrpc": TaskSpec("mrpc", "classification", 2, ("not_equivalent", "equivalent"), ("f1", "accuracy")),
    "qqp": TaskSpec("qqp", "classification", 2, ("not_duplicate", "duplicate"), ("f1", "accuracy")),
    "stsb": TaskSpec("stsb", "regression", 1, None, _REGRESSION_METRICS),
    "mnli": TaskSpec("mnli", "classification", 3, _NLI3, ("accuracy",)),
    "qnli": TaskSpec("qnli", "classification", 2, _NLI2, ("accuracy",)),
    "rte": TaskSpec("rte", "classification", 2, _NLI2, ("accuracy",)),
    "wnli": TaskSpec("wnli", "classification", 2, ("not_entailment", "entailment"), ("accuracy",)),
}


# The diagnostic set: MNLI labels, scored by R3 (Matthews correlation). Test split only.
AX_TASK = TaskSpec("ax", "classification", 3, _NLI3, ("mcc",))


CORPUS_TASK = TaskSpec("corpus", "unlabelled", 0, None, _UNLABELLED_METRICS)


_ALL_TASKS = {**GLUE_TASKS, "ax": AX_TASK}


_VALID_NAMES = "cola, sst2, mrpc, qqp, stsb, mnli, mnli-mm, qnli, rte, wnli, ax"


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


# Every spelling we accept -> (task, MNLI mismatched?). Folder names of the GLUE download
# script squash onto these too (SST-2 -> sst2, STS-B -> stsb, diagnostic -> ax).
_ALIASES: dict[str, tuple[str, bool]] = {
    **{k: (k, False) for k in _ALL_TASKS},
    "mnlim": ("mnli", False),
    "mnlimatched": ("mnli", False),
    "mnlimm": ("mnli", True),
    "mnlimismatched": ("mnli", True),
    "diagnostic": ("ax", False),
}


def _resolve_task_name(name: str) -> tuple[str, bool] | None:
    return _ALIASES.get(_squash(name))


def is_mnli_mismatched(source, task: str | None = None) -> bool:
    """Whether `source` (a task name or folder) or `task` asks for MNLI's mismatched sets (mnli-mm)."""
    names = [task] if task is not None else []
    if source is not None:
        names.append(Path(os.fspath(source)).name)
    return any(_resolve_task_name(str(n)) == ("mnli", True) for n in names)


def get_task(name: str) -> TaskSpec:
    """The TaskSpec of a GLUE task, by any usual spelling ("SST-2", "sts-b", "mnli-mm", ...)."""
    hit = _resolve_task_name(name)
    if hit is None:
        raise PrunekitError(f"unknown GLUE task {name!r}: valid names are {_VALID_NAMES}")
    return _ALL_TASKS[hit[0]]


def _custom_task(kind: str, num_labels: int = 0, label_names: tuple[str, ...] | None = None) -> TaskSpec:
    if kind == "unlabelled":
        return TaskSpec("custom", "unlabelled", 0, None, _UNLABELLED_METRICS)
    if kind == "regression":
        return TaskSpec("custom", "regression", 1, None, _REGRESSION_METRICS)
    metrics = ("accuracy", "f1") if num_labels == 2 else ("accuracy",)
    return TaskSpec("custom", "classification", num_labels, label_names, metrics)


def _finish(ds: TextDataset, max_examples: int | None) -> TextDataset:
    if len(ds) == 0:
        raise PrunekitError(f"no examples in {ds.source}; check the file has data rows")
    if max_examples is not None and max_examples < len(ds):
        ds = ds.subset(range(max_examples))
    return ds


@dataclass(frozen=True)
class _Layout:
    folder: str  # folder name in the download script's layout
    text: str  # text column in the TSV header
    pair: str | None
    label: str | None
    label_kind: str  # "int": class id as written; "name": one of label_names; "float": score
    hub_text: str
    hub_pair: str | None
    no_header: tuple[str, ...] | None = None  # column names of headerless train/dev files (CoLA)


_LAYOUTS: dict[str, _Layout] = {
    # CoLA train/dev: source, label, original judgement (*), sentence -- no header. test: index, sentence.
    "cola": _Layout("CoLA", "sentence", None, "label", "int", "sentence", None,
                    no_header=("source", "label", "original_label", "sentence")),
    "sst2": _Layout("SST-2", "sentence", None, "label", "int", "sentence", None),
    "mrpc": _Layout("MRPC", "#1 String", "#2 String", "Quality", "int", "sentence1", "sentence2"),
    "qqp": _Layout("QQP", "question1", "question2", "is_duplicate", "int", "question1", "question2"),
    "stsb": _Layout("STS-B", "sentence1", "sentence2", "score", "float", "sentence1", "sentence2"),
    "mnli": _Layout("MNLI", "sentence1", "sentence2", "gold_label", "name", "premise", "hypothesis"),
    "qnli": _Layout("QNLI", "question", "sentence", "label", "name", "question", "sentence"),
    "rte": _Layout("RTE", "sentence1", "sentence2", "label", "name", "sentence1", "sentence2"),
    "wnli": _Layout("WNLI", "sentence1", "sentence2", "label", "int", "sentence1", "sentence2"),
    "ax": _Layout("diagnostic", "sentence1", "sentence2", None, "name", "premise", "hypothesis"),
}
