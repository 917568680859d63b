"""A found architecture: per layer, the kept attention heads and FFN neurons; read/written as JSON."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import PrunekitError
from .flops import FlopsReport, ModelShape, model_flops
from .io import atomic_write_text, read_json

FORMAT = "prunekit-architecture"
VERSION = 1


def config_hash(shape: ModelShape, vocab_size: int | None = None) -> str:
    """A short hash of the shape fields an architecture depends on (to catch a mismatched model)."""
    key = dict(shape.to_dict())
    key.pop("num_labels", None)
    key["vocab_size"] = vocab_size
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Architecture:
    heads: list[list[int]]  # per layer, kept head indices (sorted)
    neurons: list[list[int]]  # per layer, kept FFN neuron indices (sorted)
    meta: dict = field(default_factory=dict)
    hidden: list[int] | None = None  # kept hidden (residual) dimensions, sorted; None: all (no --prune-hidden)

    @property
    def head_counts(self) -> list[int]:
        return [len(h) for h in self.heads]

    @property
    def ffn_widths(self) -> list[int]:
        return [len(n) for n in self.neurons]

    @property
    def hidden_size(self) -> int | None:
        """The kept hidden width, or None when the hidden dimensions are not pruned."""
        return None if self.hidden is None else len(self.hidden)

    def flops(self, shape: ModelShape, seq_len: int) -> FlopsReport:
        return model_flops(shape, seq_len, self.head_counts, self.ffn_widths, self.hidden_size)

    def flops_ratio(self, shape: ModelShape, seq_len: int) -> float:
        return self.flops(shape, seq_len).total / model_flops(shape, seq_len).total

    @classmethod
    def from_masks(cls, head_mask: torch.Tensor, ffn_mask: torch.Tensor, meta: dict | None = None,
                   hidden_mask: torch.Tensor | None = None) -> Architecture:
        heads = [torch.nonzero(row > 0.5).flatten().tolist() for row in head_mask]
        neurons = [torch.nonzero(row > 0.5).flatten().tolist() for row in ffn_mask]
        hidden = None if hidden_mask is None else torch.nonzero(hidden_mask > 0.5).flatten().tolist()
        return cls(heads, neurons, dict(meta or {}), hidden)

    def to_masks(self, shape: ModelShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """0/1 masks (what :meth:`prunekit.gates.Gates.active` takes): [L, H] heads, [L, I] FFN neurons,
        and [hidden] hidden dimensions (None when they are not pruned)."""
        head_mask = torch.zeros(shape.num_layers, shape.num_heads)
        ffn_mask = torch.zeros(shape.num_layers, shape.intermediate_size)
        for i, (h, n) in enumerate(zip(self.heads, self.neurons)):
            head_mask[i, h] = 1.0
            ffn_mask[i, n] = 1.0
        hidden_mask = None
        if self.hidden is not None:
            hidden_mask = torch.zeros(shape.hidden_size)
            hidden_mask[self.hidden] = 1.0
        return head_mask, ffn_mask, hidden_mask

    def validate(self, shape: ModelShape, where: str = "architecture") -> None:
        """Raise PrunekitError if this architecture does not fit ``shape``."""
        if len(self.heads) != shape.num_layers or len(self.neurons) != shape.num_layers:
            raise PrunekitError(
                f"{where} has {len(self.heads)} layers but the model has {shape.num_layers}: "
                "use the architecture.json that was searched for this model"
            )
        for i, (h, n) in enumerate(zip(self.heads, self.neurons)):
            for name, idx, limit in (("head", h, shape.num_heads), ("FFN neuron", n, shape.intermediate_size)):
                if any((not isinstance(j, int)) or j < 0 or j >= limit for j in idx) or len(set(idx)) != len(idx):
                    raise PrunekitError(
                        f"{where}: layer {i} lists {name} indices outside 0..{limit - 1} or repeated; "
                        "the file does not belong to this model or is corrupt"
                    )
        if self.hidden is not None:
            h = self.hidden
            if any((not isinstance(j, int)) or j < 0 or j >= shape.hidden_size for j in h) or len(set(h)) != len(h):
                raise PrunekitError(f"{where}: hidden dimensions outside 0..{shape.hidden_size - 1} or repeated; "
                                    "the file does not belong to this model or is corrupt")
            if not h:
                raise PrunekitError(f"{where} keeps no hidden dimension: a model needs at least one; "
                                    "re-run `prunekit search --prune-hidden` with a higher --target")

    def to_json(self, shape: ModelShape, seq_len: int) -> dict:
        report = self.flops(shape, seq_len)
        original = model_flops(shape, seq_len)
        layers = [
            {"num_heads": len(h), "ffn_width": len(n), "heads": list(h), "ffn_neurons": list(n)}
            for h, n in zip(self.heads, self.neurons)
        ]
        return {
            "format": FORMAT,
            "version": VERSION,
            **self.meta,
            "shape": shape.to_dict(),
            "flops": {
                "seq_len": seq_len,
                "original": original.total,
                "pruned": report.total,
                "achieved_ratio": report.total / original.total,
                "by_component": report.by_component,
                "original_by_component": original.by_component,
            },
            "achieved_flops_ratio": report.total / original.total,
            **({"hidden": {"size": len(self.hidden), "dims": list(self.hidden)}} if self.hidden is not None else {}),
            "layers": layers,
        }

    def save(self, path: str | os.PathLike, shape: ModelShape, seq_len: int) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_json(shape, seq_len), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, shape: ModelShape | None = None) -> Architecture:
        path = Path(path)
        if path.is_dir():
            path = path / "architecture.json"
        if not path.is_file():
            raise PrunekitError(f"architecture file not found: {path} (give a search run dir or its architecture.json)")
        data = read_json(path, "architecture file", "re-run `prunekit search` to regenerate it")
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("layers"), list):
            raise PrunekitError(f"{path} is not a prunekit architecture file (missing format/layers)")
        if not isinstance(data.get("base_model", {}), dict) or not isinstance(data.get("flops", {}), dict):
            raise PrunekitError(f"{path}: base_model and flops must be JSON objects; the file is corrupt")
        heads, neurons = [], []
        for i, layer in enumerate(data["layers"]):
            if not isinstance(layer, dict):
                raise PrunekitError(f"{path}: layer {i} is not an object")
            h, n = layer.get("heads"), layer.get("ffn_neurons")
            if not isinstance(h, list) or not isinstance(n, list):
                raise PrunekitError(f"{path}: layer {i} needs lists 'heads' and 'ffn_neurons'")
            if any(type(j) is not int for j in h + n):
                raise PrunekitError(f"{path}: layer {i} has non-integer indices")
            for count, listed, what in (("num_heads", h, "heads"), ("ffn_width", n, "FFN neurons")):
                if count in layer and layer[count] != len(listed):
                    raise PrunekitError(f"{path}: layer {i} claims {count} {layer[count]!r} but lists {len(listed)} {what}; "
                                        "the file is corrupt or was edited by hand: re-run `prunekit search`")
            heads.append(sorted(h))
            neurons.append(sorted(n))
        meta = {k: v for k, v in data.items() if k not in ("layers", "format", "version", "shape", "flops", "achieved_flops_ratio", "hidden")}
        arch = cls(heads, neurons, meta, _hidden_dims(data.get("hidden"), path))
        if shape is not None:
            saved = data.get("shape")
            labels = {"hidden_size": "hidden size", "num_layers": "layer count", "num_heads": "head count",
                      "head_dim": "head width", "intermediate_size": "FFN width"}
            for key, label in labels.items():
                if isinstance(saved, dict) and saved.get(key) not in (None, getattr(shape, key)):
                    raise PrunekitError(
                        f"{path} was searched for a model with {label} {saved.get(key)!r}, this one has "
                        f"{getattr(shape, key)}: use the matching model, or re-run `prunekit search` for this one"
                    )
            arch.validate(shape, where=str(path))
        return arch


def _hidden_dims(saved, path: Path) -> list[int] | None:
    """The kept hidden dimensions of an architecture file's ``hidden`` entry (None: not pruned)."""
    if saved is None:
        return None
    dims = saved.get("dims") if isinstance(saved, dict) else None
    if not isinstance(dims, list) or any(type(j) is not int for j in dims):
        raise PrunekitError(f"{path}: 'hidden' needs a list of integer 'dims'; the file is corrupt")
    if saved.get("size", len(dims)) != len(dims):
        raise PrunekitError(f"{path}: 'hidden' claims size {saved.get('size')!r} but lists {len(dims)} dimensions; "
                            "the file is corrupt or was edited by hand: re-run `prunekit search`")
    return sorted(dims)
