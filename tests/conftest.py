"""Shared fixtures: tiny random BERT configs and text the tests make themselves."""
import os

# Triton kernels run under the interpreter on machines without a GPU. The variable must be set
# before any module that defines a @triton.jit kernel is imported.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
