"""The one place where the benchmarks make ``prunekit`` / ``prunekit_kernels`` importable from this
checkout with nothing installed (the lent GPU machine: its own torch/Triton/transformers, no network,
only the repository carried). A module, not a benchmark: it writes no results.

The repo root holds ``prunekit/`` and ``kernels/prunekit_kernels/``; ``kernels/`` has no
``__init__.py``, so neither path shadows an installed distribution (the PyPI ``kernels`` package
that transformers imports among them). Putting both on ``sys.path`` is all it takes.

- The GPU scripts (``gpu_e2e.py``, ``gpu_kernels.py``, ``gpu_probe.py``, ``gpu_bench.py``) call
  :func:`use_checkout` before their first prunekit import; it also exports the paths in
  ``PYTHONPATH`` for the CLI runs they start.
- ``gpu_session.sh`` takes its ``PYTHONPATH`` (for pytest) from ``python benchmarks/checkout_imports.py``,
  which prints it.
- The CPU scripts patch nothing: they run in the project's virtual environment (``make setup``
  installs prunekit editable, so it is this checkout), and being run as ``python benchmarks/x.py``
  puts ``benchmarks/`` on ``sys.path`` for their shared modules (``timing``, ``random_models``, ...).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKOUT_PATHS = (str(REPO), str(REPO / "kernels"))


def pythonpath() -> str:
    """``PYTHONPATH`` with the checkout's paths first, then the inherited entries."""
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in CHECKOUT_PATHS]
    return os.pathsep.join([*CHECKOUT_PATHS, *inherited])


def use_checkout(quick: bool) -> None:
    """Make ``prunekit`` and ``prunekit_kernels`` importable from this checkout, for this process and
    its children (PYTHONPATH); without CUDA only a ``--quick`` smoke run (Triton interpreted) goes on."""
    import torch

    if not torch.cuda.is_available():
        if not quick:
            sys.exit("No CUDA device: run with --quick to smoke-test on CPU (Triton interpreted).")
        os.environ["TRITON_INTERPRET"] = "1"  # before any @triton.jit decorator runs
    for path in reversed(CHECKOUT_PATHS):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ["PYTHONPATH"] = pythonpath()


if __name__ == "__main__":
    print(pythonpath())
