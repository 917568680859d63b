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


def uniform_architecture(shape: ModelShape, seq_len: int, target: float, generator: torch.Generator,
                         meta: dict | None = None) -> Architecture:
    """The same number of heads and of FFN neurons in every layer, at ``target`` x the original FLOPs:
    what is done by hand. Each layer keeps the share of its heads closest to the target's share of a
    layer's cost (fewer where that much does not fit), then as many neurons as the rest of the layer's
    budget pays for; which heads and neurons is random (``generator``)."""
    full = model_flops(shape, seq_len).total
    per_layer = (target * full - shape.top_cost()) / shape.num_layers
    head_cost, neuron_cost = shape.head_cost(seq_len), shape.neuron_cost(seq_len)
    share = per_layer / (shape.num_heads * head_cost + shape.intermediate_size * neuron_cost)
    heads = min(round(share * shape.num_heads), max(0, int(per_layer // head_cost)), shape.num_heads)
    neurons = min(max(0, int((per_layer - heads * head_cost) // neuron_cost)), shape.intermediate_size)
    head_mask = torch.zeros(shape.num_layers, shape.num_heads)
    ffn_mask = torch.zeros(shape.num_layers, shape.intermediate_size)
    for layer in range(shape.num_layers):
        head_mask[layer, torch.randperm(shape.num_heads, generator=generator)[:heads]] = 1.0
        ffn_mask[layer, torch.randperm(shape.intermediate_size, generator=generator)[:neurons]] = 1.0
    return Architecture.from_masks(head_mask, ffn_mask, meta)


def select_to_latency(head_priority: torch.Tensor, ffn_priority: torch.Tensor, model, target: float,
                      meta: dict | None = None) -> Architecture:
    """:func:`select_to_budget` for a latency model (:class:`prunekit.latency.LatencyModel`): groups in
    order of decreasing priority, each kept while the model's predicted latency still fits in
    ``target`` x the full model's. A group's cost is what it adds to its layer as that layer stands
    (A and F are not linear: the first head of a layer may cost more than the next)."""
    head_priority, ffn_priority = head_priority.detach().cpu(), ffn_priority.detach().cpu()
    layers, nh = head_priority.shape[0], head_priority.numel()
    per_head, per_neuron = head_priority.shape[1], ffn_priority.shape[1]
    budget = target * model.full() - model.rest - layers * model.fixed
    head_marginal, ffn_marginal = model.head_marginals(), model.ffn_marginals()
    prio = torch.cat([head_priority.flatten().double(), ffn_priority.flatten().double()])
    order = torch.sort(-prio, stable=True).indices.tolist()
    heads, widths = [0] * layers, [0] * layers
    keep = torch.zeros(prio.numel(), dtype=torch.bool)
    used = 0.0
    for j in order:
        if j < nh:
            layer = j // per_head
            cost = head_marginal[heads[layer]]
        else:
            layer = (j - nh) // per_neuron
            cost = ffn_marginal[widths[layer]]
        if used + cost <= budget:
            keep[j] = True
            used += cost
            if j < nh:
                heads[layer] += 1
            else:
                widths[layer] += 1
    head_mask = keep[:nh].view_as(head_priority).float()
    ffn_mask = keep[nh:].view_as(ffn_priority).float()
    return Architecture.from_masks(head_mask, ffn_mask, meta)
