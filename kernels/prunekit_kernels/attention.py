"""Fused multi-head self-attention forward for a bidirectional encoder, beside its PyTorch reference.

One launch handles one layer with that layer's own head count (a compact model's layers differ),
reading Q, K and V straight out of the packed output of the layer's single QKV projection:

    qkv[..., 0 * H*D + h*D : 0 * H*D + (h+1)*D]   query of head h
    qkv[..., 1 * H*D + h*D : 1 * H*D + (h+1)*D]   key of head h
    qkv[..., 2 * H*D + h*D : 2 * H*D + (h+1)*D]   value of head h

and writing the context as [..., H*D] with head h at columns h*D..(h+1)*D, the layout the output
projection reads. No split, transpose or contiguous copy happens around the kernel.

The kernel is the flash-attention forward (online softmax, fp32 statistics and accumulator,
``exp2`` with the softmax scale folded in by log2(e)). Two entry points:

* :func:`fused_attention` — a padded batch ``[B, T, 3*H*D]`` with an optional key-padding mask
  ``[B, T]`` (any 0/1 pattern, not only right padding). Query rows at padded positions are computed
  like any other row (they attend to the valid keys), so they are finite; a row whose keys are all
  masked gets zeros (the reference agrees).
* :func:`fused_attention_varlen` — tokens packed without padding (``[N, 3*H*D]`` plus
  ``cu_seqlens``, see :mod:`prunekit_kernels.padding`), the way ``flash_attn_varlen_func`` takes
  them: programs whose query block starts past their sequence's end exit at once, so a batch costs
  what its real tokens cost.

References: ``fused_attention_reference`` and ``fused_attention_varlen_reference`` take the same
arguments; with ``upcast=True`` (default) they compute in fp32 (fp64 for fp64 input) and return the
input dtype, with ``upcast=False`` they compute in the input dtype, which is what the tests use to
measure how much a same-precision PyTorch computation errs.
"""
from __future__ import annotations

import functools
import math

import torch

try:  # Triton is Linux-only; the references must stay usable without it.
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on machines without triton
    triton = None
    tl = None
    _HAS_TRITON = False

__all__ = [
    "fused_attention",
    "fused_attention_reference",
    "fused_attention_varlen",
    "fused_attention_varlen_reference",
]

