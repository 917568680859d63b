"""prunekit: search, compact, distill, export and benchmark smaller BERT-family models."""
from . import modeling  # noqa: F401 - registers the compact model with transformers' Auto classes
from .errors import PrunekitError

__version__ = "0.1.0"
__all__ = ["PrunekitError", "__version__"]
