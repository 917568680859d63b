"""Gates on every attention head and FFN neuron of a BERT-family model.

A gate multiplies one head's context vector (before the output projection — the same as
Michel et al.'s head mask on the attention probabilities) or one FFN neuron's activation
(after GELU). Gates are applied with forward hooks on the transformers modules, so any
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
from .models import encoder_layers


class Gates:
    """Installs hooks on a model; ``active(head, ffn)`` sets the [L,H] and [L,I] gate tensors for one forward."""

    def __init__(self, model: nn.Module, shape: ModelShape):
        self.model = model
        self.shape = shape
        self._head: torch.Tensor | None = None
        self._ffn: torch.Tensor | None = None
        self._handles = []
        for i, layer in enumerate(encoder_layers(model)):
            self._handles.append(layer.attention.self.register_forward_hook(self._head_hook(i)))
            self._handles.append(layer.intermediate.register_forward_hook(self._ffn_hook(i)))

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
    def active(self, head: torch.Tensor | None, ffn: torch.Tensor | None) -> Iterator[None]:
        if head is not None and tuple(head.shape) != (self.shape.num_layers, self.shape.num_heads):
            raise ValueError(f"head gates of shape {tuple(head.shape)} for a model of {self.shape}")
        if ffn is not None and tuple(ffn.shape) != (self.shape.num_layers, self.shape.intermediate_size):
            raise ValueError(f"FFN gates of shape {tuple(ffn.shape)} for a model of {self.shape}")
        self._head, self._ffn = head, ffn
        try:
            yield
        finally:
            self._head, self._ffn = None, None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class GateLogits(nn.Module):
    """The learnable alphas of the search: one per head and one per FFN neuron in every layer."""

    def __init__(self, shape: ModelShape, init: float):
        super().__init__()
        self.head = nn.Parameter(torch.full((shape.num_layers, shape.num_heads), float(init)))
        self.ffn = nn.Parameter(torch.full((shape.num_layers, shape.intermediate_size), float(init)))

    def probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(self.head), torch.sigmoid(self.ffn)

    def hard(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The discretised architecture: a group is kept when its gate is above 0.5 (alpha > 0)."""
        return (self.head > 0).float(), (self.ffn > 0).float()
