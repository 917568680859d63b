"""Pictures: the found architecture (kept heads and FFN width per layer)."""
from __future__ import annotations

import io
from pathlib import Path

from .architecture import Architecture
from .flops import ModelShape
from .io import atomic_write_bytes


def plot_architecture(arch: Architecture, shape: ModelShape, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(range(shape.num_layers))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].bar(layers, [shape.num_heads] * shape.num_layers, color="#dddddd", label="original")
    axes[0].bar(layers, arch.head_counts, color="#3b75af", label="kept")
    axes[0].set(title="attention heads per layer", xlabel="layer", ylim=(0, shape.num_heads + 0.5))
    axes[1].bar(layers, [shape.intermediate_size] * shape.num_layers, color="#dddddd", label="original")
    axes[1].bar(layers, arch.ffn_widths, color="#ef8636", label="kept")
    axes[1].set(title="FFN width per layer", xlabel="layer")
    for ax in axes:
        ax.set_xticks(layers)
        ax.legend(loc="upper right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
