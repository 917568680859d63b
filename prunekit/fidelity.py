"""How faithful a pruned architecture is to its teacher before any fine-tuning.

The architecture's hard masks are applied to the teacher's own weights (or to weights given)
and its outputs on held-out data are compared with the teacher's: for an embedding model the
Spearman correlation of the pairwise cosine similarities and the mean cosine to the teacher's
embedding; for a classifier the agreement with the teacher's predictions (and the task metric
when there are labels); for a regressor the Pearson correlation with the teacher's outputs.
"""
from __future__ import annotations

import torch

from .architecture import Architecture
from .batching import encode, sequential_batches
from .gates import Gates
from .models import Teacher, model_output


@torch.no_grad()
def masked_outputs(teacher: Teacher, arch: Architecture | None, dataset, max_length: int, batch_size: int = 64, device="cpu") -> torch.Tensor:
    data = encode(dataset, teacher.tokenizer, max_length)
    gates = Gates(teacher.model, teacher.shape)
    masks = arch.to_masks(teacher.shape) if arch is not None else (None, None)
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


def teacher_fidelity(teacher: Teacher, arch: Architecture, dataset, max_length: int = 128, teacher_out: torch.Tensor | None = None) -> dict[str, float]:
    """Fidelity of ``arch`` (masks on the teacher's weights) to the unpruned teacher on ``dataset``."""
    if teacher_out is None:
        teacher_out = masked_outputs(teacher, None, dataset, max_length)
    student_out = masked_outputs(teacher, arch, dataset, max_length)
    return compare_outputs(teacher.kind, student_out, teacher_out, dataset)
