"""GLUE tasks: a local folder in the layout of the GLUE download script, or the hub's ``glue``
dataset through ``datasets`` (label ids as the hub's, so both give the same ids)."""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from prunekit.errors import PrunekitError

from .files import _lines, _read_bytes_utf8
from .tasks import (
    _ALL_TASKS,
    _LAYOUTS,
    TaskSpec,
    TextDataset,
    _finish,
    _resolve_task_name,
    _squash,
)

log = logging.getLogger(__name__)


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
