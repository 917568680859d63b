"""Import prunekit / prunekit_kernels from this checkout with nothing installed (the lent GPU machine).

The repo root holds ``prunekit/`` and ``kernels/prunekit_kernels/``; ``kernels/`` has no
``__init__.py``, so neither path shadows an installed distribution (the PyPI ``kernels`` package
that transformers imports among them). Putting both on ``sys.path`` is all it takes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CHECKOUT_PATHS = (str(REPO), str(REPO / "kernels"))


def use_checkout(quick: bool) -> None:
    """Make ``prunekit`` and ``prunekit_kernels`` importable from this checkout, for this process and
    its children (PYTHONPATH); without CUDA only a ``--quick`` smoke run (Triton interpreted) goes on."""
    if not torch.cuda.is_available():
        if not quick:
            sys.exit("No CUDA device: run with --quick to smoke-test on CPU (Triton interpreted).")
        os.environ["TRITON_INTERPRET"] = "1"  # before any @triton.jit decorator runs
    for path in reversed(CHECKOUT_PATHS):
        if path not in sys.path:
            sys.path.insert(0, path)
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in CHECKOUT_PATHS]
    os.environ["PYTHONPATH"] = os.pathsep.join([*CHECKOUT_PATHS, *inherited])
