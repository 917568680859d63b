"""Predictions over a dataset, and their scores: the task's metrics on labels, else fidelity to a reference.

:func:`predict` / :func:`predict_with` run a model (or a backend's runner) over encoded data in its
order; :func:`score` scores those outputs with the task's metrics where there are labels, and
otherwise by their fidelity to a reference model's outputs (:func:`compare_outputs`): for an
embedding model the Spearman correlation of the pairwise cosine similarities and the mean cosine
to the reference's embedding; for a classifier the agreement with the reference's predictions;
for a regressor the Pearson correlation with the reference's outputs. ``eval`` and ``distill``'s
dev set use them; :func:`masked_outputs` gives an architecture's outputs as hard masks on the
teacher's own weights, before any fine-tuning (the search-vs-baselines benchmark).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .architecture import Architecture
from .batching import EncodedData, encode, sequential_batches
from .gates import Gates
from .models import Teacher, model_output


@torch.no_grad()
def predict(model: nn.Module, kind: str, data: EncodedData, device="cpu", batch_size: int = 64) -> torch.Tensor:
    """``model_output`` (logits or mean-pooled embeddings) for every example of ``data``, in its order."""
    was_training = model.training
    model.eval()
    try:
        return predict_with(lambda batch: model_output(model, kind, batch), data, device, batch_size)
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_with(run: Callable[[dict], torch.Tensor], data: EncodedData, device="cpu", batch_size: int = 64) -> torch.Tensor:
    """``run(batch)`` (a backend runner's task output) for every example of ``data``, in its order."""
    outs: list = [None] * len(data)
    for idx, batch in sequential_batches(data, batch_size):
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        out = run(batch).float().cpu()
        for row, i in enumerate(idx.tolist()):
            outs[i] = out[row]
    return torch.stack(outs)


FIDELITY_PRIMARY = {"embedding": "similarity_spearman", "regression": "teacher_pearson", "classification": "teacher_agreement"}


def score(kind: str, outputs: torch.Tensor, dataset, reference_outputs: torch.Tensor | None = None) -> tuple[str, dict, str]:
    """(primary metric, metrics, what was scored against): the task's metrics on labels, else fidelity."""
    from .metrics import compute_metrics, primary_metric

    if kind != "embedding" and dataset.labels is not None and dataset.task.kind != "unlabelled":
        preds = outputs.flatten() if kind == "regression" else outputs
        return primary_metric(dataset.task), compute_metrics(dataset.task, preds, dataset.labels), "labels"
    if reference_outputs is None:
        raise ValueError("unlabelled data: pass reference_outputs")
    return FIDELITY_PRIMARY[kind], compare_outputs(kind, outputs, reference_outputs), "reference"



@torch.no_grad()
def masked_outputs(teacher: Teacher, arch: Architecture | None, dataset, max_length: int, batch_size: int = 64, device="cpu") -> torch.Tensor:
    data = encode(dataset, teacher.tokenizer, max_length)
    gates = Gates(teacher.model, teacher.shape)
    masks = arch.to_masks(teacher.shape) if arch is not None else (None, None, None)
    masks = tuple(m.to(device) if m is not None else None for m in masks)
    outs: list = [None] * len(data)
    try:
        for idx, batch in sequential_batches(data, batch_size):
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            with gates.active(*masks):
                out = model_output(teacher.model, teacher.kind, batch).float().cpu()
            for row, i in enumerate(idx.tolist()):
                outs[i] = out[row]
    finally:
        gates.remove()
    return torch.stack(outs)


def compare_outputs(kind: str, student: torch.Tensor, teacher: torch.Tensor, dataset=None) -> dict[str, float]:
    from .metrics import compute_metrics, embedding_fidelity

    if kind == "embedding":
        return embedding_fidelity(student, teacher)
    if kind == "regression":
        s, t = student.flatten(), teacher.flatten()
        out = {"teacher_pearson": float(torch.corrcoef(torch.stack([s, t]))[0, 1])}
    else:
        out = {"teacher_agreement": float((student.argmax(-1) == teacher.argmax(-1)).float().mean())}
    if dataset is not None and dataset.labels is not None and dataset.task.kind != "unlabelled":
        preds = student.flatten() if kind == "regression" else student.argmax(-1)
        out.update({f"task_{k}": v for k, v in compute_metrics(dataset.task, preds, dataset.labels).items()})
    return out
