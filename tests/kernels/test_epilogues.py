"""bias_gelu / bias_residual_layernorm against their PyTorch references."""
from __future__ import annotations

import pytest
import torch

from prunekit_kernels import (
    bias_gelu,
    bias_gelu_reference,
    bias_residual_layernorm,
    bias_residual_layernorm_reference,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
WIDTHS = [312, 384, 768, 3072]
LEADING = {312: (3, 7), 384: (2, 3, 4), 768: (5,), 3072: (2, 3)}


def _nan_like(x):
    return torch.full_like(x, float("nan"))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bias_gelu_matches_reference(device, check_close, dtype, width):
    x = (2 * torch.randn(*LEADING[width], width, device=device)).to(dtype)
    bias = torch.randn(width, device=device).to(dtype)
    out = bias_gelu(x, bias, out=_nan_like(x))
    ref_hi = bias_gelu_reference(x.double(), bias.double())
    ref_same = bias_gelu_reference(x, bias, upcast=False)
    check_close(out, ref_hi, ref_same, f"bias_gelu {dtype} N={width}")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bias_residual_layernorm_matches_reference(device, check_close, dtype, width):
    lead = LEADING[width]
    # Realistic post-LN activations: a residual stream with a per-row offset and a large spread.
    x = (torch.randn(*lead, width, device=device) + 3 * torch.randn(*lead, 1, device=device)).to(dtype)
    residual = (4 * torch.randn(*lead, width, device=device)).to(dtype)
    bias = torch.randn(width, device=device).to(dtype)
    weight = (1 + 0.1 * torch.randn(width, device=device)).to(dtype)
    ln_bias = (0.1 * torch.randn(width, device=device)).to(dtype)
    out = bias_residual_layernorm(x, bias, residual, weight, ln_bias, 1e-12, out=_nan_like(x))
    args64 = [t.double() for t in (x, bias, residual, weight, ln_bias)]
    ref_hi = bias_residual_layernorm_reference(*args64, 1e-12)
    ref_same = bias_residual_layernorm_reference(x, bias, residual, weight, ln_bias, 1e-12, upcast=False)
    check_close(out, ref_hi, ref_same, f"bias_residual_layernorm {dtype} N={width}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_layernorm_fp32_params_and_no_bias(device, check_close, dtype):
    """fp16/bf16 activations with fp32 LayerNorm parameters (mixed precision), bias=None, eps=1e-5."""
    x = torch.randn(4, 384, device=device).to(dtype)
    residual = torch.randn(4, 384, device=device).to(dtype)
    weight, ln_bias = torch.randn(384, device=device), torch.randn(384, device=device)
    out = bias_residual_layernorm(x, None, residual, weight, ln_bias, 1e-5)
    assert out.dtype == dtype
    ref_hi = bias_residual_layernorm_reference(x.double(), None, residual.double(), weight.double(), ln_bias.double(), 1e-5)
    ref_same = bias_residual_layernorm_reference(x, None, residual, weight.to(dtype), ln_bias.to(dtype), 1e-5, upcast=False)
    check_close(out, ref_hi, ref_same, f"layernorm fp32 params {dtype}")


def test_bias_gelu_without_bias_and_strided_input(device, check_close):
    base = torch.randn(6, 400, device=device)
    x = base[:, 8:320]  # rows with stride 400, width 312
    assert not x.is_contiguous()
    out = bias_gelu(x, None)
    check_close(out, bias_gelu_reference(x.double(), None), bias_gelu_reference(x, None, upcast=False), "gelu strided")


def test_constant_rows_stay_finite(device):
    """A row with zero variance normalises to ln_bias, not NaN (eps keeps rstd finite)."""
    x = torch.zeros(3, 384, device=device, dtype=torch.float16)
    out = bias_residual_layernorm(x, None, torch.ones_like(x), torch.ones(384, device=device), torch.full((384,), 0.5, device=device), 1e-12)
    assert torch.isfinite(out).all() and (out == 0.5).all()


def test_launcher_errors(device):
    x = torch.randn(2, 384, device=device)
    v = torch.randn(384, device=device)
    with pytest.raises(ValueError, match=r"bias must have shape \[384\]"):
        bias_gelu(x, torch.randn(312, device=device))
    with pytest.raises(ValueError, match="float64 is not supported"):
        bias_gelu(x.double(), None)
    with pytest.raises(ValueError, match="int64 is not supported"):
        bias_gelu(torch.ones(2, 384, dtype=torch.int64, device=device), None)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        bias_residual_layernorm(x, v, torch.randn(2, 312, device=device), v, v)
    with pytest.raises(ValueError, match="residual dtype"):
        bias_residual_layernorm(x, v, x.half(), v, v)
    with pytest.raises(ValueError, match=r"weight must have shape \[384\]"):
        bias_residual_layernorm(x, v, x, torch.randn(2, 384, device=device), v)
    with pytest.raises(ValueError, match="out must be"):
        bias_gelu(x, v, out=torch.empty(2, 383, device=device))
