"""Pad/unpad helpers for the varlen (packed-token) path, in one place.

Follows flash-attention's ``flash_attn/bert_padding.py``: ``unpad_input`` gathers the valid tokens
of a padded batch into ``[total_tokens, ...]`` and returns the flat indices they came from plus the
cumulative sequence offsets (``cu_seqlens``) that :func:`prunekit_kernels.fused_attention_varlen`
takes; ``pad_input`` scatters them back with zeros at the padding. Plain torch (index_select /
index_copy), differentiable, device-agnostic.

:func:`unpad_indices` is the form the compact model uses: it returns only the flat indices,
``cu_seqlens`` and ``max_seqlen`` (the caller gathers what it needs, e.g. the token ids rather than
hidden states); without a capacity it syncs with the host once (``unpad_input`` twice), and
given a ``capacity`` it makes no host synchronisation and its shapes do not depend on the mask, so
it can be captured in a CUDA graph: the real tokens fill the first rows, the rest are "spare" rows
whose index is ``B*T`` (one past the last position), which :func:`pad_input` drops.

The mask may be any 0/1 pattern (left, right or holes): a sequence's tokens are its valid positions
in order, which is what the padded kernel computes too (padding keys are ignored, positions are not
re-numbered; position embeddings are added before attention).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["unpad_input", "unpad_indices", "pad_input"]


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


def unpad_indices(
    attention_mask: torch.Tensor, capacity: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Flat indices of the real tokens of a ``[B, T]`` mask, ``cu_seqlens`` and ``max_seqlen``.

    Args:
        attention_mask: ``[B, T]``, nonzero (or True) at real tokens.
        capacity: rows to return. None: exactly the real tokens, at the cost of one host sync
            (which also gives the exact ``max_seqlen``). An int: that many rows with no host sync
            and shapes that do not depend on the mask (CUDA-graph safe): rows past the real tokens
            are spare (index ``B*T``), real tokens past ``capacity`` are dropped (so pass
            ``capacity >= attention_mask.count_nonzero()``), and ``max_seqlen`` is ``T``.

    Returns:
        ``(indices int64 [rows], cu_seqlens int32 [B+1], max_seqlen)``; ``cu_seqlens[-1]`` counts
        the real tokens (rows past it are spare).
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"unpad_indices: attention_mask must be [B, T], got {tuple(attention_mask.shape)}")
    batch, seqlen = attention_mask.shape
    valid = (attention_mask != 0).flatten()
    seqlens = valid.view(batch, seqlen).sum(dim=-1, dtype=torch.int32)
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    total = valid.numel()
    if capacity is None:
        if total == 0:
            return torch.zeros(0, dtype=torch.int64, device=valid.device), cu_seqlens, 0
        capacity, max_seqlen = torch.stack((cu_seqlens[-1], seqlens.max())).tolist()  # the one sync
    else:
        capacity, max_seqlen = int(capacity), seqlen
        if capacity < 0:
            raise ValueError(f"unpad_indices: capacity must be >= 0, got {capacity}")
    # Row of each real token = the number of real tokens before it; everything else goes to one
    # overflow slot past the end (written many times, then cut off). No nonzero(): no sync.
    row = torch.cumsum(valid, dim=0) - 1
    row = torch.where(valid & (row < capacity), row, capacity)
    indices = torch.full((capacity + 1,), total, dtype=torch.int64, device=valid.device)
    indices.scatter_(0, row, torch.arange(total, device=valid.device))
    return indices[:capacity], cu_seqlens, int(max_seqlen)


def pad_input(packed: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of :func:`unpad_input`: ``[N, ...]`` -> ``[batch, seqlen, ...]``, zeros at padding.

    Rows whose index is ``batch * seqlen`` (the spare rows of :func:`unpad_indices` with a
    capacity) are dropped."""
    if packed.dim() < 1 or indices.dim() != 1 or packed.shape[0] != indices.shape[0]:
        raise ValueError(
            f"pad_input: packed [N, ...] and indices [N] must agree, got {tuple(packed.shape)} "
            f"and {tuple(indices.shape)}"
        )
    if indices.device != packed.device:
        raise ValueError(f"pad_input: indices are on {indices.device} but packed on {packed.device}")
    out = packed.new_zeros(batch * seqlen + 1, *packed.shape[1:])  # + 1: where spare rows land
    out.index_copy_(0, indices, packed)  # in place: no second B*T-row buffer
    return out[: batch * seqlen].view(batch, seqlen, *packed.shape[1:])
