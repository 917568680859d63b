"""One loader for every verb that takes a finished model: ``eval``, ``export-onnx``, ``bench``, ``card``.

:func:`load_model` reads any of the three things those verbs are given and returns one
:class:`LoadedModel`:

* an original Hugging Face BERT-family dir (a teacher; :func:`prunekit.models.load_teacher`),
* a compact model dir (``config.json`` of model type ``prunekit-compact-bert``),
* an ``.onnx`` file from ``prunekit export-onnx`` (or a dir holding only ``model.onnx``), when the
  caller accepts one (``onnx_files=True``: eval does, export and bench take model dirs).

Every config is checked whole (sizes, against the weights) before any weight is read, and every
failure is one line. The search, compact and distill stages load their teacher with
:func:`prunekit.models.load_teacher` directly: they need the transformers model, not this view.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .errors import PrunekitError
from .flops import ModelShape, model_flops
from .models import Teacher, load_teacher, quiet

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")


@dataclass
class LoadedModel:
    """A teacher, a compact model or an exported ``.onnx`` file, as the verbs after ``distill`` see it."""

    path: str
    kind: str  # classification | regression | embedding
    model: nn.Module | None  # the PyTorch model as loaded: what every backend's output is checked against (None: .onnx)
    tokenizer: object
    shape: ModelShape | None  # the original's shape, that FLOPs ratios are counted from
    heads_per_layer: list[int] | None  # None: every head (an original)
    ffn_per_layer: list[int] | None
    is_compact: bool
    teacher: str | None = None  # the teacher a compact model was cut from (its reference for fidelity)
    onnx: object = None  # prunekit.backends.OnnxFile when the model is an exported .onnx file
    num_params: int | None = None  # an .onnx file's, from its export report
    onnx_id2label: dict | None = None  # an .onnx file's class names, from its export report
    hidden_size: int | None = None  # the model's own hidden width where it was cut (narrower than shape's); None: shape's
    _teacher: Teacher | None = field(default=None, repr=False)
    _compact_view: nn.Module | None = field(default=None, repr=False)

    @property
    def compact_view(self) -> nn.Module:
        """The model as a compact model: itself, or an original with every head and neuron kept
        (:func:`prunekit.compact.compact`), so that export and the compact backends treat both alike."""
        if self._compact_view is None:
            if self.is_compact:
                self._compact_view = self.model
            elif self._teacher is None:
                raise PrunekitError(f"{self.path} is an exported .onnx file, not a directory: give the model dir it was exported from")
            else:
                from .architecture import Architecture
                from .compact import compact

                s = self.shape
                full = Architecture(heads=[list(range(s.num_heads))] * s.num_layers,
                                    neurons=[list(range(s.intermediate_size))] * s.num_layers)
                self._compact_view = compact(self._teacher, full)
        return self._compact_view

    @property
    def config(self):
        """The compact view's config: per-layer head counts and FFN widths for an original too."""
        return self.compact_view.config

    @property
    def params(self) -> int | None:
        return self.num_params if self.model is None else sum(p.numel() for p in self.model.parameters())

    def full_flops(self, seq_len: int) -> int | None:
        """The FLOPs of the original model this one has the shape of (or was cut from)."""
        return None if self.shape is None else model_flops(self.shape, seq_len).total

    def flops(self, seq_len: int) -> int | None:
        if self.shape is None:
            return None
        return model_flops(self.shape, seq_len, self.heads_per_layer, self.ffn_per_layer, self.hidden_size).total

    def align(self, dataset):
        """``dataset`` with its labels in this model's class ids (``data.align_labels``)."""
        from .data import align_labels

        config = getattr(self.model, "config", None)
        id2label = getattr(config, "id2label", None) if config is not None else self.onnx_id2label
        num_labels = self.shape.num_labels if self.shape is not None else getattr(config, "num_labels", 0)
        if not num_labels:
            return dataset
        if (self.onnx is not None and id2label is None and self.kind == "classification" and dataset.labels is not None
                and dataset.task.kind == "classification"):
            log.warning("%s: its export report names no classes (exported by an older prunekit, and the model dir "
                        "it names is gone): the labels are taken with the ids they were read with; re-export it "
                        "to match them by name", self.path)
        return align_labels(dataset, self.kind, id2label, num_labels, dataset.source)


def has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(path: str, where) -> object:
    """The tokenizer in ``where`` for the model ``path``; one line when it cannot be read."""
    from transformers import AutoTokenizer

    try:
        return quiet(AutoTokenizer.from_pretrained, str(where))
    except MemoryError:  # not a bad tokenizer dir: the machine is out of memory
        raise
    except Exception as e:  # noqa: BLE001
        raise PrunekitError(f"cannot load a tokenizer for {path} from {where}: {str(e).splitlines()[0][:160]}") from None


