"""Pad/unpad helpers for the varlen (packed-token) path, in one place.

Follows flash-attention's ``flash_attn/bert_padding.py``: ``unpad_input`` gathers the valid tokens
of a padded batch into ``[total_tokens, ...]`` and returns the flat indices they came from plus the
cumulative sequence offsets (``cu_seqlens``) that :func:`prunekit_kernels.fused_attention_varlen`
takes; ``pad_input`` scatters them back with zeros at the padding. Plain torch (index_select /
index_copy), differentiable, device-agnostic.

The mask may be any 0/1 pattern (left, right or holes): a sequence's tokens are its valid positions
in order, which is what the padded kernel computes too (padding keys are ignored, positions are not
re-numbered; position embeddings are added before attention).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["unpad_input", "pad_input"]


def unpad_input(
    hidden: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Drop the padding of a batch.

    Args:
        hidden: ``[B, T, ...]``.
        attention_mask: ``[B, T]``, nonzero (or True) at real tokens.

    Returns:
        ``(packed [N, ...], indices [N] int64 into the flattened B*T positions,
        cu_seqlens int32 [B+1], max_seqlen)`` where ``N`` is the number of real tokens.
    """
    if hidden.dim() < 2:
        raise ValueError(f"unpad_input: hidden must be [B, T, ...], got shape {tuple(hidden.shape)}")
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"unpad_input: attention_mask must be [B, T] = {tuple(hidden.shape[:2])}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask.device != hidden.device:
        raise ValueError(
            f"unpad_input: attention_mask is on {attention_mask.device} but hidden on {hidden.device}"
        )
    valid = attention_mask != 0
    seqlens = valid.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(valid.flatten(), as_tuple=False).flatten()
    max_seqlen = int(seqlens.max().item()) if seqlens.numel() else 0
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    packed = hidden.reshape(-1, *hidden.shape[2:]).index_select(0, indices)
    return packed, indices, cu_seqlens, max_seqlen


def pad_input(packed: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of :func:`unpad_input`: ``[N, ...]`` -> ``[batch, seqlen, ...]``, zeros at padding."""
    if packed.dim() < 1 or indices.dim() != 1 or packed.shape[0] != indices.shape[0]:
        raise ValueError(
            f"pad_input: packed [N, ...] and indices [N] must agree, got {tuple(packed.shape)} "
            f"and {tuple(indices.shape)}"
        )
    if indices.device != packed.device:
        raise ValueError(f"pad_input: indices are on {indices.device} but packed on {packed.device}")
    out = packed.new_zeros(batch * seqlen, *packed.shape[1:])
    out = out.index_copy(0, indices, packed)
    return out.view(batch, seqlen, *packed.shape[1:])
