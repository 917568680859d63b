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

import operator
import os
from pathlib import Path

from prunekit.errors import PrunekitError

from .files import _load_corpus, _load_file, default_corpus_path
from .glue import _find_child, _glue_file_task, _load_glue, _load_glue_file
from .labels import align_labels, class_id_of, model_label_names
from .tasks import (
    _LAYOUTS,
    _VALID_NAMES,
    AX_TASK,
    CORPUS_TASK,
    GLUE_TASKS,
    KINDS,
    TaskSpec,
    TextDataset,
    _finish,
    _resolve_task_name,
    get_task,
    is_mnli_mismatched,
)


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
    "data_key",
    "KINDS",
]
