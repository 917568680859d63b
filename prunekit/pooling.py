"""Masked mean pooling: the one definition every path (training, eval, bench backends, the ONNX
graph) uses, so their embeddings agree to the bit."""
from __future__ import annotations

import torch


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, T, H] over the positions where ``attention_mask`` [B, T] is 1, in
    ``hidden``'s dtype (pass ``hidden.float()`` for fp32 accumulation); an all-padding row gives 0.
    Plain tensor ops only: traceable by torch.onnx.export and torch.compile."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
