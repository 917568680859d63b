"""Triton kernels for prunekit's compact model, each beside its PyTorch reference.

Installed under the import name ``prunekit_kernels`` (the directory is ``kernels/prunekit_kernels/``;
``kernels/`` has no ``__init__.py``, so the clone never shadows the PyPI distribution ``kernels``).

* :mod:`.attention` — fused multi-head attention forward from a packed QKV projection, padded
  (key-padding mask) and varlen (``cu_seqlens``), any head count per launch.
* :mod:`.padding` — ``unpad_input`` / ``unpad_indices`` / ``pad_input`` for the varlen path.
* :mod:`.epilogues` — ``bias_gelu`` and ``bias_residual_layernorm``.

Kernels run on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before triton was
imported (in the environment of the process: slow; for tests). :func:`triton_available` says which applies.
"""
from __future__ import annotations

import torch

from .attention import (
    fused_attention,
    fused_attention_reference,
    fused_attention_varlen,
    fused_attention_varlen_reference,
)
from .epilogues import (
    bias_gelu,
    bias_gelu_reference,
    bias_residual_layernorm,
    bias_residual_layernorm_reference,
)
from .padding import pad_input, unpad_indices, unpad_input

__all__ = [
    "bias_gelu",
    "bias_gelu_reference",
    "bias_residual_layernorm",
    "bias_residual_layernorm_reference",
    "fused_attention",
    "fused_attention_reference",
    "fused_attention_varlen",
    "fused_attention_varlen_reference",
    "pad_input",
    "triton_available",
    "unpad_indices",
    "unpad_input",
]


def triton_available(device: str | torch.device | None = None) -> tuple[bool, str]:
    """Whether the kernels can run on ``device`` (default: CUDA if present, else CPU), and why.

    Returns ``(ok, reason)``; ``reason`` is a one-line explanation suited to a log or an error.
    """
    from . import attention

    if not attention._HAS_TRITON:
        return False, "triton is not installed (it is Linux-only); the *_reference functions still work"
    interpreted = attention._interpreted()
    if device is None:
        device = "cuda" if torch.cuda.is_available() and not interpreted else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if interpreted:
            return False, (
                "kernels were loaded under TRITON_INTERPRET=1 (CPU interpreter); "
                "start Python without it to run them on CUDA"
            )
        if not torch.cuda.is_available():
            return False, "CUDA is not available to torch"
        return True, f"CUDA device {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        if interpreted:
            return True, "Triton interpreter (TRITON_INTERPRET=1) on CPU: correct but slow, for tests"
        return False, (
            "no CUDA device for the compiled kernels; to run them (slowly) on the CPU, set TRITON_INTERPRET=1 in "
            "the environment before Python starts (set later in a running process, the attention kernel fails)"
        )
    return False, f"device type {device.type!r} is not supported by these kernels"
