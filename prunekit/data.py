"""Task data: GLUE tasks, CSV/TSV/JSONL/TXT files, and the shipped corpus, as one `TextDataset`.

`load_data(source, split)` is the only entry point the other stages need:

- `source=None`: the shipped corpus (`prunekit/assets/corpus.txt`, sentences from CPython's
  standard-library docstrings), unlabelled. Searching needs no labels (self-distillation).
- a GLUE task name (`sst2`, `SST-2`, `sts-b`, `mnli-mm`, ...): read from a local GLUE folder
  (`glue_dir` or `$GLUE_DIR`, the layout of the GLUE download script) or, without one, through
  `datasets` when it is installed.
- a GLUE task folder (`/x/SST-2`): the task is taken from the folder's name.
- a `.csv` / `.tsv` / `.jsonl` file with a header (columns picked by name), or a `.txt` file with
  one text per line.

Label ids follow the Hugging Face `glue` dataset (e.g. MNLI: entailment=0, neutral=1,
contradiction=2), so the local-folder and hub paths give the same ids; `TaskSpec.label_names`
says which name each id has, for lining up with a model's `config.id2label`.
"""
from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import logging
import math
import operator
import os
import re
import sys
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from prunekit.errors import PrunekitError

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------------
# Task specs

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


# --------------------------------------------------------------------------------------------
# GLUE: file layouts of the GLUE download script, and the hub dataset's columns


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


def _glue_split(task: str, mismatched: bool, split: str) -> str:
    """Normalise a split name to the GLUE file stem (train, dev, test, dev_matched, ...)."""
    s = split.lower().strip().replace("-", "_").replace("validation", "dev")
    if task == "ax":
        if s != "test":
            raise PrunekitError(f"the GLUE diagnostic set (ax) has only a 'test' split, not {split!r}")
        return s
    if task == "mnli":
        suffix = "_mismatched" if mismatched else "_matched"
        if s in ("dev", "test"):
            return s + suffix
        valid = ("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")
        if s in valid:
            return s
        raise PrunekitError(f"unknown MNLI split {split!r}: use one of train, dev, test, {', '.join(valid[1:])}")
    if s in ("train", "dev", "test"):
        return s
    raise PrunekitError(f"unknown split {split!r} for GLUE {task}: use train, dev (or validation) or test")


def _find_child(parent: Path, name: str) -> Path | None:
    """`parent/name`, matched case-insensitively ignoring '-' and '_' (SST-2 ~ sst2)."""
    if not parent.is_dir():
        return None
    want = _squash(name)
    for child in sorted(parent.iterdir()):
        if _squash(child.name) == want:
            return child
    return None


def _read_bytes_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PrunekitError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise PrunekitError(f"{path} is a directory; give a data file (.csv, .tsv, .jsonl, .txt)") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PrunekitError(
            f"{path} is not UTF-8 text (bad byte at line {line}); re-save it as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}"
        ) from None


