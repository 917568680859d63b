"""The one analytic FLOPs model of a BERT encoder, per layer and per component.

A FLOP is a multiply or an add: a multiply-accumulate counts 2. Only matrix products are
counted (the QKV projections, attention scores and context, the output projection, the FFN,
and the pooler/classifier on top); softmax, LayerNorm, GELU, biases and embedding lookups are
a small fraction and are left out, which is also what fvcore measures (times 2).
Counts are per sequence of ``seq_len`` tokens (batch 1).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

COMPONENTS = ("qkv", "attention", "output", "ffn")


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a BERT-family encoder that the FLOPs model needs."""

    num_layers: int
    hidden_size: int
    num_heads: int
    head_dim: int
    intermediate_size: int
    num_labels: int = 0  # 0: a bare encoder used for embeddings (no pooler/classifier counted)

    @classmethod
    def from_config(cls, config, num_labels: int | None = None) -> ModelShape:
        """The shape of a transformers BERT-family config, or of the original a compact config was cut
        from (its ``head_dim`` and, when the hidden width was cut, ``base_hidden_size``; no classifier
        counted for an embedding model)."""
        heads = config.num_attention_heads
        head_dim = (getattr(config, "head_dim", None) or getattr(config, "attention_head_size", None)
                    or config.hidden_size // heads)
        if num_labels is None and getattr(config, "task_kind", None) == "embedding":
            num_labels = 0
        return cls(
            num_layers=config.num_hidden_layers,
            hidden_size=getattr(config, "base_hidden_size", None) or config.hidden_size,
            num_heads=heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            num_labels=config.num_labels if num_labels is None else num_labels,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def with_hidden(self, hidden_size: int | None) -> ModelShape:
        """This shape with its hidden (residual) width cut to ``hidden_size`` (None: unchanged); the
        head width stays the same."""
        return self if hidden_size is None else replace(self, hidden_size=int(hidden_size))

    def head_cost(self, seq_len: int, hidden=None):
        """FLOPs one attention head costs in one layer: its Q/K/V columns, scores, context, output
        rows. ``hidden``: the hidden width the projections read and write (a number or a tensor,
        e.g. the expected width under gates); default the shape's."""
        t, h, d = seq_len, self.hidden_size if hidden is None else hidden, self.head_dim
        return 2 * 3 * t * h * d + 2 * 2 * t * t * d + 2 * t * d * h

    def neuron_cost(self, seq_len: int, hidden=None):
        """FLOPs one FFN neuron costs in one layer: its up-projection row and down-projection column."""
        return 2 * 2 * seq_len * (self.hidden_size if hidden is None else hidden)

    def top_cost(self, hidden=None):
        """FLOPs of the pooler + classifier (per sequence); 0 for an embedding model."""
        if self.num_labels <= 0:
            return 0
        h = self.hidden_size if hidden is None else hidden
        return 2 * h * h + 2 * h * self.num_labels

    def hidden_dim_cost(self, seq_len: int) -> int:
        """FLOPs one hidden dimension costs in the full model: its column or row in every projection
        of every layer and of the pooler and classifier (the derivative of the FLOPs in the width)."""
        t, d, n = seq_len, self.head_dim, self.num_labels
        per_layer = 8 * t * d * self.num_heads + 4 * t * self.intermediate_size
        return self.num_layers * per_layer + (4 * self.hidden_size + 2 * n if n > 0 else 0)


def layer_flops(shape: ModelShape, seq_len: int, heads: int, ffn_width: int) -> dict[str, int]:
    """FLOPs of one layer with ``heads`` heads and ``ffn_width`` FFN neurons, by component."""
    t, h, d = seq_len, shape.hidden_size, shape.head_dim
    inner = heads * d
    return {
        "qkv": 2 * 3 * t * h * inner,
        "attention": 2 * 2 * heads * t * t * d,  # scores Q K^T and context P V
        "output": 2 * t * inner * h,
        "ffn": 2 * 2 * t * h * ffn_width,
    }


@dataclass
class FlopsReport:
    seq_len: int
    total: int
    by_component: dict[str, int]
    per_layer: list[int]

    def ratio_to(self, other: FlopsReport) -> float:
        return self.total / other.total

    def shares(self) -> dict[str, float]:
        return {k: v / self.total for k, v in self.by_component.items()}

    def to_dict(self) -> dict:
        return {
            "seq_len": self.seq_len,
            "total": self.total,
            "by_component": dict(self.by_component),
            "per_layer": list(self.per_layer),
        }


def model_flops(
    shape: ModelShape,
    seq_len: int,
    heads_per_layer: Sequence[int] | None = None,
    ffn_per_layer: Sequence[int] | None = None,
    hidden_size: int | None = None,
) -> FlopsReport:
    """FLOPs of the whole model (per sequence); the original when no per-layer sizes are given.
    ``hidden_size``: the kept hidden width (``search --prune-hidden``); default the shape's."""
    heads_per_layer = list(heads_per_layer) if heads_per_layer is not None else [shape.num_heads] * shape.num_layers
    ffn_per_layer = list(ffn_per_layer) if ffn_per_layer is not None else [shape.intermediate_size] * shape.num_layers
    if len(heads_per_layer) != shape.num_layers or len(ffn_per_layer) != shape.num_layers:
        raise ValueError(f"expected {shape.num_layers} layers, got {len(heads_per_layer)} / {len(ffn_per_layer)}")
    by_component = {k: 0 for k in COMPONENTS}
    per_layer = []
    shape = shape.with_hidden(hidden_size)
    for heads, width in zip(heads_per_layer, ffn_per_layer):
        layer = layer_flops(shape, seq_len, heads, width)
        for k, v in layer.items():
            by_component[k] += v
        per_layer.append(sum(layer.values()))
    by_component["pooler_classifier"] = shape.top_cost()
    return FlopsReport(seq_len=seq_len, total=sum(by_component.values()), by_component=by_component, per_layer=per_layer)


def format_flops(n: float) -> str:
    for unit, scale in (("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} FLOPs"


def expected_flops_ratio(shape: ModelShape, seq_len: int, head_gates, ffn_gates, hidden_gates=None):
    """The differentiable FLOPs ratio under gates in [0, 1]. FLOPs are linear in the kept heads and
    neurons; with ``hidden_gates`` (one per hidden dimension) every projection's cost is linear in the
    expected hidden width too, and the pooler's is quadratic in it."""
    full = model_flops(shape, seq_len).total
    hidden = None if hidden_gates is None else hidden_gates.sum()
    cost = head_gates.sum() * shape.head_cost(seq_len, hidden) + ffn_gates.sum() * shape.neuron_cost(seq_len, hidden)
    return (cost + shape.top_cost(hidden)) / full
