"""fused_attention / fused_attention_varlen against their PyTorch references.

Shapes stay tiny (the CPU runs these under the Triton interpreter). The main tests force 16-wide
query and key blocks so that T=37 spans three key blocks (the online-softmax rescaling runs) and a
partial last block on both axes; one test keeps the default launch configuration.
"""
from __future__ import annotations

import pytest
import torch

from prunekit_kernels import (
    fused_attention,
    fused_attention_reference,
    fused_attention_varlen,
    fused_attention_varlen_reference,
    unpad_input,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HEAD_DIMS = [26, 32, 64]
HEAD_COUNTS = [1, 5, 12]
SMALL_BLOCKS = dict(block_m=16, block_n=16)


def _mask(batch: int, seqlen: int, device: str) -> torch.Tensor:
    """Lengths at both ends of the range: 1, full, then a left-padded row and a row with holes."""
    m = torch.zeros(batch, seqlen, dtype=torch.bool, device=device)
    m[0, :1] = True
    if batch > 1:
        m[1, :] = True
    if batch > 2:
        m[2, seqlen // 3 :] = True
    if batch > 3:
        m[3] = torch.rand(seqlen, device=device) < 0.5
        m[3, 0] = True
    return m


def _qkv(batch, seqlen, heads, head_dim, dtype, device):
    return torch.randn(batch, seqlen, 3 * heads * head_dim, device=device).to(dtype)


def _nan_like(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _check_padded(qkv, mask, heads, head_dim, check_close, name, scale=None, **launch):
    out = _nan_like((*qkv.shape[:2], heads * head_dim), qkv.dtype, qkv.device)
    res = fused_attention(qkv, mask, heads, head_dim, scale, out=out, **launch)
    assert res.data_ptr() == out.data_ptr()
    ref_hi = fused_attention_reference(qkv.double(), mask, heads, head_dim, scale)
    ref_same = fused_attention_reference(qkv, mask, heads, head_dim, scale, upcast=False)
    check_close(out, ref_hi, ref_same, name)
    return out


@pytest.mark.parametrize("heads", HEAD_COUNTS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_padded_matches_reference(device, check_close, dtype, head_dim, heads):
    batch, seqlen = 3, 37
    qkv = _qkv(batch, seqlen, heads, head_dim, dtype, device)
    mask = _mask(batch, seqlen, device)
    _check_padded(qkv, mask, heads, head_dim, check_close, f"padded {dtype} h={heads} d={head_dim}", **SMALL_BLOCKS)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_no_mask_and_default_launch(device, check_close, dtype):
    qkv = _qkv(2, 40, 4, 32, dtype, device)
    _check_padded(qkv, None, 4, 32, check_close, f"no mask {dtype}")
    _check_padded(qkv, _mask(2, 40, device), 4, 32, check_close, f"mask, default blocks {dtype}")


def test_holes_in_mask_and_custom_scale(device, check_close):
    qkv = _qkv(4, 24, 3, 26, torch.float16, device)
    _check_padded(qkv, _mask(4, 24, device), 3, 26, check_close, "holes + scale", scale=0.3, **SMALL_BLOCKS)


def test_single_token_sequences(device, check_close):
    qkv = _qkv(3, 1, 5, 32, torch.float32, device)
    _check_padded(qkv, torch.ones(3, 1, device=device), 5, 32, check_close, "T=1")


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.int32, torch.float32, torch.float16])
def test_mask_dtypes_agree(device, mask_dtype):
    qkv = _qkv(3, 20, 2, 32, torch.float32, device)
    mask = _mask(3, 20, device)
    expected = fused_attention(qkv, mask, 2, 32)
    got = fused_attention(qkv, mask.to(mask_dtype), 2, 32)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_fully_masked_row_is_zeros(device):
    qkv = _qkv(2, 19, 2, 32, torch.float16, device)
    mask = torch.ones(2, 19, dtype=torch.bool, device=device)
    mask[1] = False
    out = fused_attention(qkv, mask, 2, 32, out=_nan_like((2, 19, 64), torch.float16, device), **SMALL_BLOCKS)
    ref = fused_attention_reference(qkv, mask, 2, 32)
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all() and (ref[1] == 0).all()


def test_strided_qkv_is_read_in_place(device, check_close):
    """qkv as a slice of a wider buffer (row stride != width), e.g. a fused projection's output."""
    heads, head_dim = 3, 26
    big = torch.randn(2, 21, 3 * heads * head_dim + 10, device=device)
    qkv = big[:, :, 5 : 5 + 3 * heads * head_dim]
    assert not qkv.is_contiguous()
    _check_padded(qkv, _mask(2, 21, device), heads, head_dim, check_close, "strided", **SMALL_BLOCKS)


def _varlen_case(lengths, heads, head_dim, dtype, device):
    batch, seqlen = len(lengths), max(max(lengths), 1)
    mask = torch.zeros(batch, seqlen, dtype=torch.bool, device=device)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    qkv = _qkv(batch, seqlen, heads, head_dim, dtype, device)
    packed, indices, cu_seqlens, max_seqlen = unpad_input(qkv, mask)
    return qkv, mask, packed, cu_seqlens, max_seqlen


@pytest.mark.parametrize("heads", HEAD_COUNTS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_varlen_matches_reference(device, check_close, dtype, head_dim, heads):
    qkv, mask, packed, cu, max_seqlen = _varlen_case([1, 37, 20], heads, head_dim, dtype, device)
    out = _nan_like((packed.shape[0], heads * head_dim), dtype, device)
    fused_attention_varlen(packed, cu, max_seqlen, heads, head_dim, out=out, **SMALL_BLOCKS)
    ref_hi = fused_attention_varlen_reference(packed.double(), cu, max_seqlen, heads, head_dim)
    ref_same = fused_attention_varlen_reference(packed, cu, max_seqlen, heads, head_dim, upcast=False)
    check_close(out, ref_hi, ref_same, f"varlen {dtype} h={heads} d={head_dim}")


def test_varlen_agrees_with_padded(device):
    """The same real tokens give the same context through either entry point."""
    qkv, mask, packed, cu, max_seqlen = _varlen_case([5, 1, 33], 5, 26, torch.float32, device)
    padded = fused_attention(qkv, mask, 5, 26, **SMALL_BLOCKS)
    varlen = fused_attention_varlen(packed, cu, max_seqlen, 5, 26, **SMALL_BLOCKS)
    torch.testing.assert_close(varlen, padded[mask], rtol=1e-5, atol=1e-6)


def test_varlen_empty_sequence_and_default_launch(device, check_close):
    qkv, mask, packed, cu, max_seqlen = _varlen_case([3, 0, 29], 4, 32, torch.float16, device)
    assert cu.tolist() == [0, 3, 3, 32]
    out = fused_attention_varlen(packed, cu, max_seqlen, 4, 32, out=_nan_like((32, 128), torch.float16, device))
    ref_hi = fused_attention_varlen_reference(packed.double(), cu, max_seqlen, 4, 32)
    ref_same = fused_attention_varlen_reference(packed, cu, max_seqlen, 4, 32, upcast=False)
    check_close(out, ref_hi, ref_same, "varlen with an empty sequence")


def test_reference_of_fully_masked_batch_is_zeros():
    qkv = torch.randn(1, 4, 3 * 2 * 8)
    out = fused_attention_reference(qkv, torch.zeros(1, 4), 2, 8)
    assert (out == 0).all()


# ---------------------------------------------------------------------------------------------
# Launcher errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: (torch.randn(4, 3 * 2 * 32, device=d), None, 2, 32), r"\[B, T, 3\*num_heads\*head_dim\]"),
        (lambda d: (torch.randn(1, 4, 3 * 2 * 32, device=d), None, 3, 32), r"head count or head dim does not match"),
        (lambda d: (torch.randn(1, 4, 3 * 2 * 32, device=d), None, 2, 26), r"3 \* 2 \* 26 = 156"),
        (lambda d: (torch.randn(1, 4, 192, device=d, dtype=torch.float64), None, 2, 32), r"float64 is not supported"),
        (lambda d: (torch.randint(0, 3, (1, 4, 192), device=d), None, 2, 32), r"int64 is not supported"),
        (lambda d: (torch.randn(1, 4, 192, device=d), torch.ones(1, 5, device=d), 2, 32), r"attention_mask must have shape"),
        (lambda d: (torch.randn(1, 4, 192, device=d), None, 0, 32), r"must be >= 1"),
    ],
    ids=["ndim", "heads-vs-width", "head-dim-vs-width", "float64", "int", "mask-shape", "zero-heads"],
)
def test_padded_launcher_errors(device, make, match):
    qkv, mask, heads, head_dim = make(device)
    with pytest.raises(ValueError, match=match):
        fused_attention(qkv, mask, heads, head_dim)


def test_out_buffer_errors(device):
    qkv = torch.randn(1, 4, 192, device=device)
    with pytest.raises(ValueError, match="out must be"):
        fused_attention(qkv, None, 2, 32, out=torch.empty(1, 4, 32, device=device))
    with pytest.raises(ValueError, match="out must be"):
        fused_attention(qkv, None, 2, 32, out=torch.empty(1, 4, 64, device=device, dtype=torch.float16))


def test_varlen_launcher_errors(device):
    packed = torch.randn(10, 3 * 2 * 32, device=device)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="int32"):
        fused_attention_varlen(packed, cu.long(), 6, 2, 32)
    with pytest.raises(ValueError, match=r"\[total_tokens, 3\*num_heads\*head_dim\]"):
        fused_attention_varlen(packed.unsqueeze(0), cu, 6, 2, 32)
    with pytest.raises(ValueError, match="does not match"):
        fused_attention_varlen(packed, cu, 6, 4, 32)
    with pytest.raises(ValueError, match="1-D int32"):
        fused_attention_varlen(packed, cu.view(1, 3), 6, 2, 32)


def test_wrong_device_error(device):
    other = "cpu" if device == "cuda" else ("cuda" if torch.cuda.is_available() else None)
    if other is None:
        pytest.skip("needs a second device type to hand the kernel the wrong one")
    with pytest.raises(ValueError, match="CUDA tensors|CPU tensors"):
        fused_attention(torch.randn(1, 4, 192, device=other), None, 2, 32)


def test_single_token_slice_and_batch_gaps(device, check_close):
    """T == 1 cut out of a longer batch, and batches that are not T rows apart: both are read right."""
    big = torch.randn(3, 5, 3 * 2 * 32, device=device)
    _check_padded(big[:, 2:3], None, 2, 32, check_close, "T=1 slice")
    _check_padded(big[:, 1:4], torch.ones(3, 3, device=device), 2, 32, check_close, "T=3 slice")


def test_triton_available_says_why():
    from prunekit_kernels import triton_available

    ok, reason = triton_available()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason
    ok_meta, _ = triton_available("meta")
    assert ok_meta is False
