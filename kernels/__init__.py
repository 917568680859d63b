"""Triton kernels for prunekit's compact model, each beside its PyTorch reference.

Installed under the import name ``prunekit_kernels`` (the directory is ``kernels/``).
"""
