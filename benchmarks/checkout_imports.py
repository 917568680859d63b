"""Import prunekit / prunekit_kernels from this checkout with nothing installed (the lent GPU machine).

The repo root itself is not put on sys.path: its ``kernels/`` would shadow the PyPI package of that
name, which transformers probes. Instead the packages are linked into a temp dir that is removed at
exit (the links only, never what they point to).
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"prunekit": REPO / "prunekit", "prunekit_kernels": REPO / "kernels"}


def link_checkout(names: tuple[str, ...], quick: bool) -> None:
    """Make ``names`` importable; without CUDA only a ``--quick`` smoke run (Triton interpreted) goes on."""
    if not torch.cuda.is_available():
        if not quick:
            sys.exit("No CUDA device: run with --quick to smoke-test on CPU (Triton interpreted).")
        os.environ["TRITON_INTERPRET"] = "1"  # before any @triton.jit decorator runs
    tmp = Path(tempfile.mkdtemp(prefix="prunekit_checkout_"))
    atexit.register(shutil.rmtree, tmp, True)
    for name in names:
        try:
            (tmp / name).symlink_to(PACKAGES[name], target_is_directory=True)
        except OSError:
            shutil.copytree(PACKAGES[name], tmp / name)
    sys.path.insert(0, str(tmp))
