"""What machine this is: the CPU, its ISA flags that decide the fast kernels, and the library versions.

Read by bench (its report), by the backends (is bf16 native?) and by export (int8 on a CPU without
VNNI). Linux reads /proc/cpuinfo; elsewhere the flags are unknown and count as absent.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> dict:
    """CPU model, ISA flags that decide the fast kernels, core count (Linux /proc/cpuinfo)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    isa = {k: k in flags for k in ISA_FLAGS}
    return {"model": name, "isa": isa, "logical_cpus": os.cpu_count()}


def native_bf16(isa: dict | None = None) -> bool:
    """Whether the CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16); without, bf16 is emulated."""
    isa = cpu_info()["isa"] if isa is None else isa
    return bool(isa.get("avx512_bf16") or isa.get("amx_bf16"))


def int8_dot_product(isa: dict | None = None) -> bool:
    """Whether the CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8).
    Without one, onnxruntime's u8 x s8 kernels on x86 multiply with VPMADDUBSW, whose int16 pair sums
    saturate on 8-bit weights; quantizing weights to 7 bits (``reduce_range``) keeps them in range."""
    isa = cpu_info()["isa"] if isa is None else isa
    return bool(isa.get("avx512_vnni") or isa.get("avx_vnni") or isa.get("amx_int8"))


def system_info(device: str) -> dict:
    import transformers

    try:
        import onnxruntime as ort
    except ImportError:  # the torch backends still run
        ort = None
    info = {"cpu": cpu_info(), "torch": torch.__version__, "onnxruntime": ort.__version__ if ort else None,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "ort_providers": ort.get_available_providers() if ort else []}
    dev = torch.device(device)
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev.index if dev.index is not None else torch.cuda.current_device())
    return info
