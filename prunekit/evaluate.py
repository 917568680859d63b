"""`prunekit eval`: the task's metrics for a teacher or a compact model, alone or side by side.

On labelled data a classifier or regressor is scored with the task's metrics
(:func:`prunekit.metrics.compute_metrics`: accuracy, F1, MCC, Pearson/Spearman; MNLI's matched
and mismatched dev sets are two splits). An embedding model, or any model on unlabelled data, is
scored by its fidelity to a reference model (``--reference``; for a compact model, by default the
teacher its config names): the Spearman correlation of pairwise cosine similarities and the mean
cosine for embeddings (:func:`prunekit.metrics.embedding_fidelity`), the agreement with the
reference's predictions for a classifier, the Pearson correlation for a regressor.

Every model also gets its parameter count and its analytic FLOPs per sequence
(:func:`prunekit.flops.model_flops` with the compact config's per-layer sizes), so ``--compare``
shows what each model costs beside what it scores.

Precisions and runtimes: ``backends`` scores each model dir through those of
:mod:`prunekit.backends` (the very runners ``prunekit bench`` times: torch bf16, torch.compile,
onnxruntime fp32 / fused / dynamic and static int8), one row each, with the change of the primary
metric against the model's own fp32 row (when no backend given is fp32, the model as loaded is
scored too, in PyTorch fp32, to be that row). An ``.onnx`` file from ``prunekit export-onnx`` is
scored as it was exported (backend ``ort``); its tokenizer, kind, shape and reference come from
the export report beside it (``model.onnx.json``), the tokenizer also from files beside the model.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .batching import EncodedData, encode
from .data import data_key
from .errors import PrunekitError
from .flops import format_flops
from .loading import LoadedModel, load_model
from .models import check_max_length
from .scoring import predict, predict_with, score

log = logging.getLogger(__name__)

DEFAULT_SEQ_LEN = 128


def _check_max_length(m: LoadedModel, data: EncodedData, max_length: int) -> None:
    """The encoded texts must fit the model's position embeddings (else an index error deep inside the
    model): a --max-length beyond them is an error when the data has texts that long."""
    from types import SimpleNamespace

    config = m.model.config if m.model is not None else None
    if config is None and m.onnx is not None:  # an exported file: the rows of its position-embedding table
        import onnx

        rows = [t.dims[0] for t in onnx.load(str(m.onnx.path), load_external_data=False).graph.initializer
                if t.name.endswith("position_embeddings.weight") and len(t.dims) == 2]
        config = SimpleNamespace(max_position_embeddings=int(rows[0]), model_type=None) if rows else None
    if config is None:
        return
    try:
        check_max_length(max((len(ids) for ids in data.input_ids), default=0), config, m.path)
    except PrunekitError:
        check_max_length(max_length, config, m.path)  # raises (texts are cut at max_length), naming the option
        raise


def _needs_reference(m: LoadedModel, dataset) -> bool:
    return m.kind == "embedding" or dataset.labels is None or dataset.task.kind == "unlabelled"


def trained_on(model_path: Path) -> set[str]:
    """The data a model dir says it was searched (architecture.json) or distilled (settings.json) on."""
    found = set()
    for name, key in (("architecture.json", "data_source"), ("architecture.json", "data"), ("settings.json", "data")):
        f = model_path / name if model_path.is_dir() else None
        if f is not None and f.is_file():
            try:
                info = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(info, dict) and key in info and (key != "data" or name != "architecture.json"
                                                          or str(info[key]).startswith("prunekit shipped corpus")):
                found.add(data_key(info[key]))  # architecture.json's "data" describes; only the corpus is named there
    return found


@dataclass
class EvalSettings:
    """``prunekit eval`` options."""

    models: list = field(default_factory=list)  # model dirs, hub ids or .onnx files, scored side by side
    data: str | None = None  # GLUE task name or dir, CSV/TSV/JSONL/TXT file; None: the shipped corpus (unlabelled)
    splits: list | None = None  # a GLUE task's splits; None: dev (MNLI: dev_matched and dev_mismatched)
    text_column: str | None = None
    pair_column: str | None = None
    label_column: str | None = None
    task: str | None = None  # read the file as this GLUE task
    glue_dir: str | None = None
    max_examples: int | None = None
    reference: str | None = None  # what embedding models and unlabelled data are scored against; None: the teacher
    kind: str = "auto"  # what a teacher dir outputs (compact dirs and .onnx files know)
    max_length: int = 128  # token truncation
    batch_size: int = 64
    seq_len: int = DEFAULT_SEQ_LEN  # the length the analytic FLOPs are counted at
    device: str = "cpu"
    backends: list | None = None  # score each model dir through these too; None: PyTorch fp32 as loaded
    calibration: str | None = None  # ort-int8-static's data; None: the shipped corpus
    tokenizer: str | None = None  # an .onnx file's tokenizer dir; None: beside it, or its export report's


def evaluate(s: EvalSettings) -> dict:
    """Score every model (through every backend given) on every split; the report holds metrics,
    parameters and FLOPs per model and backend."""
    from .backends import check_backend
    from .distributed import resolve_device

    if not s.models:
        raise PrunekitError("give at least one model to evaluate")
    dev = resolve_device(s.device)  # one line for an unknown device or cuda on a machine without one
    datasets = _datasets(s)
    for b in s.backends or ():
        check_backend(b, dev.type)
    loaded = _load_models(s, str(dev))
    with tempfile.TemporaryDirectory(prefix="prunekit-eval-") as tmp:
        scorer = _Scorer(s, str(dev), Path(tmp), shared_teacher=next((m.teacher for m in loaded if m.teacher), None))
        rows = [scorer.row(m, backend, datasets) for m in loaded for backend in _backends_of(m, s.backends)]
    _deltas(rows)
    first = next(iter(datasets.values()))
    return {"data": first.source, "task": first.task.name, "splits": list(datasets), "seq_len": s.seq_len, "models": rows}


def _datasets(s: EvalSettings) -> dict:
    """{split name: dataset}: the splits asked for; by default dev (MNLI: both dev sets; the
    shipped corpus, which has no splits: ``corpus``)."""
    from .data import is_mnli_mismatched, load_data

    cols = dict(text_column=s.text_column, pair_column=s.pair_column, label_column=s.label_column, task=s.task,
                glue_dir=s.glue_dir, max_examples=s.max_examples)
    given = list(s.splits) if s.splits else None
    datasets = {split: load_data(s.data, split, **cols) for split in (given or ["dev"])}
    if s.data is None and given is None:  # the shipped corpus has no dev split: say what is scored
        return {"corpus": datasets["dev"]}
    first = next(iter(datasets.values()))
    one_file = s.data is not None and Path(s.data).expanduser().is_file()
    if given is None and first.task.name == "mnli" and not one_file and not is_mnli_mismatched(s.data, s.task):
        # MNLI (the task or its folder, not one file of it, nor mnli-mm) is reported on both dev sets
        datasets = {"dev_matched": load_data(s.data, "dev_matched", **cols)}
        try:
            datasets["dev_mismatched"] = load_data(s.data, "dev_mismatched", **cols)
        except PrunekitError as e:  # a copy without the mismatched file: score what there is
            log.warning("%s; scoring MNLI's dev_matched set alone", e)
    return datasets


def _load_models(s: EvalSettings, device: str) -> list[LoadedModel]:
    """Every model, with a warning for one trained on this very data and for .onnx files given --backend."""
    loaded = [load_model(m, s.kind, device, s.tokenizer) for m in s.models]
    for m in loaded:
        if data_key(s.data) in trained_on(Path(m.path)):
            log.warning("%s was searched or distilled on %s: these scores are not on held-out data; give --data with "
                        "examples it has not seen", m.path, s.data or "the shipped corpus")
    files = [m.path for m in loaded if m.onnx is not None] if s.backends else []
    if files and len(files) == len(loaded):
        raise PrunekitError(f"--backend applies to model dirs, and {files[0]} is an exported .onnx file, which runs as "
                            "exported in onnxruntime: drop --backend, or give the model dir")
    for f in files:
        log.warning("--backend applies to model dirs: %s runs as exported in onnxruntime", f)
    return loaded


def _backends_of(m: LoadedModel, backends: list | None) -> list:
    """The rows of one model: None is the model as loaded (PyTorch fp32, or an .onnx file as exported)."""
    from .backends import dtype_of

    if m.onnx is not None or not backends:
        return [None]
    if not any(dtype_of(b) == "fp32" for b in backends):
        # bf16/int8 rows are read against the model's own fp32 row: score it too (the model as
        # loaded, in PyTorch), or their "vs fp32" column would be empty
        return [None, *backends]
    return list(backends)


class _Scorer:
    """Scores one model through one backend on every split; loads each reference model, and
    computes its outputs on each split, once."""

    def __init__(self, s: EvalSettings, device: str, workdir: Path, shared_teacher: str | None):
        self.s, self.device, self.workdir, self.shared_teacher = s, device, workdir, shared_teacher
        self.refs: dict[str, LoadedModel] = {}
        self.ref_outputs: dict = {}
        self.cpu_copies: dict = {}  # model path -> the model on the CPU, for the backends' runners

    def runner(self, m: LoadedModel, backend: str | None) -> tuple[str, str, Callable | None]:
        """(row name, dtype, batch -> output or None for the model as loaded)."""
        from .backends import OnnxFile, build_runner, onnx_file_runner

        if isinstance(m.onnx, OnnxFile):
            r = onnx_file_runner(m.onnx, m.path, self.device)  # on cuda:N, onnxruntime's CUDA provider on GPU N
            stage = (m.onnx.info.get("checks") or [{}])[-1].get("stage", "")
            label = f"ort-{stage}" if stage in ("int8", "int8-static", "fp16") else "ort"  # static vs dynamic int8
            return label, r.dtype, r.run
        if backend is None:
            return "torch", "fp32", None
        if m.path not in self.cpu_copies:  # every runner deep-copies the model to its device, or exports it (on the CPU)
            self.cpu_copies[m.path] = m if self.device == "cpu" else load_model(m.path, m.kind, "cpu", self.s.tokenizer)
        r = build_runner(self.cpu_copies[m.path], m.path, backend, self.device, workdir=self.workdir,
                         calibration=self.s.calibration)
        if r is None:
            raise PrunekitError(f"backend {backend} does not apply to {m.path} (the compact model's kernels)")
        return backend, r.dtype, r.run

    def outputs(self, m: LoadedModel, run: Callable | None, ds) -> torch.Tensor:
        data = encode(ds, m.tokenizer, self.s.max_length)
        _check_max_length(m, data, self.s.max_length)
        if run is None:
            return predict(m.model, m.kind, data, self.device, self.s.batch_size)
        return predict_with(run, data, self.device, self.s.batch_size)

    def reference_outputs(self, m: LoadedModel, split: str, ds) -> tuple[str, torch.Tensor]:
        """(reference path, its outputs on ``ds``) for a model scored by fidelity."""
        ref_path = self.s.reference or m.teacher
        if ref_path is None and self.shared_teacher is not None and _same_path(self.shared_teacher, m.path):
            ref_path = self.shared_teacher  # the teacher of the compact models beside it: scored against itself
        if ref_path is not None and m.onnx is None and _same_path(ref_path, m.path):
            self.refs.setdefault(ref_path, m)
        if ref_path is None:
            why = "an embedding model" if m.kind == "embedding" else "unlabelled data"
            raise PrunekitError(f"{m.path} is scored on {why} by fidelity to a reference model: pass --reference MODEL")
        if ref_path not in self.refs:
            self.refs[ref_path] = load_model(ref_path, m.kind if m.kind == "embedding" else "auto", self.device)
        r = self.refs[ref_path]
        if r.kind != m.kind:
            raise PrunekitError(f"the reference {ref_path} is a {r.kind} model but {m.path} is {m.kind}: compare like with like")
        if (ref_path, split) not in self.ref_outputs:
            self.ref_outputs[ref_path, split] = self.outputs(r, self.runner(r, None)[2], ds)
        return ref_path, self.ref_outputs[ref_path, split]

    def row(self, m: LoadedModel, backend: str | None, datasets: dict) -> dict:
        name, dtype, run = self.runner(m, backend)
        results = {}
        for split, ds in datasets.items():
            ds = m.align(ds)  # labels in the model's class ids
            out = self.outputs(m, run, ds)
            ref_path, ref_out = self.reference_outputs(m, split, ds) if _needs_reference(m, ds) else (None, None)
            primary, metrics, against = score(m.kind, out, ds, ref_out)
            results[split] = {"primary": primary, "metrics": metrics,
                              "scored_against": ref_path if against == "reference" else "labels", "examples": len(ds)}
        flops, full = m.flops(self.s.seq_len), m.full_flops(self.s.seq_len)
        return {"model": m.path, "backend": name, "dtype": dtype, "type": "compact" if m.is_compact else "teacher",
                "kind": m.kind, "params": m.params, "flops": flops, "flops_ratio": flops / full if flops and full else None,
                "heads_per_layer": m.heads_per_layer, "ffn_per_layer": m.ffn_per_layer, "results": results}


def _same_path(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.resolve() == pb.resolve() if pa.exists() and pb.exists() else a == b


def _deltas(rows: list) -> None:
    """Per row and split, the change of the primary metric against the same model's first fp32 row
    (bf16 and int8 against fp32: the accuracy that goes with their speed)."""
    for row in rows:
        base = next((r for r in rows if r["model"] == row["model"] and r["dtype"] == "fp32"), None)
        for split, res in row["results"].items():
            b = base["results"].get(split) if base is not None and base is not row else None
            res["primary_delta"] = None if b is None else res["metrics"][res["primary"]] - b["metrics"][b["primary"]]


def _short(path: str, width: int = 28) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3):]


def format_table(report: dict) -> str:
    """The report as a fixed-width table: one row per model and backend, its cost, each split's
    metrics and (with several backends) the primary metric's change against the model's fp32 row."""
    cols = []  # (split, metric)
    for row in report["models"]:
        for split, r in row["results"].items():
            for k in r["metrics"]:
                if (split, k) not in cols:
                    cols.append((split, k))
    multi = len(report["splits"]) > 1
    deltas = [s for s in report["splits"] if any(row["results"].get(s, {}).get("primary_delta") is not None for row in report["models"])]
    heads = ["model", "backend", "type", "params", f"FLOPs (T={report['seq_len']})", "ratio"] + \
        [f"{s}:{k}" if multi else k for s, k in cols] + [f"{s}:vs fp32" if multi else "vs fp32" for s in deltas]

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = []
    for row in report["models"]:
        cells = [_short(row["model"]), f"{row.get('backend', 'torch')} ({row.get('dtype', 'fp32')})", row["type"],
                 "-" if row["params"] is None else f"{row['params'] / 1e6:.2f}M",
                 "-" if row["flops"] is None else format_flops(row["flops"]), num(row["flops_ratio"], ".3f")]
        for s, k in cols:
            cells.append(num(row["results"].get(s, {}).get("metrics", {}).get(k), ".4f"))
        for s in deltas:
            cells.append(num(row["results"].get(s, {}).get("primary_delta"), "+.4f"))
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(heads)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [f"data: {report['data']} ({', '.join(report['splits'])})", fmt(heads), fmt(["-" * w for w in widths])]
    out += [fmt(c) for c in lines]
    against = sorted({r["scored_against"] for row in report["models"] for r in row["results"].values() if r["scored_against"] != "labels"})
    if against:
        out.append(f"scored by fidelity to: {', '.join(against)} (no labels, or an embedding model)")
    return "\n".join(out)
