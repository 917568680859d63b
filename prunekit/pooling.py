"""A model's task output, defined once for every path (training, eval, bench backends, the ONNX
graph), so that their embeddings agree to the bit: logits for a classifier or regressor, masked
mean pooling of the last hidden states for an embedding model."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, T, H] over the positions where ``attention_mask`` [B, T] is 1, in
    ``hidden``'s dtype (pass ``hidden.float()`` for fp32 accumulation); an all-padding row gives 0.
    Plain tensor ops only: traceable by torch.onnx.export and torch.compile."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def output_projection(model) -> torch.nn.Linear | None:
    """The linear map an embedding model applies after pooling (a compact model whose hidden width was
    cut: back to the teacher's output space), or None."""
    return getattr(model, "output_proj", None)


def task_output(out, kind: str, attention_mask: torch.Tensor, fp32: bool = False,
                projection: torch.nn.Linear | None = None) -> torch.Tensor:
    """What a model of ``kind`` is judged by, from its forward's output ``out``: mean-pooled
    embeddings (``embedding``; then ``projection``, the model's :func:`output_projection`) or logits.
    ``fp32``: computed in float32 whatever the model's dtype."""
    if kind == "embedding":
        hidden = out.last_hidden_state
        pooled = mean_pool(hidden.float() if fp32 else hidden, attention_mask)
        if projection is not None:
            pooled = F.linear(pooled, projection.weight.to(pooled.dtype), projection.bias.to(pooled.dtype))
        return pooled
    return out.logits.float() if fp32 else out.logits
