"""unpad_input / pad_input: plain torch, so these run on CPU without Triton."""
from __future__ import annotations

import pytest
import torch

from prunekit_kernels import pad_input, unpad_indices, unpad_input


def _mask_from_lengths(lengths, seqlen):
    return torch.arange(seqlen)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("trailing", [(), (7,), (2, 3)], ids=["[B,T]", "[B,T,H]", "[B,T,2,3]"])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_roundtrip_and_offsets(trailing, mask_dtype):
    lengths, seqlen = [1, 9, 0, 4], 9
    mask = _mask_from_lengths(lengths, seqlen).to(mask_dtype)
    hidden = torch.randn(len(lengths), seqlen, *trailing)
    packed, indices, cu_seqlens, max_seqlen = unpad_input(hidden, mask)

    assert packed.shape == (sum(lengths), *trailing)
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.tolist() == [0, 1, 10, 10, 14]
    assert max_seqlen == 9 and isinstance(max_seqlen, int)
    for b, n in enumerate(lengths):  # each sequence's tokens, in order
        torch.testing.assert_close(packed[cu_seqlens[b] : cu_seqlens[b + 1]], hidden[b, :n], rtol=0, atol=0)

    padded = pad_input(packed, indices, len(lengths), seqlen)
    keep = mask.bool()
    torch.testing.assert_close(padded[keep], hidden[keep], rtol=0, atol=0)
    assert (padded[~keep] == 0).all()


def test_arbitrary_mask_pattern():
    """Left padding and holes: a sequence is its valid positions, in order."""
    mask = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    hidden = torch.arange(12.0).view(3, 4, 1)
    packed, indices, cu, max_seqlen = unpad_input(hidden, mask)
    assert packed.flatten().tolist() == [2, 3, 4, 6, 8, 9, 10, 11]
    assert indices.tolist() == [2, 3, 4, 6, 8, 9, 10, 11]
    assert cu.tolist() == [0, 2, 4, 8] and max_seqlen == 4
    assert pad_input(packed, indices, 3, 4).flatten().tolist() == [0, 0, 2, 3, 4, 0, 6, 0, 8, 9, 10, 11]


def test_all_padding():
    packed, indices, cu, max_seqlen = unpad_input(torch.randn(2, 3, 5), torch.zeros(2, 3))
    assert packed.shape == (0, 5) and indices.numel() == 0 and cu.tolist() == [0, 0, 0] and max_seqlen == 0
    assert (pad_input(packed, indices, 2, 3) == 0).all()


def test_gradients_flow_through_both():
    hidden = torch.randn(2, 5, 3, requires_grad=True)
    mask = _mask_from_lengths([2, 5], 5)
    packed, indices, _, _ = unpad_input(hidden, mask)
    weight = torch.randn_like(packed)
    out = pad_input(packed * weight, indices, 2, 5)
    out.sum().backward()
    expected = torch.zeros(2, 5, 3)
    expected[mask] = weight
    torch.testing.assert_close(hidden.grad, expected)


def test_errors():
    with pytest.raises(ValueError, match=r"attention_mask must be \[B, T\]"):
        unpad_input(torch.randn(2, 5, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"hidden must be \[B, T, ...\]"):
        unpad_input(torch.randn(5), torch.ones(5))
    with pytest.raises(ValueError, match="must agree"):
        pad_input(torch.randn(4, 3), torch.arange(3), 1, 4)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64])
def test_unpad_indices_matches_unpad_input(mask_dtype):
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]).to(mask_dtype)
    hidden = torch.randn(4, 5, 3)
    _, ref_idx, ref_cu, ref_max = unpad_input(hidden, mask)
    idx, cu, max_seqlen = unpad_indices(mask)
    assert idx.tolist() == ref_idx.tolist() and cu.tolist() == ref_cu.tolist() and max_seqlen == ref_max == 5
    # With a capacity: no sync, the real tokens first, then spare rows pointing one past the end.
    idx, cu, max_seqlen = unpad_indices(mask, capacity=13)
    assert idx.shape == (13,) and max_seqlen == 5 and cu.tolist() == ref_cu.tolist()
    assert idx[:9].tolist() == ref_idx.tolist() and (idx[9:] == 20).all()
    rows = hidden.view(20, 3).index_select(0, idx.clamp(max=19))
    padded = pad_input(rows, idx, 4, 5)  # spare rows dropped
    keep = mask.bool()
    torch.testing.assert_close(padded[keep], hidden[keep], rtol=0, atol=0)
    assert (padded[~keep] == 0).all()
    # Exactly full, and a capacity smaller than the real tokens (those past it are dropped).
    assert unpad_indices(mask, capacity=9)[0].tolist() == ref_idx.tolist()
    assert unpad_indices(mask, capacity=4)[0].tolist() == ref_idx[:4].tolist()


def test_unpad_indices_edges():
    idx, cu, m = unpad_indices(torch.zeros(2, 3))
    assert idx.numel() == 0 and cu.tolist() == [0, 0, 0] and m == 0
    idx, cu, m = unpad_indices(torch.zeros(0, 4))
    assert idx.numel() == 0 and cu.tolist() == [0] and m == 0
    idx, _, _ = unpad_indices(torch.zeros(2, 3), capacity=2)
    assert idx.tolist() == [6, 6]
    with pytest.raises(ValueError, match="must be >= 0"):
        unpad_indices(torch.ones(2, 3), capacity=-1)
    with pytest.raises(ValueError, match=r"must be \[B, T\]"):
        unpad_indices(torch.ones(6))
