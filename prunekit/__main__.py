"""`python -m prunekit ...` (and `torchrun ... -m prunekit ...`): the command line."""
from .cli import main

main()