def _lines(text: str) -> list[str]:
    # Not str.splitlines(): that also splits on \x0b, \x1c, \u2028..., which occur inside texts.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _load_glue_file(task: str, mismatched: bool, split: str, folder: Path, max_examples: int | None) -> TextDataset:
    layout = _LAYOUTS[task]
    spec = _ALL_TASKS[task]
    stem = _glue_split(task, mismatched, split)
    if task == "ax":
        candidates = [folder / "diagnostic.tsv", folder / "AX.tsv", folder / "test.tsv"]
    else:
        candidates = [folder / f"{stem}.tsv"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        present = sorted(p.name for p in folder.glob("*.tsv")) if folder.is_dir() else []
        raise PrunekitError(
            f"no {candidates[0].name} in {folder} (files there: {', '.join(present) or 'none'}); "
            f"expected the layout of the GLUE download script"
        )
    lines = _lines(_read_bytes_utf8(path))
    # GLUE TSVs are plain tab-separated with unescaped quotes in the text: no CSV quoting.
    if layout.no_header is not None and not stem.startswith("test"):
        header = list(layout.no_header)
        body_start = 0
    else:
        if not lines:
            raise PrunekitError(f"{path} is empty; re-download the GLUE task {task}")
        header = lines[0].split("\t")
        body_start = 1
    col = {name: i for i, name in enumerate(header)}
    for need in (layout.text, layout.pair):
        if need is not None and need not in col:
            raise PrunekitError(
                f"{path} has no column {need!r} (columns: {', '.join(header)}); "
                f"it does not look like GLUE {task} in the download script's layout"
            )
    label_i = col.get(layout.label) if layout.label is not None else None
    need_fields = 1 + max(i for i in (col[layout.text], col.get(layout.pair or ""), label_i) if i is not None)

    texts: list[str] = []
    pairs: list[str] | None = [] if layout.pair else None
    raw_labels: list[str] = []
    skipped = 0
    for ln in lines[body_start:]:
        if not ln.strip():
            continue
        fields = ln.split("\t")
        if len(fields) < need_fields:  # a few QQP rows are broken; the reference loaders skip them too
            skipped += 1
            continue
        texts.append(fields[col[layout.text]])
        if pairs is not None:
            pairs.append(fields[col[layout.pair]])  # type: ignore[index]
        if label_i is not None:
            raw_labels.append(fields[label_i])
    if skipped:
        log.warning("%s: skipped %d malformed row(s) with too few fields", path, skipped)

    labels: list[int] | list[float] | None = None
    if label_i is not None:
        labels, dropped = _glue_labels(spec, layout.label_kind, raw_labels, path)
        if dropped:  # e.g. MNLI rows whose gold label is "-" (no annotator majority)
            keep = [i for i in range(len(texts)) if i not in dropped]
            texts = [texts[i] for i in keep]
            pairs = None if pairs is None else [pairs[i] for i in keep]
            log.warning("%s: skipped %d row(s) without a valid label", path, len(dropped))
    ds = TextDataset(texts, pairs, labels, spec, f"GLUE {task} {stem} from {path}")
    return _finish(ds, max_examples)


def _glue_labels(spec: TaskSpec, kind: str, raw: list[str], path: Path) -> tuple[list, set[int]]:
    out: list = []
    dropped: set[int] = set()
    for i, r in enumerate(raw):
        r = r.strip()
        try:
            if kind == "float":
                out.append(float(r))
            elif kind == "name":
                out.append(spec.label_names.index(r))  # type: ignore[union-attr]
            else:
                v = int(r)
                if not 0 <= v < spec.num_labels:
                    raise ValueError
                out.append(v)
        except ValueError:
            dropped.add(i)
    if dropped and len(dropped) == len(raw) and raw:
        raise PrunekitError(f"{path}: no row has a valid {spec.name} label (first: {raw[0]!r}); is this the right task?")
    return out, dropped


def _load_glue_hub(task: str, mismatched: bool, split: str, max_examples: int | None) -> TextDataset:
    stem = _glue_split(task, mismatched, split)
    try:
        datasets = importlib.import_module("datasets")
    except ImportError:
        raise PrunekitError(
            f"GLUE {task} needs a local copy: pass --glue-dir (or set GLUE_DIR) to the folder of the "
            f"GLUE download script, or `pip install prunekit[hub]` to fetch it with `datasets`"
        ) from None
    layout = _LAYOUTS[task]
    spec = _ALL_TASKS[task]
    hub_split = stem.replace("dev", "validation")
    try:
        # "nyu-mll/glue" is where the hub's "glue" now lives (plain parquet, no loading script).
        hf = datasets.load_dataset("nyu-mll/glue", task, split=hub_split)
    except MemoryError:
        raise
    except Exception as e:  # network, cache or hub errors: the user's environment, not our bug
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrunekitError(
            f"could not load GLUE {task} {hub_split} through datasets ({first}); pass --glue-dir to a local GLUE copy"
        ) from e
    n = len(hf) if max_examples is None else min(len(hf), max_examples)
    if n < len(hf):
        hf = hf.select(range(n))
    texts = [str(t) for t in hf[layout.hub_text]]
    pairs = [str(t) for t in hf[layout.hub_pair]] if layout.hub_pair else None
    labels: list | None = None
    if "label" in hf.column_names:
        raw = list(hf["label"])
        if not all(float(v) == -1 for v in raw):  # the hub marks hidden test labels with -1 (STS-B too)
            labels = [float(v) for v in raw] if spec.kind == "regression" else [int(v) for v in raw]
    return _finish(TextDataset(texts, pairs, labels, spec, f"GLUE {task} {stem} (nyu-mll/glue on the hub)"), None)


def _glue_file_task(path: Path) -> tuple[str, bool, str] | None:
    """(task, mismatched, split) when `path` is a split file inside a GLUE task folder, e.g.
    `.../SST-2/dev.tsv`: read it in the GLUE layout (CoLA's files have no header)."""
    hit = _resolve_task_name(path.parent.name)
    if hit is None or path.suffix.lower() != ".tsv":
        return None
    stem = path.stem.lower()
    if hit[0] == "ax":
        return ("ax", False, "test") if stem in ("diagnostic", "ax", "test") else None
    if stem in ("train", "dev", "test") or (hit[0] == "mnli" and stem in (
            "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")):
        return hit[0], hit[1] or stem.endswith("_mismatched"), stem
    return None


def _load_glue(task: str, mismatched: bool, split: str, glue_dir, max_examples: int | None) -> TextDataset:
    root = glue_dir if glue_dir is not None else os.environ.get("GLUE_DIR") or None
    if root is None:
        return _load_glue_hub(task, mismatched, split, max_examples)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise PrunekitError(f"GLUE folder not found: {root}; pass --glue-dir (or GLUE_DIR) an existing folder")
    folder = _find_child(root, _LAYOUTS[task].folder)
    root_task = _resolve_task_name(root.name)
    if folder is None and root_task is not None and root_task[0] == task:
        folder = root  # glue_dir already points at the task folder
    if folder is None:
        raise PrunekitError(
            f"no {_LAYOUTS[task].folder} folder in {root}; --glue-dir must hold the task folders "
            f"of the GLUE download script (CoLA, SST-2, MRPC, ...)"
        )
    return _load_glue_file(task, mismatched, split, folder, max_examples)


# --------------------------------------------------------------------------------------------
# Files: CSV / TSV / JSONL (tables with a header) and TXT (one text per line)


@dataclass
class _Table:
    columns: list[str]
    rows: list[dict[str, Any]]
    line_nos: list[int]  # line in the file where each row starts, for error messages


def _read_csv(path: Path, text: str, delimiter: str) -> _Table:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a long document is a text, not a quoting error (default 128 KiB)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    rows: list[dict[str, Any]] = []
    line_nos: list[int] = []
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        start = 1
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                start = reader.line_num + 1
                continue
            if header is None:
                header = [h.strip() for h in fields]
                _check_header(path, header)
            elif len(fields) != len(header):
                raise PrunekitError(
                    f"{path}: malformed {kind} at line {start}: {len(fields)} fields but the header has "
                    f"{len(header)}; quote fields that contain the delimiter"
                )
            else:
                rows.append(dict(zip(header, fields)))
                line_nos.append(start)
            start = reader.line_num + 1
    except csv.Error as e:
        raise PrunekitError(f"{path}: malformed {kind} at line {reader.line_num}: {e}; fix the quoting there") from None
    if header is None:
        raise PrunekitError(f"{path} is empty: it needs a header line and at least one row")
    return _Table(header, rows, line_nos)


def _read_plain_tsv(path: Path, text: str) -> _Table:
    """TSV without quoting (GLUE style): every line is one row, split on tabs."""
    header: list[str] | None = None
    rows: list[dict[str, Any]] = []
    line_nos: list[int] = []
    for no, ln in enumerate(_lines(text), start=1):
        if not ln.strip():
            continue
        fields = ln.split("\t")
        if header is None:
            header = [h.strip() for h in fields]
            _check_header(path, header)
        elif len(fields) != len(header):
            raise PrunekitError(
                f"{path}: malformed TSV at line {no}: {len(fields)} fields but the header has {len(header)}; "
                f"texts may not contain tabs"
            )
        else:
            rows.append(dict(zip(header, fields)))
            line_nos.append(no)
    if header is None:
        raise PrunekitError(f"{path} is empty: it needs a header line and at least one row")
    return _Table(header, rows, line_nos)


_CSV_QUOTED = re.compile(r'"(?:[^"]|"")*"')


def _read_tsv(path: Path, text: str) -> _Table:
    """A TSV comes two ways: plain (GLUE: one row per line, quotes are text) or CSV-quoted (pandas'
    to_csv(sep="\t") quotes a field holding a tab, a newline or a quote; R's write.table quotes
    every field). Read plain, where CSV quoting would join the lines between two quotation marks
    of ordinary text into one field; read CSV-quoted where the file shows it is: a quoted header,
    lines that only split evenly as CSV, or quoted fields with their inner quotes doubled (and
    the same rows either way)."""
    first = next((ln for ln in _lines(text) if ln.strip()), "")
    header_quoted = any(len(f) >= 2 and f.startswith('"') and f.endswith('"') for f in first.split("\t"))
    try:
        plain = _read_plain_tsv(path, text)
    except PrunekitError as plain_error:
        try:
            return _read_csv(path, text, "\t")
        except PrunekitError as csv_error:
            raise (csv_error if header_quoted else plain_error) from None
    if header_quoted:
        return _read_csv(path, text, "\t")
    quoted = [v for r in plain.rows for v in r.values() if isinstance(v, str) and v.startswith('"')]
    if quoted and all(_CSV_QUOTED.fullmatch(v) for v in quoted) and any('""' in v[1:-1] for v in quoted):
        try:
            table = _read_csv(path, text, "\t")
        except PrunekitError:
            return plain
        if len(table.rows) == len(plain.rows):
            return table
    return plain


def _check_header(path: Path, header: list[str]) -> None:
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise PrunekitError(f"{path}: the header names column(s) {', '.join(map(repr, dupes))} twice; rename them")


def _read_jsonl(path: Path, text: str) -> _Table:
    columns: dict[str, None] = {}
    rows: list[dict[str, Any]] = []
    line_nos: list[int] = []
    for no, ln in enumerate(_lines(text), start=1):
        if not ln.strip():
            continue
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError as e:
            raise PrunekitError(f"{path}: malformed JSONL at line {no}: {e.msg}; each line must be one JSON object") from None
        except RecursionError:
            raise PrunekitError(f"{path}: malformed JSONL at line {no}: nested too deeply; each line must be one flat JSON object") from None
        except ValueError as e:  # Python's limit on the digits of an integer
            raise PrunekitError(f"{path}: malformed JSONL at line {no}: {str(e).split(';')[0]}") from None
        if not isinstance(obj, dict):
            raise PrunekitError(
                f"{path}: malformed JSONL at line {no}: a {type(obj).__name__}, not an object; "
                f'each line must look like {{"text": ..., "label": ...}}'
            )
        for k in obj:
            columns.setdefault(str(k), None)
        rows.append(obj)
        line_nos.append(no)
    return _Table(list(columns), rows, line_nos)


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return math.isfinite(v)
    if isinstance(v, str):
        try:
            return math.isfinite(float(v))
        except ValueError:
            return False
    return False


def _pick_column(table: _Table, explicit: str | None, candidates: Sequence[str], what: str, flag: str,
                 path: Path) -> str | None:
    if explicit is not None:
        if explicit not in table.columns:
            raise PrunekitError(
                f"{path} has no {what} column {explicit!r}; its columns are {', '.join(map(repr, table.columns))} "
                f"(choose one with {flag})"
            )
        return explicit
    return next((c for c in candidates if c in table.columns), None)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _label_values(raw: list[Any], table: _Table, col: str, path: Path, forced: TaskSpec | None
                  ) -> tuple[list | None, TaskSpec]:
    """Turn a label column into ids or scores, and the TaskSpec they imply (or the forced one)."""
    missing = [i for i, v in enumerate(raw) if _missing(v)]
    if len(missing) == len(raw) or all(_is_number(v) and float(v) == -1 for v in raw):
        # No labels at all (or the hub's -1 for hidden test labels): unlabelled data.
        return None, forced or _custom_task("unlabelled")
    if missing:
        raise PrunekitError(
            f"{path}: line {table.line_nos[missing[0]]} has no value in label column {col!r}; "
            f"label every row, or drop the column for unlabelled data"
        )
    if forced is not None:
        return _forced_labels(raw, table, col, path, forced), forced

    if all(_is_number(v) for v in raw):
        nums = [float(v) for v in raw]
        if any(x != int(x) for x in nums):
            return nums, _custom_task("regression")
        ints = [int(x) for x in nums]
        distinct = sorted(set(ints))
        if distinct[0] >= 0 and (distinct == list(range(distinct[-1] + 1)) or distinct[-1] <= 1 or len(distinct) == 1):
            k = max(distinct[-1] + 1, 2)  # a small dev slice may hold one class only: ids as written
            return ints, _custom_task("classification", k, tuple(str(i) for i in range(k)))
        names = tuple(str(v) for v in distinct)
        index = {v: i for i, v in enumerate(distinct)}
        log.info("%s: labels %s are not 0..K-1; mapped to ids 0..%d in sorted order", path, names, len(names) - 1)
        labels = [index[v] for v in ints]
    else:
        strs = [str(v).strip() for v in raw]
        names = tuple(sorted(set(strs)))
        index = {v: i for i, v in enumerate(names)}
        labels = [index[v] for v in strs]
    if len(names) < 2:
        raise PrunekitError(
            f"{path}: label column {col!r} holds one value only ({names[0]!r}); a classifier needs two or more "
            f"classes (pass --task to use a known task's labels)"
        )
    return labels, _custom_task("classification", len(names), names)


def _forced_labels(raw: list[Any], table: _Table, col: str, path: Path, spec: TaskSpec) -> list:
    out: list = []
    for v, no in zip(raw, table.line_nos):
        if spec.kind == "regression":
            if not _is_number(v):
                raise PrunekitError(f"{path}: line {no}: label {v!r} is not a number, but {spec.name} is a regression task")
            out.append(float(v))
            continue
        s = str(v).strip()
        names = spec.label_names or ()
        if s in names:
            out.append(names.index(s))
        elif _is_number(v) and float(v) == int(float(v)) and 0 <= int(float(v)) < spec.num_labels:
            out.append(int(float(v)))
        else:
            raise PrunekitError(
                f"{path}: line {no}: label {v!r} is not a {spec.name} label: use one of "
                f"{', '.join(names)} or a class id 0..{spec.num_labels - 1}"
            )
    return out


# Column pairs of two-segment data, as the hub's datasets name them (GLUE, SNLI, SQuAD-style QNLI).
_PAIR_COLUMNS = (("text", "text_pair"), ("sentence1", "sentence2"), ("premise", "hypothesis"),
                 ("question1", "question2"), ("question", "sentence"))


def _task_columns(forced: TaskSpec | None) -> tuple[list[tuple[str, str]], list[str], list[str], list[str]]:
    """Default (text, pair) column pairs, then text / pair / label column names, most specific first."""
    combos = list(_PAIR_COLUMNS)
    text, pair, label = ["text", "sentence", "sentence1"], ["text_pair", "sentence2"], ["label"]
    if forced is not None and forced.name in _LAYOUTS:
        lay = _LAYOUTS[forced.name]
        text = [lay.text, lay.hub_text] + text
        pair = [p for p in (lay.pair, lay.hub_pair) if p] + pair
        label = ([lay.label] if lay.label else []) + label
        # a one-sentence task takes no pair by its column names alone
        combos = [(lay.text, lay.pair), (lay.hub_text, lay.hub_pair)] + combos if lay.pair else []
    return combos, text, pair, label


def _load_table(path: Path, table: _Table, text_column, pair_column, label_column, forced: TaskSpec | None
                ) -> TextDataset:
    if not table.rows:
        raise PrunekitError(f"{path} has a header but no rows; add data")
    combos, text_c, pair_c, label_c = _task_columns(forced)
    lab = _pick_column(table, label_column, label_c, "label", "--label-column", path)
    text = _pick_column(table, text_column, text_c, "text", "--text-column", path)
    pair = _pick_column(table, pair_column, pair_c, "pair", "--pair-column", path)
    if pair_column is None:
        # both segments of a pair dataset (premise/hypothesis, question1/question2, ...): when no
        # column is named, the first pair the file has; else the named text column's partner
        hit = next(((t, p) for t, p in combos if t in table.columns and p in table.columns
                    and (text_column is None or t == text_column)), None)
        if hit is not None:
            text, pair = hit
    if text is None:  # fall back to the first column that holds strings that are not numbers
        for c in table.columns:
            if c in (lab, pair):
                continue
            vals = [r.get(c) for r in table.rows]
            if all(isinstance(v, str) for v in vals) and not all(_is_number(v) for v in vals):
                text = c
                log.warning("%s: no text/sentence column: the texts are read from column %r (name one with "
                            "--text-column)", path, c)
                break
    if text is None:
        raise PrunekitError(
            f"{path}: found no text column among {', '.join(map(repr, table.columns))}; name one with --text-column"
        )
    if pair is not None and pair == text:
        raise PrunekitError(f"{path}: text and pair column are both {text!r}; pick two different columns")

    def column(name: str, what: str, allow_missing: bool) -> list[Any]:
        out = []
        for r, no in zip(table.rows, table.line_nos):
            v = r.get(name)
            if not allow_missing and (v is None or (isinstance(v, str) and not v.strip())):  # None or empty
                raise PrunekitError(f"{path}: line {no} has no {what} in column {name!r}; every row needs one")
            if isinstance(v, (dict, list)):
                raise PrunekitError(f"{path}: line {no}: column {name!r} holds a {type(v).__name__}, not text")
            out.append(v)
        return out

    texts = [str(v) for v in column(text, "text", False)]
    pairs = [str(v) for v in column(pair, "pair text", False)] if pair else None
    labels, spec = (None, forced or _custom_task("unlabelled"))
    if lab is not None:
        labels, spec = _label_values(column(lab, "label", True), table, lab, path, forced)
    parts = [f"text={text!r}"] + ([f"pair={pair!r}"] if pair else []) + ([f"label={lab!r}"] if labels is not None else [])
    return TextDataset(texts, pairs, labels, spec, f"{path} ({', '.join(parts)})")


def _load_txt(path: Path, text: str, forced: TaskSpec | None) -> TextDataset:
    texts = [ln.strip() for ln in _lines(text) if ln.strip()]
    return TextDataset(texts, None, None, forced or _custom_task("unlabelled"), str(path))


def _load_file(path: Path, text_column, pair_column, label_column, forced: TaskSpec | None) -> TextDataset:
    ext = path.suffix.lower()
    if ext not in (".csv", ".tsv", ".jsonl", ".txt"):
        raise PrunekitError(
            f"cannot read {path}: unknown extension {path.suffix or '(none)'!r}; use .csv, .tsv, .jsonl or .txt "
            f"(or a GLUE task name or folder)"
        )
    text = _read_bytes_utf8(path)
    if ext == ".txt":
        if text_column or pair_column or label_column:
            raise PrunekitError(
                f"{path} is a .txt file (one text per line, no columns); use .csv, .tsv or .jsonl for labelled data"
            )
        return _load_txt(path, text, forced)
    if ext == ".csv":
        table = _read_csv(path, text, ",")
    elif ext == ".tsv":
        table = _read_tsv(path, text)
    else:
        table = _read_jsonl(path, text)
    return _load_table(path, table, text_column, pair_column, label_column, forced)


# --------------------------------------------------------------------------------------------
# The shipped corpus


def default_corpus_path() -> Path:
    """Path of the shipped corpus: sentences from CPython standard-library docstrings."""
    res = resources.files("prunekit").joinpath("assets").joinpath("corpus.txt")
    return Path(str(res))


def _load_corpus(max_examples: int | None) -> TextDataset:
    res = resources.files("prunekit").joinpath("assets").joinpath("corpus.txt")
    try:
        text = res.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PrunekitError(
            "the shipped corpus prunekit/assets/corpus.txt is missing; reinstall prunekit or run `python -m prunekit.corpus`"
        ) from None
    texts = [ln.strip() for ln in _lines(text) if ln.strip()]
    ds = TextDataset(texts, None, None, CORPUS_TASK, "prunekit shipped corpus (CPython standard-library docstrings)")
    return _finish(ds, max_examples)


# --------------------------------------------------------------------------------------------
# Labels in a model's terms


def class_id_of(name: str) -> int | None:
    """The class id a label names by number alone: "2", "2.0", "LABEL_2", "label2" -> 2."""
    if _is_number(name):
        v = float(name)
        return int(v) if v == int(v) else None
    sq = _squash(str(name))
    return int(sq[5:]) if sq.startswith("label") and sq[5:].isdigit() else None


def _plain_id(name: str, i: int) -> bool:
    """`name` says no more than the id it names: "LABEL_2", "label2" or "2" for id 2."""
    return class_id_of(name) == i


def model_label_names(id2label: dict | None, num_labels: int) -> tuple[str, ...] | None:
    """The class names a model's `config.id2label` gives ids 0..num_labels-1, or None where it
    names none (transformers' default LABEL_0, LABEL_1, ...)."""
    if not id2label or num_labels < 1:
        return None
    names = []
    for i in range(num_labels):
        name = id2label.get(i, id2label.get(str(i)))
        if name is None:
            return None
        names.append(str(name))
    return None if all(_plain_id(n, i) for i, n in enumerate(names)) else tuple(names)


def align_labels(ds: TextDataset, kind: str, id2label: dict | None, num_labels: int, what: str = "the data",
                 whose: str = "the model") -> TextDataset:
    """`ds` with its labels in the model's terms, so that logits and labels can be compared.

    Classification: where the model names its classes (`config.id2label`, not LABEL_0, ...), the
    data's class names are matched to them (case, '-', '_' and spaces ignored), numbers included
    (a model whose classes are "1".."5"): a model fine-tuned with MNLI's labels in another order
    (roberta-large-mnli: contradiction=0) is scored right. A data name the model lacks, while
    others match, is an error. Otherwise labels written as class ids ("2", "LABEL_2") keep their
    ids, within the model's classes (a dev slice may lack a class); and named classes the model
    cannot match keep the ids they were read with, with a warning (a file's: sorted order).
    Regression: a file whose scores are whole numbers (read as classes) is read as scores.
    Embeddings and unlabelled data are returned as they are. `whose` names where `id2label`
    comes from, for messages ("the training data": distill numbers dev like train).
    """
    task = ds.task
    if ds.labels is None or task.kind == "unlabelled" or kind not in ("classification", "regression"):
        return ds
    if kind == "regression":
        names = task.label_names
        if task.kind == "classification" and task.name == "custom" and names and all(_is_number(n) for n in names):
            return replace(ds, labels=[float(names[i]) for i in ds.labels], task=_custom_task("regression"))
        return ds
    if task.kind != "classification":
        return ds
    data_names = task.label_names or tuple(str(i) for i in range(task.num_labels))
    used = sorted(set(ds.labels))
    model_names = model_label_names(id2label, num_labels)
    where = " (config.id2label)" if whose == "the model" else ""

    index = {_squash(n): j for j, n in enumerate(model_names)} if model_names else {}
    found = {i: index.get(_squash(data_names[i])) for i in used}
    if model_names and all(v is not None for v in found.values()):
        if all(k == v for k, v in found.items()) and num_labels == task.num_labels:
            return ds  # already in the model's order
        positive = index.get(_squash(data_names[task.positive])) if task.name != "custom" else None
        positive = 1 if positive is None else positive  # custom data: the model's class 1
        metrics = task.metrics if task.name != "custom" else _custom_task("classification", num_labels).metrics
        spec = replace(task, num_labels=num_labels, label_names=model_names, metrics=metrics, positive=positive)
        log.info("%s: labels mapped to the model's ids by name (%s)", what,
                 ", ".join(f"{data_names[i]}={found[i]}" for i in used))
        return replace(ds, labels=[found[i] for i in ds.labels], task=spec)
    if model_names and any(v is not None for v in found.values()):
        missing = [data_names[i] for i in used if found[i] is None]
        raise PrunekitError(
            f"{what} has label(s) {', '.join(map(repr, missing))} that {whose} does not have: its classes are "
            f"{', '.join(model_names)}{where}; relabel the data with those class names or their ids"
        )
    ids = {i: class_id_of(data_names[i]) for i in used}
    if task.name == "custom" and all(v is not None for v in ids.values()):
        # labelled by class id: the ids as written (a file's {0, 2} was renumbered to {0, 1} on reading)
        bad = sorted(v for v in ids.values() if not 0 <= v < num_labels)
        if bad:
            one_based = min(ids.values()) >= 1 and max(ids.values()) == num_labels
            raise PrunekitError(
                f"{what} has class id {bad[-1]} among its labels but the model has {num_labels} classes "
                f"(ids 0..{num_labels - 1}); "
                + ("the labels look 1-based: subtract 1 from them" if one_based else "use the model fine-tuned for this data")
            )
        names = model_names or tuple(str(i) for i in range(num_labels))
        spec = _custom_task("classification", num_labels, names)
        return replace(ds, labels=[ids[i] for i in ds.labels], task=spec)
    if task.num_labels != num_labels:
        raise PrunekitError(
            f"{what} has {task.num_labels} classes ({', '.join(data_names)}) but the model predicts {num_labels}; "
            f"use the model fine-tuned for this data" + (" (or pass --task)" if task.name == "custom" else "")
        )
    if model_names or task.name == "custom":  # the ids are a guess: say which
        why = (f"names its classes {', '.join(model_names)}, none of them the data's" if model_names
               else "names no classes (LABEL_0, ...)")
        order = "in sorted order" if task.name == "custom" else f"as {task.name} numbers them"
        log.warning(
            "%s: %s %s, so the data's labels are taken with their ids %s (%s); label the rows by "
            "class id, or name the classes in the model's config.id2label, to be sure", what, whose, why, order,
            ", ".join(f"{n}={i}" for i, n in enumerate(data_names)))
    return ds


# --------------------------------------------------------------------------------------------
# Entry point


def _finish(ds: TextDataset, max_examples: int | None) -> TextDataset:
    if len(ds) == 0:
        raise PrunekitError(f"no examples in {ds.source}; check the file has data rows")
    if max_examples is not None and max_examples < len(ds):
        ds = ds.subset(range(max_examples))
    return ds


def data_key(data: str | None) -> str:
    """One name per data source, for comparing what a model was trained on with what it is scored on:
    "corpus" for the shipped corpus, a resolved path for a file or folder, else the name as given."""
    if data is None or str(data).startswith("prunekit shipped corpus"):
        return "corpus"
    p = Path(str(data)).expanduser()
    return str(p.resolve()) if p.exists() else str(data)


def load_data(
    source: str | os.PathLike | None,
    split: str = "train",
    *,
    text_column: str | None = None,
    pair_column: str | None = None,
    label_column: str | None = None,
    task: str | None = None,
    glue_dir: str | os.PathLike | None = None,
    max_examples: int | None = None,
) -> TextDataset:
    """Load one split of task data as a `TextDataset`.

    source: None (the shipped corpus), a GLUE task name, a GLUE task folder, or a .csv/.tsv/
        .jsonl/.txt file. `split` applies to GLUE (train, dev/validation, test; MNLI also
        dev_matched, dev_mismatched); a file is its own split.
    text_column/pair_column/label_column: columns of a table file. Defaults: text "text",
        "sentence", "sentence1" or the first non-numeric string column; pair "text_pair" or
        "sentence2"; label "label". Without a label column the data is unlabelled.
    task: a GLUE task whose TaskSpec (labels, metrics) the file's data takes, e.g. "mrpc".
    glue_dir: folder of the GLUE download script (default: $GLUE_DIR). Without one, GLUE
        tasks come through `datasets` when it is installed.
    max_examples: keep the first N examples.
    """
    if max_examples is not None:
        try:
            n = operator.index(max_examples)
        except TypeError:
            n = 0
        if n < 1 or isinstance(max_examples, bool):
            raise PrunekitError(f"max_examples must be a positive whole number, got {max_examples!r}")
        max_examples = n
    forced = get_task(task) if task is not None else None
    forced_mm = task is not None and _resolve_task_name(task) == ("mnli", True)

    if source is None:
        if forced is not None or text_column or pair_column or label_column:
            raise PrunekitError("the shipped corpus is unlabelled text; give a data file or GLUE task to use --task or columns")
        return _load_corpus(max_examples)

    s = os.fspath(source)
    path = Path(s).expanduser()
    if path.is_dir():
        hit = _resolve_task_name(path.name)
        if hit is None and forced is not None:
            hit = (forced.name, forced_mm)
            sub = _find_child(path, _LAYOUTS[forced.name].folder)
            path = sub or path
        if hit is None:
            raise PrunekitError(
                f"{path} is a folder but not a GLUE task folder (SST-2, MRPC, ...); give a data file, "
                f"or pass --task to say which GLUE task it holds"
            )
        if forced is not None and forced.name != hit[0]:
            raise PrunekitError(f"{path} holds GLUE {hit[0]} but --task says {forced.name}; drop one of them")
        return _load_glue_file(hit[0], hit[1] or forced_mm, split, path, max_examples)
    if path.is_file():
        glue_hit = _glue_file_task(path)
        if glue_hit is not None and not (text_column or pair_column or label_column):
            if forced is not None and forced.name != glue_hit[0]:
                raise PrunekitError(f"{path} is a GLUE {glue_hit[0]} file but --task says {forced.name}; drop one of them")
            return _load_glue_file(glue_hit[0], glue_hit[1] or forced_mm, glue_hit[2], path.parent, max_examples)
        ds = _load_file(path, text_column, pair_column, label_column, forced)
        return _finish(ds, max_examples)

    hit = _resolve_task_name(s)
    looks_like_path = any(sep in s for sep in ("/", os.sep)) or Path(s).suffix != ""
    if hit is None or looks_like_path:
        if looks_like_path:
            raise PrunekitError(f"file not found: {s}")
        raise PrunekitError(f"{s!r} is neither a file nor a GLUE task; valid task names are {_VALID_NAMES}")
    if forced is not None and forced.name != hit[0]:
        raise PrunekitError(f"source is GLUE {hit[0]} but --task says {forced.name}; drop --task")
    if text_column or pair_column or label_column:
        raise PrunekitError(f"GLUE {hit[0]} has fixed columns; --text-column/--pair-column/--label-column are for files")
    return _load_glue(hit[0], hit[1] or forced_mm, split, glue_dir, max_examples)


__all__ = [
    "TaskSpec",
    "TextDataset",
    "GLUE_TASKS",
    "AX_TASK",
    "CORPUS_TASK",
    "get_task",
    "load_data",
    "align_labels",
    "class_id_of",
    "model_label_names",
    "is_mnli_mismatched",
    "default_corpus_path",
]