_LOG2E = 1.4426950408889634
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_HEAD_DIM = 256


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------
if _HAS_TRITON:

    @triton.jit
    def _attn_key_loop(
        acc, l_i, m_i, q,
        k_ptr, v_ptr, mask_ptr,
        stride_t, stride_mask_t,
        seqlen, qk_scale,
        HEAD_DIM: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        HAS_MASK: tl.constexpr,
        FP32_DOT: tl.constexpr,
        WIDEN_DOT: tl.constexpr,
    ):
        """Online softmax over all key blocks of one sequence for one block of queries."""
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        for start_n in range(0, seqlen, BLOCK_N):
            cols = start_n + offs_n
            col_ok = cols < seqlen
            kv_offs = cols[:, None] * stride_t + offs_d[None, :]
            if HEAD_DIM == BLOCK_D:
                kv_mask = col_ok[:, None]
            else:
                kv_mask = col_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
            k = tl.load(k_ptr + kv_offs, mask=kv_mask, other=0.0)
            if WIDEN_DOT:
                k = k.to(tl.float32)
            if FP32_DOT:
                # fp32 inputs: full precision, not TF32, so fp32 matches an fp32 reference.
                qk = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                qk = tl.dot(q, tl.trans(k))
            if HAS_MASK:
                key_valid = tl.load(mask_ptr + cols * stride_mask_t, mask=col_ok, other=0)
                col_ok = col_ok & (key_valid != 0)
            # Scores in log2 units: softmax(x * scale) == exp2(x * scale * log2(e)) / sum(...).
            qk = tl.where(col_ok[None, :], qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            # A row with no valid key so far has m_new == -inf: subtract 0 instead, so that
            # exp2(-inf - 0) = 0 rather than exp2(-inf + inf) = NaN.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + kv_offs, mask=kv_mask, other=0.0)
            if WIDEN_DOT:
                # Same rounding of P as the compiled path, then the product in fp32.
                p_in = p.to(v.dtype).to(tl.float32)
                acc = acc * alpha[:, None] + tl.dot(p_in, v.to(tl.float32))
            elif FP32_DOT:
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            else:
                # P in the input precision on the tensor cores, accumulated in fp32.
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        return acc, l_i

    @triton.jit
    def _attn_block(
        qkv_ptr, out_ptr, mask_ptr,
        stride_t, stride_out_t, stride_mask_t,
        seqlen, start_m, head, num_heads, qk_scale,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        HAS_MASK: tl.constexpr,
        FP32_DOT: tl.constexpr,
        WIDEN_DOT: tl.constexpr,
    ):
        """One (sequence, head, query block): qkv_ptr/out_ptr point at the sequence's first token."""
        hidden = num_heads * HEAD_DIM
        q_ptr = qkv_ptr + head * HEAD_DIM
        k_ptr = q_ptr + hidden
        v_ptr = k_ptr + hidden
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        row_ok = offs_m < seqlen
        if HEAD_DIM == BLOCK_D:
            io_mask = row_ok[:, None]
        else:
            io_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
        q = tl.load(q_ptr + offs_m[:, None] * stride_t + offs_d[None, :], mask=io_mask, other=0.0)
        if WIDEN_DOT:
            q = q.to(tl.float32)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        acc, l_i = _attn_key_loop(
            acc, l_i, m_i, q, k_ptr, v_ptr, mask_ptr, stride_t, stride_mask_t, seqlen, qk_scale,
            HEAD_DIM, BLOCK_N, BLOCK_D, HAS_MASK, FP32_DOT, WIDEN_DOT,
        )
        # A fully masked row has l_i == 0 and acc == 0: it comes out as zeros, not NaN.
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        o_ptr = out_ptr + head * HEAD_DIM + offs_m[:, None] * stride_out_t + offs_d[None, :]
        tl.store(o_ptr, out.to(out_ptr.dtype.element_ty), mask=io_mask)

    # Integer arguments that vary from call to call are not specialised (Triton would otherwise
    # compile a variant for each value that is 1 or a multiple of 16); the row strides are, since
    # their divisibility is what lets loads and stores vectorise.
    @triton.jit(do_not_specialize=["stride_mask_b", "stride_mask_t", "seqlen", "num_heads", "num_m_blocks"])
    def _fused_attention_kernel(
        QKV, MASK, OUT,
        stride_qkv_t, stride_mask_b, stride_mask_t, stride_out_t,
        seqlen, num_heads, num_m_blocks, qk_scale,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        HAS_MASK: tl.constexpr,
        FP32_DOT: tl.constexpr,
        WIDEN_DOT: tl.constexpr,
    ):
        # 1-D grid, query blocks of one (batch, head) adjacent so that they share K/V in L2.
        pid = tl.program_id(0)
        start_m = pid % num_m_blocks
        bh = pid // num_m_blocks
        batch = bh // num_heads
        head = bh % num_heads
        # Batch offsets as (batch * T) rows: the launcher guarantees stride_b == T * stride_t, and
        # this form lets the compiler see that they keep the row stride's alignment.
        first_row = batch.to(tl.int64) * seqlen
        qkv_ptr = QKV + first_row * stride_qkv_t
        out_ptr = OUT + first_row * stride_out_t
        mask_ptr = MASK + batch.to(tl.int64) * stride_mask_b
        _attn_block(
            qkv_ptr, out_ptr, mask_ptr, stride_qkv_t, stride_out_t, stride_mask_t,
            seqlen, start_m, head, num_heads, qk_scale,
            HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, HAS_MASK, FP32_DOT, WIDEN_DOT,
        )

    @triton.jit(do_not_specialize=["num_heads", "num_m_blocks"])
    def _fused_attention_varlen_kernel(
        QKV, CU_SEQLENS, OUT,
        stride_qkv_t, stride_out_t,
        num_heads, num_m_blocks, qk_scale,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        FP32_DOT: tl.constexpr,
        WIDEN_DOT: tl.constexpr,
    ):
        pid = tl.program_id(0)
        start_m = pid % num_m_blocks
        bh = pid // num_m_blocks
        seq = bh // num_heads
        head = bh % num_heads
        seq_start = tl.load(CU_SEQLENS + seq)
        seqlen = tl.load(CU_SEQLENS + seq + 1) - seq_start
        # The grid is sized for the longest sequence; shorter ones leave their tail blocks idle.
        if start_m * BLOCK_M >= seqlen:
            return
        qkv_ptr = QKV + seq_start.to(tl.int64) * stride_qkv_t
        out_ptr = OUT + seq_start.to(tl.int64) * stride_out_t
        _attn_block(
            qkv_ptr, out_ptr, qkv_ptr, stride_qkv_t, stride_out_t, 0,
            seqlen, start_m, head, num_heads, qk_scale,
            HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, False, FP32_DOT, WIDEN_DOT,
        )


# --------------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------------
def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _interpreted() -> bool:
    """True when the kernels were defined under TRITON_INTERPRET=1 (they run on CPU tensors)."""
    return _HAS_TRITON and type(_fused_attention_kernel).__name__ == "InterpretedFunction"


def _widen_dot(dtype: torch.dtype) -> bool:
    """The interpreter's tl.dot multiplies bf16 bit patterns as integers (it stores bf16 as
    uint16), so under TRITON_INTERPRET bf16 operands are widened to fp32 before each dot.
    Compiled kernels never take this path."""
    return dtype == torch.bfloat16 and _interpreted()


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return _num_sms_cached(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _num_sms_cached(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _launch_config(
    max_seqlen: int,
    num_programs_per_m_block: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    block_m: int | None,
    block_n: int | None,
    num_warps: int | None,
    num_stages: int | None,
) -> tuple[int, int, int, int, int]:
    """Block sizes for T <= 512 and head dims <= 64 on Hopper/Ampere; callers may override each.

    Measured (benchmarks/results/gpu_kernels_h200_run1.md, H200, fp16, T=128, masked): when the
    grid fills the GPU, 128-row query blocks over 32-key blocks with 4 warps and 2 stages are the
    fastest of the configs swept for h=12 at B=128: 0.051 vs 0.090 ms (the former 128x64 w8
    default) at d=64, 0.036 vs 0.059 at d=32, 0.054 vs 0.093 at d=26; at B=32, d=64 0.017 vs 0.027.
    32-key blocks keep the score tile at 128x32, so 4 warps hold it without spilling. On small
    grids 64x64 with 4 warps stays (within 10% of the best there). fp32 runs its dots in full
    precision on CUDA cores, which spills above 32x32 tiles.
    """
    block_d = max(16, _next_pow2(head_dim))  # tl.dot needs every dimension >= 16
    if _interpreted():
        # Interpreter: fewer, larger programs run faster; nothing here is about the hardware.
        bm = bn = min(64, max(16, _next_pow2(max_seqlen)))
        return block_m or bm, block_n or bn, block_d, num_warps or 4, num_stages or 1
    if dtype == torch.float32:
        bm, bn, warps = 32, 32, 4
    else:
        # 128-row query blocks halve the K/V reloads but only pay when the grid still fills
        # the GPU about twice over; otherwise use 64 rows and twice as many programs.
        enough = num_programs_per_m_block * triton.cdiv(max_seqlen, 128) >= 2 * _num_sms(device)
        big = max_seqlen > 64 and enough and block_d <= 64
        bm, bn, warps = (128, 32, 4) if big else (64, 64, 4)
        if block_d > 64:
            bn = 32
    block_m = block_m or bm
    block_n = block_n or bn
    # An overridden block size gets the warps that suit it: 8 only for 128x64 and larger tiles.
    num_warps = num_warps or (warps if (block_m, block_n) == (bm, bn) else (8 if block_m * block_n >= 128 * 64 else 4))
    num_stages = num_stages or (2 if max_seqlen <= 128 else 3)
    return block_m, block_n, block_d, num_warps, num_stages


def _check_common(
    name: str, qkv: torch.Tensor, num_heads: int, head_dim: int, expected_ndim: int
) -> None:
    if not _HAS_TRITON:
        raise ValueError(f"{name}: triton is not installed; use {name}_reference instead")
    if not isinstance(qkv, torch.Tensor):
        raise ValueError(f"{name}: qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if qkv.dim() != expected_ndim:
        shape = "[B, T, 3*num_heads*head_dim]" if expected_ndim == 3 else "[total_tokens, 3*num_heads*head_dim]"
        raise ValueError(f"{name}: qkv must have shape {shape}, got {tuple(qkv.shape)}")
    if qkv.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(
            f"{name}: qkv dtype {qkv.dtype} is not supported; use float32, float16 or bfloat16"
        )
    if int(num_heads) < 1 or int(head_dim) < 1:
        raise ValueError(f"{name}: num_heads and head_dim must be >= 1, got {num_heads} and {head_dim}")
    if head_dim > _MAX_HEAD_DIM:
        raise ValueError(f"{name}: head_dim {head_dim} > {_MAX_HEAD_DIM} is not supported")
    if qkv.shape[-1] != 3 * num_heads * head_dim:
        raise ValueError(
            f"{name}: qkv's last dim is {qkv.shape[-1]} but 3 * num_heads * head_dim = "
            f"3 * {num_heads} * {head_dim} = {3 * num_heads * head_dim}; the head count or head "
            "dim does not match this layer's QKV projection"
        )
    _check_device(name, qkv.device)


def _check_device(name: str, device: torch.device) -> None:
    if _interpreted():
        if device.type != "cpu":
            raise ValueError(
                f"{name}: kernels were loaded under TRITON_INTERPRET=1 and run on CPU tensors; "
                f"got a tensor on {device}"
            )
    elif device.type != "cuda":
        raise ValueError(
            f"{name}: Triton kernels need CUDA tensors, got {device}. On a CPU-only machine set "
            f"TRITON_INTERPRET=1 in the environment before Python starts (set later in a running process, the attention kernel fails; slow), or call {name}_reference"
        )


def _check_out(name: str, out: torch.Tensor | None, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    if tuple(out.shape) != tuple(shape) or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(
            f"{name}: out must be {tuple(shape)} {like.dtype} on {like.device}, got "
            f"{tuple(out.shape)} {out.dtype} on {out.device}"
        )
    if not out.is_contiguous():
        raise ValueError(f"{name}: out must be contiguous")
    return out


def _row_stride(t: torch.Tensor) -> int:
    """Distance between consecutive tokens of [B, T, W]; with T == 1 the next token is the next
    sequence's (torch reports an arbitrary stride for a size-1 dim)."""
    return t.stride(1) if t.shape[1] > 1 else t.stride(0)


def _default_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------
def fused_attention(
    qkv: torch.Tensor,
    attention_mask: torch.Tensor | None,
    num_heads: int,
    head_dim: int,
    scale: float | None = None,
    *,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Self-attention of a padded batch straight from its packed QKV projection.

    Args:
        qkv: ``[B, T, 3*num_heads*head_dim]``, layout ``[Q heads | K heads | V heads]``;
            fp32, fp16 or bf16; its last dim must have stride 1 (copied otherwise).
        attention_mask: ``[B, T]`` key-padding mask (nonzero = attend), bool/int/float, or None.
        num_heads, head_dim: this layer's head count and head size.
        scale: softmax scale, default ``1/sqrt(head_dim)``.
        out: optional contiguous ``[B, T, num_heads*head_dim]`` output buffer (same dtype).
        block_m, block_n, num_warps, num_stages: launch overrides for tuning (defaults suit
            T <= 512, head_dim <= 64).

    Returns:
        The context, ``[B, T, num_heads*head_dim]`` contiguous, dtype of ``qkv``.
    """
    name = "fused_attention"
    _check_common(name, qkv, num_heads, head_dim, expected_ndim=3)
    batch, seqlen, _ = qkv.shape
    if qkv.stride(-1) != 1 or (batch > 1 and seqlen > 1 and qkv.stride(0) != seqlen * qkv.stride(1)):
        qkv = qkv.contiguous()  # rows must be evenly spaced; slices of the last dim stay views
    has_mask = attention_mask is not None
    if has_mask:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (batch, seqlen):
            got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
            raise ValueError(f"{name}: attention_mask must have shape [B, T] = {(batch, seqlen)}, got {got}")
        if attention_mask.device != qkv.device:
            raise ValueError(f"{name}: attention_mask is on {attention_mask.device} but qkv on {qkv.device}")
        if attention_mask.is_complex():
            raise ValueError(f"{name}: attention_mask must be bool, integer or float, got {attention_mask.dtype}")
        mask = attention_mask.view(torch.uint8) if attention_mask.dtype == torch.bool else attention_mask
        stride_mask_b, stride_mask_t = mask.stride()
    else:
        mask = qkv  # never read: HAS_MASK=False removes the loads
        stride_mask_b = stride_mask_t = 0
    out = _check_out(name, out, (batch, seqlen, num_heads * head_dim), qkv)
    if batch == 0 or seqlen == 0:
        return out

    bm, bn, bd, warps, stages = _launch_config(
        seqlen, batch * num_heads, head_dim, qkv.dtype, qkv.device, block_m, block_n, num_warps, num_stages
    )
    num_m_blocks = triton.cdiv(seqlen, bm)
    grid = (num_m_blocks * batch * num_heads,)
    _fused_attention_kernel[grid](
        qkv, mask, out,
        _row_stride(qkv), stride_mask_b, stride_mask_t, _row_stride(out),
        seqlen, num_heads, num_m_blocks, _default_scale(head_dim, scale) * _LOG2E,
        HEAD_DIM=head_dim, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
        HAS_MASK=has_mask, FP32_DOT=qkv.dtype == torch.float32, WIDEN_DOT=_widen_dot(qkv.dtype),
        num_warps=warps, num_stages=stages,
    )
    return out


def fused_attention_varlen(
    qkv_packed: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    num_heads: int,
    head_dim: int,
    scale: float | None = None,
    *,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Self-attention of sequences packed without padding (FlashAttention's varlen layout).

    Args:
        qkv_packed: ``[total_tokens, 3*num_heads*head_dim]``, sequence ``i`` at rows
            ``cu_seqlens[i]:cu_seqlens[i+1]`` (see :func:`prunekit_kernels.unpad_input`).
        cu_seqlens: int32 ``[B+1]``, cumulative lengths starting at 0, on the same device.
        max_seqlen: the longest sequence (sizes the grid; must be >= every length).
        num_heads, head_dim, scale, out, block_*: as in :func:`fused_attention`.

    Returns:
        ``[total_tokens, num_heads*head_dim]`` contiguous, dtype of ``qkv_packed``.
    """
    name = "fused_attention_varlen"
    _check_common(name, qkv_packed, num_heads, head_dim, expected_ndim=2)
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"{name}: cu_seqlens must be a 1-D int32 tensor [B+1]")
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"{name}: cu_seqlens must be int32 (as unpad_input returns), got {cu_seqlens.dtype}")
    if cu_seqlens.device != qkv_packed.device:
        raise ValueError(f"{name}: cu_seqlens is on {cu_seqlens.device} but qkv_packed on {qkv_packed.device}")
    max_seqlen = int(max_seqlen)
    if max_seqlen < 0:
        raise ValueError(f"{name}: max_seqlen must be >= 0, got {max_seqlen}")
    if qkv_packed.stride(-1) != 1:
        qkv_packed = qkv_packed.contiguous()
    cu_seqlens = cu_seqlens.contiguous()
    total = qkv_packed.shape[0]
    batch = cu_seqlens.numel() - 1
    out = _check_out(name, out, (total, num_heads * head_dim), qkv_packed)
    if batch == 0 or total == 0 or max_seqlen == 0:
        return out

    bm, bn, bd, warps, stages = _launch_config(
        max_seqlen, batch * num_heads, head_dim, qkv_packed.dtype, qkv_packed.device, block_m, block_n, num_warps, num_stages
    )
    num_m_blocks = triton.cdiv(max_seqlen, bm)
    grid = (num_m_blocks * batch * num_heads,)
    _fused_attention_varlen_kernel[grid](
        qkv_packed, cu_seqlens, out,
        qkv_packed.stride(0), out.stride(0),
        num_heads, num_m_blocks, _default_scale(head_dim, scale) * _LOG2E,
        HEAD_DIM=head_dim, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
        FP32_DOT=qkv_packed.dtype == torch.float32, WIDEN_DOT=_widen_dot(qkv_packed.dtype),
        num_warps=warps, num_stages=stages,
    )
    return out


# --------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype, upcast: bool) -> torch.dtype:
    if not upcast or dtype == torch.float64:
        return dtype
    return torch.float32


def fused_attention_reference(
    qkv: torch.Tensor,
    attention_mask: torch.Tensor | None,
    num_heads: int,
    head_dim: int,
    scale: float | None = None,
    *,
    upcast: bool = True,
) -> torch.Tensor:
    """Plain PyTorch attention with the kernel's semantics (fully masked rows give zeros)."""
    batch, seqlen, width = qkv.shape
    if width != 3 * num_heads * head_dim:
        raise ValueError(f"qkv's last dim {width} != 3 * {num_heads} * {head_dim}")
    x = qkv.to(_compute_dtype(qkv.dtype, upcast))
    q, k, v = x.view(batch, seqlen, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    scores = torch.matmul(q, k.transpose(-1, -2)) * _default_scale(head_dim, scale)  # [B, H, T, T]
    if attention_mask is not None:
        valid = (attention_mask != 0).view(batch, 1, 1, seqlen)
        scores = scores.masked_fill(~valid, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    # softmax of an all -inf row is NaN; the kernel defines it as zeros.
    probs = torch.nan_to_num(probs, nan=0.0)
    context = torch.matmul(probs, v)  # [B, H, T, D]
    return context.transpose(1, 2).reshape(batch, seqlen, num_heads * head_dim).to(qkv.dtype)


def fused_attention_varlen_reference(
    qkv_packed: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    num_heads: int,
    head_dim: int,
    scale: float | None = None,
    *,
    upcast: bool = True,
) -> torch.Tensor:
    """Per-sequence loop over :func:`fused_attention_reference` (slow, obviously right)."""
    out = qkv_packed.new_zeros(qkv_packed.shape[0], num_heads * head_dim)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            out[start:end] = fused_attention_reference(
                qkv_packed[start:end].unsqueeze(0), None, num_heads, head_dim, scale, upcast=upcast
            )[0]
    return out
