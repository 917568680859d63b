"""Gates on every attention head and FFN neuron of a BERT-family model.

A gate multiplies one head's context vector (before the output projection — the same as
Michel et al.'s head mask on the attention probabilities) or one FFN neuron's activation
(after GELU). With ``search --prune-hidden`` one more gate per hidden dimension, shared by every
layer (the residual stream is one space), multiplies the output of every LayerNorm (embeddings',
and each layer's two) and of the classifier head's dense layer; those LayerNorms then take their
mean and variance over the kept dimensions only (:func:`masked_layer_norm`), so that a hard mask
computes exactly what the model cut to the kept dimensions computes. Gates are applied with forward hooks on the transformers modules, so any
BERT-family model keeps its own forward. A gate is either soft (``sigmoid(alpha)``, for the
search), hard (a 0/1 mask, the discretised architecture) or a differentiable all-ones mask
(for gradient-based importance scores).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .flops import ModelShape
from .models import classifier_head, encoder_layers


def masked_layer_norm(x: torch.Tensor, norm: nn.LayerNorm, gate: torch.Tensor) -> torch.Tensor:
    """``norm`` over the dimensions ``gate`` keeps, times the gate: statistics weighted by the gate
    (over the kept dimensions only when it is 0/1), so the pruned dimensions come out 0."""
    gate = gate.to(x.dtype)
    kept = gate.sum()
    mean = (x * gate).sum(-1, keepdim=True) / kept
    centred = x - mean
    var = (centred * centred * gate).sum(-1, keepdim=True) / kept
    y = centred * torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        y = y * norm.weight + norm.bias
    return y * gate


class Gates:
    """Installs hooks on a model; ``active(head, ffn, hidden)`` sets the [L,H], [L,I] and [hidden]
    gate tensors for one forward."""

    def __init__(self, model: nn.Module, shape: ModelShape):
        self.model = model
        self.shape = shape
        self._head: torch.Tensor | None = None
        self._ffn: torch.Tensor | None = None
        self._hidden: torch.Tensor | None = None
        self._handles = []
        norms = [getattr(model, "base_model", model).embeddings.LayerNorm]
        for i, layer in enumerate(encoder_layers(model)):
            self._handles.append(layer.attention.self.register_forward_hook(self._head_hook(i)))
            self._handles.append(layer.intermediate.register_forward_hook(self._ffn_hook(i)))
            norms += [layer.attention.output.LayerNorm, layer.output.LayerNorm]
        for norm in norms:
            self._handles.append(norm.register_forward_hook(self._norm_hook))
        head = classifier_head(model)
        if head is not None:  # the pooler's (RoBERTa: the head's) dense output is in the hidden space too
            self._handles.append(head[0].register_forward_hook(self._dense_hook))

    def _norm_hook(self, module, args, output):
        return output if self._hidden is None else masked_layer_norm(args[0], module, self._hidden)

    def _dense_hook(self, module, args, output):
        return output if self._hidden is None else output * self._hidden.to(output.dtype)

    def _head_hook(self, i: int):
        def hook(module, args, output):
            if self._head is None:
                return output
            ctx = output[0] if isinstance(output, tuple) else output
            b, t, _ = ctx.shape
            gate = self._head[i].to(ctx.dtype)
            ctx = (ctx.view(b, t, self.shape.num_heads, -1) * gate[:, None]).view(b, t, -1)
            return (ctx,) + tuple(output[1:]) if isinstance(output, tuple) else ctx

        return hook

    def _ffn_hook(self, i: int):
        def hook(module, args, output):
            if self._ffn is None:
                return output
            return output * self._ffn[i].to(output.dtype)

        return hook

    @contextlib.contextmanager
    def active(self, head: torch.Tensor | None, ffn: torch.Tensor | None, hidden: torch.Tensor | None = None) -> Iterator[None]:
        if head is not None and tuple(head.shape) != (self.shape.num_layers, self.shape.num_heads):
            raise ValueError(f"head gates of shape {tuple(head.shape)} for a model of {self.shape}")
        if ffn is not None and tuple(ffn.shape) != (self.shape.num_layers, self.shape.intermediate_size):
            raise ValueError(f"FFN gates of shape {tuple(ffn.shape)} for a model of {self.shape}")
        if hidden is not None and tuple(hidden.shape) != (self.shape.hidden_size,):
            raise ValueError(f"hidden gates of shape {tuple(hidden.shape)} for a model of {self.shape}")
        self._head, self._ffn, self._hidden = head, ffn, hidden
        try:
            yield
        finally:
            self._head, self._ffn, self._hidden = None, None, None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class GateLogits(nn.Module):
    """The learnable alphas of the search: one per head and one per FFN neuron in every layer, and
    with ``hidden`` one per hidden dimension (``--prune-hidden``)."""

    def __init__(self, shape: ModelShape, init: float, hidden: bool = False):
        super().__init__()
        self.head = nn.Parameter(torch.full((shape.num_layers, shape.num_heads), float(init)))
        self.ffn = nn.Parameter(torch.full((shape.num_layers, shape.intermediate_size), float(init)))
        self.hidden = nn.Parameter(torch.full((shape.hidden_size,), float(init))) if hidden else None

    def groups(self) -> list[nn.Parameter]:
        """The alphas, one tensor per kind of group: heads, FFN neurons (and hidden dimensions)."""
        return [self.head, self.ffn] + ([self.hidden] if self.hidden is not None else [])

    def probs(self) -> tuple[torch.Tensor, ...]:
        """sigmoid(alpha) per kind (see :meth:`groups`)."""
        return tuple(torch.sigmoid(a) for a in self.groups())

    def hard(self) -> tuple[torch.Tensor, ...]:
        """The discretised architecture: a group is kept when its gate is above 0.5 (alpha > 0)."""
        return tuple((a > 0).float() for a in self.groups())
