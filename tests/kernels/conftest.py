"""Fixtures for the kernel tests: the device, a per-test seed, and the reference comparison.

Tolerances come from the reference, not from hope: a kernel running in dtype X is compared with a float64
reference, and its error may be at most ``MULTIPLE`` times the error of the same computation done
by PyTorch in dtype X (the reference with ``upcast=False``), plus one unit in the last place of X at
the reference's largest magnitude (rounding the exact result to X costs up to half of that; the
Triton interpreter truncates fp32 -> bf16 instead of rounding, which costs up to a whole one).
"""
from __future__ import annotations

import zlib

import pytest
import torch

from prunekit_kernels import triton_available

MULTIPLE = 2.0


def _kernel_device() -> str | None:
    ok, _ = triton_available()
    if not ok:
        return None
    return "cuda" if triton_available("cuda")[0] else "cpu"


DEVICE = _kernel_device()


@pytest.fixture
def device() -> str:
    if DEVICE is None:
        pytest.skip(triton_available()[1])
    return DEVICE


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Fresh random inputs per test, reproducible per parametrization."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def _where(diff: torch.Tensor) -> tuple[int, ...]:
    flat = int(torch.argmax(diff.reshape(-1)).item())
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))


def check_close(out: torch.Tensor, ref_hi: torch.Tensor, ref_same: torch.Tensor, name: str) -> None:
    """Assert ``out`` (kernel, dtype X) is as close to ``ref_hi`` (float64) as PyTorch in X is."""
    assert out.shape == ref_hi.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref_hi.shape)}"
    out64, ref64, same64 = out.detach().double().cpu(), ref_hi.detach().double().cpu(), ref_same.detach().double().cpu()
    bad = ~torch.isfinite(out64)
    if bad.any():
        raise AssertionError(f"{name}: {int(bad.sum())} non-finite outputs, first at {_where(bad.double())}")
    diff = (out64 - ref64).abs()
    err = diff.max().item() if diff.numel() else 0.0
    err_same = (same64 - ref64).abs().max().item() if diff.numel() else 0.0
    scale = ref64.abs().max().item() if ref64.numel() else 0.0
    tol = MULTIPLE * err_same + torch.finfo(out.dtype).eps * scale
    if not err <= tol:
        idx = _where(diff)
        raise AssertionError(
            f"{name}: max |kernel - ref| = {err:.3e} at {idx} (kernel {out64[idx].item():.6g}, "
            f"ref {ref64[idx].item():.6g}) > tol {tol:.3e} = {MULTIPLE} * {err_same:.3e} (torch "
            f"{out.dtype} error) + eps * {scale:.3g}"
        )


@pytest.fixture(name="check_close")
def _check_close_fixture():
    return check_close
