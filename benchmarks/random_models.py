"""Random-weight BERT models and random-priority compact architectures for the benchmark scripts
(a module they import, not a script: it writes nothing).

``cpu_speedup.py``, ``int8_profile.py``, ``cpu_best.py`` and ``gpu_bench.py`` build their models
here; ``gpu_common.py`` takes :func:`random_arch` for ``gpu_e2e.py`` and ``gpu_probe.py``. The
timing of a compact model depends on its per-layer sizes, not on which heads are kept, so the
architectures come from random priorities cut to a FLOPs budget (``prunekit.baselines.random_scores``
+ ``prunekit.selection.select_to_budget``: uneven heads per layer, as a search gives, without
running one).

prunekit is imported inside the functions: the GPU scripts import this module before
``checkout_imports.use_checkout`` makes the checkout importable.
"""
from __future__ import annotations

from pathlib import Path

import torch

SHAPES = {  # layers, hidden, heads, FFN
    "TinyBERT-4L": (4, 312, 12, 1200),
    "MiniLM-L6": (6, 384, 12, 1536),
    "TinyBERT-6L": (6, 768, 12, 3072),
    "BERT-base": (12, 768, 12, 3072),
}
QUICK_SHAPES = {"tiny-4L": (4, 48, 4, 96), "tiny-12L": (12, 32, 4, 64)}  # --quick smoke runs
WORDS = "the a model small fast slow river stone light dark green".split()


def random_arch(shape, seq_len: int, ratio: float, seed: int):
    """The architecture at ``ratio`` of the FLOPs (at ``seq_len`` tokens) from random head/neuron
    priorities drawn with ``seed``."""
    from prunekit.baselines import random_scores
    from prunekit.selection import select_to_budget

    g = torch.Generator().manual_seed(seed)
    return select_to_budget(*random_scores(shape, g), shape, seq_len, ratio)


def make_original(path: Path, dims: tuple, seed: int) -> Path:
    """A random-weight BERT embedding model of ``dims`` (layers, hidden, heads, FFN) with a tiny
    word-piece vocabulary, saved under ``path`` (which must not exist)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    layers, hidden, heads, ffn = dims
    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn,
                        architectures=["BertModel"])
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    return path


def make_compact(original: Path, out: Path, ratio: float, seq_len: int, seed: int) -> dict:
    """Compact ``original`` to a random-priority architecture at ``ratio`` of the FLOPs, saved under
    ``out`` with its tokenizer; returns the target, the ratio achieved, heads and FFN widths."""
    from prunekit.compact import compact
    from prunekit.models import load_teacher

    teacher = load_teacher(str(original))
    s = teacher.shape
    arch = random_arch(s, seq_len, ratio, seed)
    compact(teacher, arch).save_pretrained(out)
    teacher.tokenizer.save_pretrained(out)
    return {"target": ratio, "achieved": arch.flops_ratio(s, seq_len), "heads": arch.head_counts, "ffn": arch.ffn_widths}
