"""Turning per-group scores into an architecture that meets a FLOPs budget."""
from __future__ import annotations

import torch

from .architecture import Architecture
from .flops import ModelShape, model_flops


def select_to_budget(
    head_priority: torch.Tensor,
    ffn_priority: torch.Tensor,
    shape: ModelShape,
    seq_len: int,
    target: float,
    meta: dict | None = None,
) -> Architecture:
    """Keep groups in order of decreasing priority while they fit in ``target`` x the original FLOPs.

    Heads and FFN neurons compete in one ranking; a group that does not fit is skipped and the
    cheaper ones after it still fill the budget, so the result lands just under the target.
    """
    full = model_flops(shape, seq_len).total
    budget = target * full - shape.top_cost()
    head_cost, neuron_cost = shape.head_cost(seq_len), shape.neuron_cost(seq_len)
    head_priority, ffn_priority = head_priority.detach().cpu(), ffn_priority.detach().cpu()  # scores may come from a GPU
    prio = torch.cat([head_priority.flatten().double(), ffn_priority.flatten().double()])
    costs = torch.cat(
        [torch.full((head_priority.numel(),), float(head_cost)), torch.full((ffn_priority.numel(),), float(neuron_cost))]
    ).double()
    # stable sort so that ties keep a deterministic order
    order = torch.sort(-prio, stable=True).indices
    sorted_costs = costs[order]
    keep_sorted = torch.zeros_like(sorted_costs, dtype=torch.bool)
    # Fast path: everything whose running total fits is kept; then fill the rest greedily.
    cum = torch.cumsum(sorted_costs, 0)
    n_prefix = int((cum <= budget).sum())
    keep_sorted[:n_prefix] = True
    used = float(cum[n_prefix - 1]) if n_prefix else 0.0
    for j in range(n_prefix, len(order)):
        c = float(sorted_costs[j])
        if used + c <= budget:
            keep_sorted[j] = True
            used += c
    keep = torch.zeros_like(keep_sorted)
    keep[order] = keep_sorted
    nh = head_priority.numel()
    head_mask = keep[:nh].view_as(head_priority).float()
    ffn_mask = keep[nh:].view_as(ffn_priority).float()
    return Architecture.from_masks(head_mask, ffn_mask, meta)
