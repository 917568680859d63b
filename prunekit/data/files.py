"""Data files: CSV / TSV / JSONL tables with a header (columns picked by name), TXT (one text per
line), and the shipped corpus."""
from __future__ import annotations

import csv
import io
import json
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from prunekit.errors import PrunekitError

from .labels import _is_number
from .tasks import _LAYOUTS, CORPUS_TASK, TaskSpec, TextDataset, _custom_task, _finish

log = logging.getLogger(__name__)


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


@dataclass
class _Table:
    columns: list[str]
    rows: list[dict[str, Any]]
    line_nos: list[int]  # line in the file where each row starts, for error messages


def _table(path: Path, records, kind: str, hint: str) -> _Table:
    """The table of ``records``: (line where the record starts, its fields) pairs, blank records left
    out; the first is the header. A record with another field count than the header's is an error that
    names its line and ends with ``hint``."""
    header: list[str] | None = None
    rows: list[dict[str, Any]] = []
    line_nos: list[int] = []
    for no, fields in records:
        if header is None:
            header = [h.strip() for h in fields]
            _check_header(path, header)
        elif len(fields) != len(header):
            raise PrunekitError(f"{path}: malformed {kind} at line {no}: {len(fields)} fields but the header has {len(header)}; {hint}")
        else:
            rows.append(dict(zip(header, fields)))
            line_nos.append(no)
    if header is None:
        raise PrunekitError(f"{path} is empty: it needs a header line and at least one row")
    return _Table(header, rows, line_nos)


def _read_csv(path: Path, text: str, delimiter: str) -> _Table:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a long document is a text, not a quoting error (default 128 KiB)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    kind = "TSV" if delimiter == "\t" else "CSV"

    def records():
        start = 1
        for fields in reader:
            if fields and not (len(fields) == 1 and not fields[0].strip()):
                yield start, fields
            start = reader.line_num + 1

    try:
        return _table(path, records(), kind, "quote fields that contain the delimiter")
    except csv.Error as e:
        raise PrunekitError(f"{path}: malformed {kind} at line {reader.line_num}: {e}; fix the quoting there") from None


def _read_plain_tsv(path: Path, text: str) -> _Table:
    """TSV without quoting (GLUE style): every line is one row, split on tabs."""
    records = ((no, ln.split("\t")) for no, ln in enumerate(_lines(text), start=1) if ln.strip())
    return _table(path, records, "TSV", "texts may not contain tabs")


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