def load_model(path: str | os.PathLike, kind: str = "auto", device: str = "cpu", tokenizer: str | None = None, *,
               onnx_files: bool = True, need_tokenizer: bool = True) -> LoadedModel:
    """A teacher (any BERT-family HF dir or hub id), a compact model dir, or (``onnx_files``) an
    ``.onnx`` file from export-onnx. ``kind`` overrides what an original's config says (a compact
    config knows its kind). ``tokenizer``: a folder to take it from (for ``.onnx`` files).
    ``need_tokenizer=False``: a compact dir without tokenizer files, whose teacher is gone too,
    still loads (export and bench run on random ids)."""
    from .modeling import MODEL_TYPE, load_compact

    p = Path(path)
    if onnx_files and p.is_dir() and (p / "model.onnx").is_file() and not (p / "config.json").is_file():
        p = p / "model.onnx"
    if p.suffix == ".onnx" and (onnx_files or p.is_file()):
        if not onnx_files:
            raise PrunekitError(f"{path} is an exported .onnx file, not a directory: give the model dir it was exported from")
        return _load_onnx(str(path), p, kind, tokenizer)
    if not onnx_files:  # export and bench: a local model dir, said plainly when it is not one
        if not p.is_dir():
            raise PrunekitError(f"{path} is not a directory: give a model directory (with config.json)")
        if not (p / "config.json").is_file():
            raise PrunekitError(f"{path} has no config.json: it is not a model directory")
    model_type = None
    if (p / "config.json").is_file():
        from .configs import model_type_of

        model_type = model_type_of(p / "config.json")  # the whole config checked before any use
    if model_type != MODEL_TYPE:
        t = load_teacher(str(path), kind, device=device)
        return LoadedModel(str(path), t.kind, t.model, t.tokenizer, t.shape, None, None, False, _teacher=t)

    model = quiet(load_compact, p, device=device)
    c = model.config
    if kind not in ("auto", c.task_kind):
        raise PrunekitError(f"{path} is a compact {c.task_kind} model, not {kind}")
    base = c.base_model_name_or_path
    tok_dir = tokenizer or (p if has_tokenizer_files(p) else base)
    if tok_dir is None or (not need_tokenizer and not has_tokenizer_files(Path(tok_dir))):
        if need_tokenizer:
            raise PrunekitError(f"{path} has no tokenizer files and names no teacher to take them from; "
                                "copy the teacher's tokenizer files into it")
        tok = None
    else:
        tok = load_tokenizer(str(path), tok_dir)
    return LoadedModel(str(path), c.task_kind, model, tok, ModelShape.from_config(c), list(c.num_heads_per_layer),
                       list(c.intermediate_sizes), True, base, hidden_size=c.hidden_size)


def load_model_dir(path: str | os.PathLike, kind: str = "auto") -> LoadedModel:
    """:func:`load_model` for export and bench: a model dir (no ``.onnx`` file), on the CPU, with
    its tokenizer where one can be found, and eager attention."""
    loaded = load_model(path, kind, "cpu", onnx_files=False, need_tokenizer=False)
    if loaded.is_compact:
        loaded.model.set_backend("eager")  # the reference every backend and the ONNX graph are checked against
    return loaded


def _config_id2label(config: Path) -> dict | None:
    """The class names of the model dir an ONNX file was exported from, where it still exists."""
    try:
        names = json.loads(config.read_text(encoding="utf-8")).get("id2label")
    except (OSError, ValueError, AttributeError):
        return None
    return names if isinstance(names, dict) and all(isinstance(v, str) for v in names.values()) else None


def _load_onnx(path: str, p: Path, kind: str, tokenizer: str | None) -> LoadedModel:
    """An exported .onnx file: its kind, shape and reference from its report, its tokenizer from
    --tokenizer, the files beside it, or the model dir it was exported from."""
    from .backends import load_onnx_file, onnx_output_kind

    f = load_onnx_file(p)
    info = f.info
    file_kind = info.get("kind") or (onnx_output_kind(f) if kind == "auto" else None)
    if kind != "auto" and file_kind not in (None, kind):
        raise PrunekitError(f"{path} is a {file_kind} model, not {kind}")
    tok_dir = tokenizer or (p.parent if has_tokenizer_files(p.parent) else info.get("tokenizer"))
    if tok_dir is None:
        raise PrunekitError(f"{path}: no tokenizer beside it and none named in its export report: pass --tokenizer DIR")
    shape = ModelShape(**info["shape"]) if info.get("shape") else None
    id2label = info.get("id2label")
    if id2label is None and info.get("source_abs"):  # a report from before it recorded the class names
        id2label = _config_id2label(Path(info["source_abs"]) / "config.json")
    return LoadedModel(path, file_kind or kind, None, load_tokenizer(path, tok_dir), shape, info.get("heads_per_layer"),
                       info.get("ffn_per_layer"), bool(info.get("is_compact")), info.get("reference"), f,
                       info.get("params"), id2label, hidden_size=info.get("hidden_size"))
