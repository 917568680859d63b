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

from pathlib import Path

import pytest

from factory import make_sentences, make_tiny_model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Model dirs built once per session: {(shape, kind): path}."""
    root = tmp_path_factory.mktemp("models")
    cache: dict = {}

    def get(shape: str = "tinybert4", kind: str = "embedding") -> Path:
        key = (shape, kind)
        if key not in cache:
            cache[key] = make_tiny_model(root / f"{shape}-{kind}", shape, kind)
        return cache[key]

    return get


@pytest.fixture
def text_file(tmp_path) -> Path:
    p = tmp_path / "texts.txt"
    p.write_text("\n".join(make_sentences(48)) + "\n")
    return p


@pytest.fixture
def one_thread():
    """One torch thread: tiny models gain nothing from threads, and the shared 2-core machine makes them contend."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
