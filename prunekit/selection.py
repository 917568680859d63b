"""Turning per-group scores into an architecture that meets a FLOPs budget."""
from __future__ import annotations

import numpy as np
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
    hidden_mask: torch.Tensor | None = None,
) -> Architecture:
    """Keep groups in order of decreasing priority while they fit in ``target`` x the original FLOPs.

    Heads and FFN neurons compete in one ranking; a group that does not fit is skipped and the
    cheaper ones after it still fill the budget, so the result lands just under the target.
    ``hidden_mask``: the kept hidden dimensions (``--prune-hidden``), which every group's cost scales with.
    """
    full = model_flops(shape, seq_len).total
    cut = shape.with_hidden(None if hidden_mask is None else int(hidden_mask.sum()))
    budget = target * full - cut.top_cost()
    head_cost, neuron_cost = cut.head_cost(seq_len), cut.neuron_cost(seq_len)
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
    return Architecture.from_masks(head_mask, ffn_mask, meta, hidden_mask)


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


def _ranks(head_priority: torch.Tensor, ffn_priority: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each group's place in the joint ranking of :func:`select_to_budget` as a share in (0, 1] (1: the
    highest priority; ties keep the flattened order, heads first)."""
    prio = torch.cat([head_priority.flatten().double(), ffn_priority.flatten().double()])
    order = torch.sort(prio, stable=True, descending=True).indices
    rank = torch.empty(prio.numel(), dtype=torch.float64)
    rank[order] = torch.arange(prio.numel(), 0, -1, dtype=torch.float64) / prio.numel()
    nh = head_priority.numel()
    return rank[:nh].view(head_priority.shape).numpy(), rank[nh:].view(ffn_priority.shape).numpy()


def _best_counts(groups: list[tuple[np.ndarray, np.ndarray]], budget: float, bins: int) -> list[int]:
    """A knapsack over groups of options: for each group one option k (its values[k] and costs[k]) so
    that the costs sum to at most ``budget`` and the values are the largest. Dynamic programming on the
    budget cut into ``bins`` steps, a cost rounded up to whole steps (so the sum never exceeds it)."""
    best = np.zeros(bins + 1)  # best[b]: the most value in at most b steps
    choices = []
    for values, costs in groups:
        steps = np.ceil(np.asarray(costs) / budget * bins - 1e-9).astype(int).clip(min=0)
        new, choice = np.full(bins + 1, -np.inf), np.full(bins + 1, -1)
        for k in np.flatnonzero(steps <= bins):
            c = steps[k]
            cand = best[: bins + 1 - c] + values[k]
            better = cand > new[c:]
            new[c:][better], choice[c:][better] = cand[better], k
        best = new
        choices.append((choice, steps))
    counts, b = [], bins
    for choice, steps in reversed(choices):
        k = int(choice[b])
        counts.append(k)
        b -= steps[k]
    return counts[::-1]


def select_to_latency(head_priority: torch.Tensor, ffn_priority: torch.Tensor, model, target: float,
                      meta: dict | None = None, bins: int = 2000) -> Architecture:
    """:func:`select_to_budget` for a latency model (:class:`prunekit.latency.LatencyModel`): the most
    valuable groups whose predicted latency fits in ``target`` x the full model's.

    A latency is not linear in the groups kept: the first head of a layer costs more than the next
    (the attention's own call, its projections' overhead), and a greedy pass by priority spends the
    budget on neurons and heads one at a time, leaving too little for any layer's first head. So each
    layer's attention block and FFN is one choice, how many of its groups to keep (the best by
    priority), at its measured cost A(h) or F(w); the choices are made together by a knapsack
    (:func:`_best_counts`). A group's value is its kind's mean cost times its rank in the joint
    ranking, so that where the costs are linear the choice is the greedy one, priority first."""
    head_priority, ffn_priority = head_priority.detach().cpu(), ffn_priority.detach().cpu()
    layers = head_priority.shape[0]
    budget = target / model.scale * model.full() - model.rest - layers * model.fixed  # ratios are over the original
    head_rank, ffn_rank = _ranks(head_priority, ffn_priority)
    head_value, neuron_value = model.mean_group_costs()
    head_costs = np.asarray(model.head_knots, float)
    ffn_costs = np.concatenate([[0.0], np.cumsum(model.ffn_marginals())])
    groups = []
    for layer in range(layers):
        groups.append((np.concatenate([[0.0], np.cumsum(np.sort(head_rank[layer])[::-1])]) * head_value, head_costs))
        groups.append((np.concatenate([[0.0], np.cumsum(np.sort(ffn_rank[layer])[::-1])]) * neuron_value, ffn_costs))
    counts = _best_counts(groups, budget, bins) if budget > 0 else [0] * (2 * layers)
    head_mask, ffn_mask = torch.zeros_like(head_priority), torch.zeros_like(ffn_priority)
    for layer in range(layers):
        for mask, rank, k in ((head_mask, head_rank, counts[2 * layer]), (ffn_mask, ffn_rank, counts[2 * layer + 1])):
            mask[layer, torch.from_numpy(np.argsort(-rank[layer], kind="stable")[:k].copy())] = 1.0
    return Architecture.from_masks(head_mask.float(), ffn_mask.float(), meta)


def trim_to_latency(head_priority: torch.Tensor, ffn_priority: torch.Tensor, model, target: float,
                    meta: dict | None = None, hidden_mask: torch.Tensor | None = None) -> Architecture:
    """The gate search's own choice (priority > 0) brought to a latency ``target`` by the fewest changes:
    while the predicted ratio is over it, the kept head or neuron with the lowest priority goes; then
    the dropped ones with the highest priority come back while they fit. Unlike
    :func:`select_to_latency`, which chooses afresh from the ranking (a knapsack that may trade a
    layer's whole attention for heads elsewhere), it keeps the structure the gates learned, which the
    jointly trained weights fit: on a real task the knapsack's re-choice cost 3 points
    (docs/results.md). ``hidden_mask``: the hidden dimensions kept (--prune-hidden), as they are."""
    hp, fp = head_priority.detach().cpu().double().numpy(), ffn_priority.detach().cpu().double().numpy()
    layers = hp.shape[0]
    prio = {"h": hp, "f": fp}
    kept = {(k, j): sorted(np.flatnonzero(prio[k][j] > 0), key=lambda i, k=k, j=j: prio[k][j][i])  # lowest first
            for k in "hf" for j in range(layers)}
    dropped = {(k, j): sorted(np.flatnonzero(prio[k][j] <= 0), key=lambda i, k=k, j=j: -prio[k][j][i])  # highest first
               for k in "hf" for j in range(layers)}

    hidden = None if hidden_mask is None else int((hidden_mask > 0.5).sum())

    def ratio() -> float:
        return model.ratio([len(kept["h", j]) for j in range(layers)], [len(kept["f", j]) for j in range(layers)], hidden)

    while ratio() > target and any(kept.values()):  # the lowest-priority kept group goes (a target under the floor: all)
        k, j = min((key for key in kept if kept[key]), key=lambda key: prio[key[0]][key[1]][kept[key][0]])
        dropped[k, j].insert(0, kept[k, j].pop(0))
    blocked = set()
    while True:  # the highest-priority dropped group comes back while it fits
        open_ = [key for key in dropped if dropped[key] and key not in blocked]
        if not open_:
            break
        k, j = max(open_, key=lambda key: prio[key[0]][key[1]][dropped[key][0]])
        kept[k, j].insert(0, dropped[k, j].pop(0))
        if ratio() > target:  # it does not fit, nor does any other of its layer and kind (the same cost)
            dropped[k, j].insert(0, kept[k, j].pop(0))
            blocked.add((k, j))
    head_mask, ffn_mask = torch.zeros(hp.shape), torch.zeros(fp.shape)
    for j in range(layers):
        head_mask[j, list(kept["h", j])] = 1.0
        ffn_mask[j, list(kept["f", j])] = 1.0
    return Architecture.from_masks(head_mask, ffn_mask, meta, hidden_mask)
