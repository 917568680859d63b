"""prunekit: search, compact, distill, export and benchmark smaller BERT-family models."""
from .errors import PrunekitError
from . import modeling  # noqa: E402,F401 - registers the compact model with transformers' Auto classes

__version__ = "0.1.0"
__all__ = ["PrunekitError", "__version__"]
