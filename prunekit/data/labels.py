"""Labels in a model's terms: a dataset's label ids lined up with a model's ``config.id2label``
(by class name where both have names), with one line where they cannot match."""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

from prunekit.errors import PrunekitError

from .tasks import TextDataset, _custom_task, _squash

log = logging.getLogger(__name__)


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
