"""Fused epilogues of a BERT layer's GEMMs, beside their PyTorch references.

* :func:`bias_gelu` — ``gelu(x + bias)`` with the exact erf GELU (BERT's ``"gelu"``), the epilogue
  of the FFN's first projection.
* :func:`bias_residual_layernorm` — ``LayerNorm(x + bias + residual)``, the epilogue of the
  attention output projection and of the FFN's second projection (BERT is post-LN).

Both are row-wise over the last dim (hidden sizes such as 312/384/768, not powers of two, and FFN
widths up to a few thousand), take any leading shape, and keep fp32 arithmetic and statistics for
fp16/bf16 inputs, rounding once at the store. ``bias`` may be None (no bias); the LayerNorm weight
and bias may be in another float dtype than ``x`` (e.g. fp32 parameters with fp16 activations).

References: ``bias_gelu_reference`` and ``bias_residual_layernorm_reference`` take the same
arguments; ``upcast=True`` (default) computes in fp32, ``upcast=False`` in the input dtype, which is
what a same-precision PyTorch model would do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # Triton is Linux-only; the references must stay usable without it.
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except ImportError:  # pragma: no cover
    triton = None
    tl = None
    _HAS_TRITON = False

__all__ = [
    "bias_gelu",
    "bias_gelu_reference",
    "bias_residual_layernorm",
    "bias_residual_layernorm_reference",
]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_LN_WIDTH = 65536  # one row lives in registers; wider rows would spill badly


if _HAS_TRITON:

    # The row count varies per call: not specialised (no recompiles). The width and the row
    # strides are: their divisibility by 16 is what lets loads and stores vectorise.
    @triton.jit(do_not_specialize=["n_rows"])
    def _bias_gelu_kernel(
        X, BIAS, OUT,
        n_rows, n_cols, stride_x, stride_out,
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # 2-D tiles: elementwise, so any tiling works; the bias tile is loaded once per tile.
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < n_cols
        mask = (rows[:, None] < n_rows) & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            b = tl.load(BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)
            x = x + b[None, :]
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))  # x * 1/sqrt(2)
        tl.store(OUT + rows64[:, None] * stride_out + cols[None, :], y.to(OUT.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["n_rows"])
    def _bias_residual_layernorm_kernel(
        X, BIAS, RES, W, LN_B, OUT,
        n_rows, n_cols, stride_x, stride_res, stride_out, eps,
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # BLOCK_M whole rows per program (several short rows, or one long one).
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        col_ok = cols < n_cols
        mask = (rows[:, None] < n_rows) & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        r = tl.load(RES + rows64[:, None] * stride_res + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = x + r
        if HAS_BIAS:
            b = tl.load(BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)
            x = x + b[None, :]
        # Two-pass statistics in fp32 (the row is in registers, so the second pass is free).
        mean = tl.sum(x, axis=1) / n_cols
        xc = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / n_cols
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        lb = tl.load(LN_B + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :] + lb[None, :]
        tl.store(OUT + rows64[:, None] * stride_out + cols[None, :], y.to(OUT.dtype.element_ty), mask=mask)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _interpreted() -> bool:
    return _HAS_TRITON and type(_bias_gelu_kernel).__name__ == "InterpretedFunction"


def _check_tensor(name: str, what: str, t: torch.Tensor, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"{name}: {what} dtype {t.dtype} is not supported; use float32, float16 or bfloat16")
    if t.device != device:
        raise ValueError(f"{name}: {what} is on {t.device} but x is on {device}")


def _check_x(name: str, x: torch.Tensor) -> None:
    if not _HAS_TRITON:
        raise ValueError(f"{name}: triton is not installed; use {name}_reference instead")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name}: x must have a non-empty last dim, got shape {tuple(x.shape)}")
    _check_tensor(name, "x", x, x.device)
    if _interpreted():
        if x.device.type != "cpu":
            raise ValueError(f"{name}: kernels were loaded under TRITON_INTERPRET=1 and take CPU tensors, got {x.device}")
    elif x.device.type != "cuda":
        raise ValueError(
            f"{name}: Triton kernels need CUDA tensors, got {x.device}. On a CPU-only machine set "
            f"TRITON_INTERPRET=1 in the environment before Python starts (set later in a running process, the attention kernel fails; slow), or call {name}_reference"
        )


def _check_vector(name: str, what: str, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    _check_tensor(name, what, v, x.device)
    if v.dim() != 1 or v.shape[0] != x.shape[-1]:
        raise ValueError(f"{name}: {what} must have shape [{x.shape[-1]}] (x's last dim), got {tuple(v.shape)}")
    return v.contiguous()


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., N] -> [M, N] with unit column stride (a view whenever possible)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _check_out(name: str, out: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(
            f"{name}: out must be {tuple(x.shape)} {x.dtype} on {x.device}, got "
            f"{tuple(out.shape)} {out.dtype} on {out.device}"
        )
    if not out.is_contiguous():
        raise ValueError(f"{name}: out must be contiguous")
    return out


def bias_gelu(
    x: torch.Tensor, bias: torch.Tensor | None, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``gelu(x + bias)`` (exact erf GELU) over the last dim; ``x`` is ``[..., N]``, bias ``[N]``."""
    name = "bias_gelu"
    _check_x(name, x)
    if bias is not None:
        bias = _check_vector(name, "bias", bias, x)
    out = _check_out(name, out, x)
    if x.numel() == 0:
        return out
    x2, o2 = _rows(x), out.view(-1, x.shape[-1])
    n_rows, n_cols = x2.shape
    block_n = min(256, _next_pow2(n_cols))
    block_m = max(1, min(64, 4096 // block_n))
    if _interpreted():
        block_n = _next_pow2(n_cols)
        block_m = max(1, min(_next_pow2(n_rows), 8192 // block_n))
    grid = (triton.cdiv(n_rows, block_m), triton.cdiv(n_cols, block_n))
    _bias_gelu_kernel[grid](
        x2, bias if bias is not None else x2, o2,
        n_rows, n_cols, x2.stride(0), o2.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=4,
    )
    return out


def bias_residual_layernorm(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float = 1e-12,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``LayerNorm(x + bias + residual)`` over the last dim, statistics in fp32.

    ``x`` and ``residual`` are ``[..., N]`` of one dtype; ``bias`` (or None), ``weight`` and
    ``ln_bias`` are ``[N]``. Returns ``x``'s shape and dtype. ``eps`` defaults to BERT's 1e-12.
    """
    name = "bias_residual_layernorm"
    _check_x(name, x)
    _check_tensor(name, "residual", residual, x.device)
    if tuple(residual.shape) != tuple(x.shape):
        raise ValueError(f"{name}: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    if residual.dtype != x.dtype:
        raise ValueError(f"{name}: residual dtype {residual.dtype} differs from x's {x.dtype}")
    if bias is not None:
        bias = _check_vector(name, "bias", bias, x)
    weight = _check_vector(name, "weight", weight, x)
    ln_bias = _check_vector(name, "ln_bias", ln_bias, x)
    n_cols = x.shape[-1]
    if n_cols > _MAX_LN_WIDTH:
        raise ValueError(f"{name}: rows wider than {_MAX_LN_WIDTH} are not supported, got {n_cols}")
    out = _check_out(name, out, x)
    if x.numel() == 0:
        return out
    x2, r2, o2 = _rows(x), _rows(residual), out.view(-1, n_cols)
    n_rows = x2.shape[0]
    block_n = _next_pow2(n_cols)
    # ~4K elements per program: 8 rows of 384/512, one row of 3072/4096.
    block_m = max(1, min(16, 4096 // block_n))
    num_warps = 4 if block_n * block_m <= 4096 else (8 if block_n <= 8192 else 16)
    if _interpreted():
        block_m = max(1, min(_next_pow2(n_rows), 8192 // block_n))
    grid = (triton.cdiv(n_rows, block_m),)
    _bias_residual_layernorm_kernel[grid](
        x2, bias if bias is not None else x2, r2, weight, ln_bias, o2,
        n_rows, n_cols, x2.stride(0), r2.stride(0), o2.stride(0), float(eps),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return out


def bias_gelu_reference(
    x: torch.Tensor, bias: torch.Tensor | None, *, upcast: bool = True
) -> torch.Tensor:
    """``F.gelu(x + bias)`` (approximate="none"), in fp32 when ``upcast``, returned in x's dtype."""
    dt = torch.float32 if upcast and x.dtype != torch.float64 else x.dtype
    h = x.to(dt)
    if bias is not None:
        h = h + bias.to(dt)
    return F.gelu(h).to(x.dtype)


def bias_residual_layernorm_reference(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float = 1e-12,
    *,
    upcast: bool = True,
) -> torch.Tensor:
    """``F.layer_norm(x + bias + residual)``, in fp32 when ``upcast``, returned in x's dtype."""
    dt = torch.float32 if upcast and x.dtype != torch.float64 else x.dtype
    h = x.to(dt)
    if bias is not None:
        h = h + bias.to(dt)
    h = h + residual.to(dt)
    return F.layer_norm(h, (x.shape[-1],), weight.to(dt), ln_bias.to(dt), eps).to(x.dtype)
