"""Baselines at the same FLOPs target: random, head importance (Michel et al. 2019), magnitude.

Each returns a priority per head [L, H] and per FFN neuron [L, I]; `selection.select_to_budget`
keeps the highest until the budget is used. Scores of heads and of neurons are on different
scales, so each kind is divided by its mean before the two compete in one ranking.
"""
from __future__ import annotations

import torch

from .batching import EncodedData, iterate_batches
from .flops import ModelShape
from .gates import Gates
from .models import Teacher, encoder_layers, model_output


def _per_kind_normalise(head: torch.Tensor, ffn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return head / head.mean().clamp_min(1e-30), ffn / ffn.mean().clamp_min(1e-30)


def random_scores(shape: ModelShape, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random architecture: uniformly random priorities."""
    return (
        torch.rand(shape.num_layers, shape.num_heads, generator=generator),
        torch.rand(shape.num_layers, shape.intermediate_size, generator=generator),
    )


@torch.no_grad()
def magnitude_scores(model, shape: ModelShape) -> tuple[torch.Tensor, torch.Tensor]:
    """Structured magnitude: a head by the mean squared weight of its Q/K/V rows and output-projection
    columns, a neuron by that of its up-projection row and down-projection column."""
    d = shape.head_dim
    heads, ffns = [], []
    for layer in encoder_layers(model):
        att = layer.attention
        qkv = torch.cat([att.self.query.weight, att.self.key.weight, att.self.value.weight], 1)  # [H*d, 3*hidden]
        per_head_in = qkv.float().pow(2).view(shape.num_heads, d, -1).mean(dim=(1, 2))
        out_w = att.output.dense.weight.float()  # [hidden, H*d]
        per_head_out = out_w.pow(2).view(out_w.shape[0], shape.num_heads, d).mean(dim=(0, 2))
        heads.append((per_head_in + per_head_out) / 2)
        up = layer.intermediate.dense.weight.float().pow(2).mean(1)  # [I]
        down = layer.output.dense.weight.float().pow(2).mean(0)  # [I]
        ffns.append((up + down) / 2)
    return _per_kind_normalise(torch.stack(heads), torch.stack(ffns))


def head_importance_scores(teacher: Teacher, data: EncodedData, settings, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient sensitivity of head and neuron masks (Michel et al. 2019): accumulate |dL/d mask|.

    L is the cross-entropy with the gold labels (the teacher's predictions when there are none) for
    classifiers; for regression and embedding models, whose loss against the teacher has zero
    gradient at the unpruned point, L = <output, r> with a fresh Gaussian r per batch, whose squared
    mask gradient estimates the squared output change when the group is removed. Scores are
    normalised per layer (l2), as Michel et al. do.
    """
    shape = teacher.shape
    model = teacher.model
    gates = Gates(model, shape)
    head_mask = torch.ones(shape.num_layers, shape.num_heads, device=device, requires_grad=True)
    ffn_mask = torch.ones(shape.num_layers, shape.intermediate_size, device=device, requires_grad=True)
    head_acc = torch.zeros(shape.num_layers, shape.num_heads)
    ffn_acc = torch.zeros(shape.num_layers, shape.intermediate_size)
    gen = torch.Generator().manual_seed(settings.seed)
    batches = iterate_batches(data, settings.batch_size, settings.seed, shuffle=True)
    n_batches = min(settings.importance_batches, max(1, -(-len(data) // settings.batch_size)))
    try:
        for _ in range(n_batches):
            idx, batch = next(batches)
            batch = {k: v.to(device) for k, v in batch.items()}
            with gates.active(head_mask, ffn_mask):
                out = model_output(model, teacher.kind, batch)
            if teacher.kind == "classification":
                labels = batch.get("labels")
                if labels is None:
                    labels = data.teacher_out[idx].argmax(-1).to(device)
                loss = torch.nn.functional.cross_entropy(out.float(), labels)
                square = False
            else:
                r = torch.randn(out.shape, generator=gen).to(device)
                loss = (out.float() * r).sum()
                square = True
            gh, gf = torch.autograd.grad(loss, [head_mask, ffn_mask])
            head_acc += (gh.pow(2) if square else gh.abs()).cpu()
            ffn_acc += (gf.pow(2) if square else gf.abs()).cpu()
    finally:
        gates.remove()
    if square:
        head_acc, ffn_acc = head_acc.sqrt(), ffn_acc.sqrt()
    head_acc = head_acc / head_acc.norm(dim=1, keepdim=True).clamp_min(1e-20)
    ffn_acc = ffn_acc / ffn_acc.norm(dim=1, keepdim=True).clamp_min(1e-20)
    return _per_kind_normalise(head_acc, ffn_acc)
