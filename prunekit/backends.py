"""One model, one backend: the runners that `prunekit bench` times and `prunekit eval` scores.

``build_runner(source, backend, ...)`` returns a :class:`Runner` whose ``run(batch)`` maps a batch
(``input_ids``, ``attention_mask``, ``token_type_ids``) to the model's task output, fp32 on the
CPU: logits (classification/regression) or embeddings mean-pooled over the attention mask. Bench
and eval share these builders, so the model eval scores in a precision is the one bench timed.

``source`` is a model dir loaded by :func:`prunekit.loading.load_model_dir` (original or compact)
or an :class:`OnnxFile` (an exported ``.onnx``, run as it is by the ``ort`` backend).

Backends (``BACKENDS``; the dtype decides the tolerance a test holds each one to):

=================== ======= ==============================================================
torch-eager         fp32    matmul + softmax attention (transformers' eager for an original)
torch-sdpa          fp32    ``scaled_dot_product_attention``
torch-bf16          bf16    SDPA with the weights in bf16 (AMX / AVX512-BF16 matrix units)
torch-bf16-packed   bf16    the same, padding-free (compact only: real tokens packed, attention padded)
compile-fp32        fp32    ``torch.compile`` (inductor, weights frozen) of the SDPA model
compile-bf16        bf16    the same with the weights in bf16
compile-bf16-packed bf16    the compact model's padding-free path compiled (dynamic shapes; the packing outside)
torch-fp16          fp16    SDPA with the weights in fp16 (CUDA)
torch-fp16-graph    fp16    the same replayed from CUDA graphs, one per input shape (CUDA)
compile-fp16        fp16    ``torch.compile`` of the fp16 SDPA model (CUDA)
triton              fp32    the compact model's Triton kernels, padding-free (CUDA)
triton-fp16         fp16    the same in fp16 (CUDA)
triton-fp16-graph   fp16    the same replayed from CUDA graphs (:class:`prunekit.cuda_graphs.CudaGraphRunner`)
ort-fp32            fp32    onnxruntime, the graph as exported
ort-opt             fp32    onnxruntime after its transformer fusions (per-layer Attention on the 2D mask; no SkipLayerNorm)
ort-int8            int8    ort-opt with dynamic int8 MatMuls
ort-int8-static     int8    static int8 MatMuls (QLinearMatMul, unfused graph), calibrated on real sentences
ort-cuda            fp32    onnxruntime's CUDA provider
ort-cuda-fp16       fp16    onnxruntime's CUDA provider on the fused graph in fp16 (``export-onnx --optimize --fp16``)
ort                 as-is   an ``.onnx`` file as it was exported (CPU, or CUDA with device cuda)
=================== ======= ==============================================================

A backend that cannot run here (no onnxruntime, no C++ compiler for inductor, no CUDA) is
reported by :func:`unavailable` as one line, never a traceback.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import PrunekitError
from .io import read_json
from .pooling import mean_pool, output_projection, task_output
from .system import native_bf16

# name -> (dtype, devices)
BACKENDS: dict[str, tuple[str, tuple]] = {
    "torch-eager": ("fp32", ("cpu", "cuda")),
    "torch-sdpa": ("fp32", ("cpu", "cuda")),
    "torch-bf16": ("bf16", ("cpu", "cuda")),
    "torch-bf16-packed": ("bf16", ("cpu", "cuda")),
    "compile-fp32": ("fp32", ("cpu", "cuda")),
    "compile-bf16": ("bf16", ("cpu", "cuda")),
    "compile-bf16-packed": ("bf16", ("cpu", "cuda")),
    "torch-fp16": ("fp16", ("cuda",)),
    "torch-fp16-graph": ("fp16", ("cuda",)),
    "compile-fp16": ("fp16", ("cuda",)),
    "triton": ("fp32", ("cuda",)),
    "triton-fp16": ("fp16", ("cuda",)),
    "triton-fp16-graph": ("fp16", ("cuda",)),
    "ort-fp32": ("fp32", ("cpu",)),
    "ort-opt": ("fp32", ("cpu",)),
    "ort-int8": ("int8", ("cpu",)),
    "ort-int8-static": ("int8", ("cpu",)),
    "ort-cuda": ("fp32", ("cuda",)),
    "ort-cuda-fp16": ("fp16", ("cuda",)),
    "ort": ("as exported", ("cpu", "cuda")),
}
# A compact-only backend's speedup is taken over the original on its counterpart: the same dtype
# (and graph replay) in PyTorch's own attention, padded.
COUNTERPART = {"torch-bf16-packed": "torch-bf16", "compile-bf16-packed": "compile-bf16", "triton": "torch-sdpa",
               "triton-fp16": "torch-fp16", "triton-fp16-graph": "torch-fp16-graph"}
COMPACT_ONLY = ("torch-bf16-packed", "compile-bf16-packed", "triton", "triton-fp16", "triton-fp16-graph")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BACKENDS = tuple(b for b, (_, dev) in BACKENDS.items() if "cpu" in dev and b != "ort")
CUDA_BACKENDS = tuple(b for b, (_, dev) in BACKENDS.items() if "cuda" in dev and b != "ort")
ONNX_FILE_BACKENDS = ("ort",)


def dtype_of(backend: str) -> str:
    return BACKENDS[backend][0]


def check_backend(backend: str, device: str, onnx_file: bool = False) -> None:
    """A one-line error for a backend name that does not exist, or not for this device or source."""
    if onnx_file:
        if backend not in ONNX_FILE_BACKENDS:
            raise PrunekitError(f"an .onnx file runs as it was exported (backend 'ort'), not {backend!r}: give the model dir "
                                "it was exported from to try other backends, or export it with --optimize / --quantize")
        return
    known = CPU_BACKENDS if device == "cpu" else CUDA_BACKENDS
    if backend in BACKENDS and backend not in known and backend != "ort":
        where = " or ".join(BACKENDS[backend][1])
        raise PrunekitError(f"backend {backend!r} runs on {where} only, not on --device {device}: use one of {', '.join(known)}")
    if backend not in known:
        raise PrunekitError(f"unknown backend {backend!r} for --device {device}: use {', '.join(known)}")


def _cxx_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _c_compiler() -> str | None:
    """The C compiler Triton builds its CUDA launcher with on first use ($CC, else gcc, else clang)."""
    for name in (os.environ.get("CC"), "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def unavailable(backend: str, device: str = "cpu") -> str | None:
    """Why ``backend`` cannot run on this machine (one line), or None when it can."""
    if backend.startswith("ort"):
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        if (backend.startswith("ort-cuda") or (backend == "ort" and device == "cuda")) and \
                "CUDAExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    if backend.startswith("compile-"):
        from torch import _dynamo  # not `import torch._dynamo`: that would make `torch` local to this function

        if not _dynamo.is_dynamo_supported():
            return f"torch.compile is not supported on this Python ({torch.__version__})"
        if device == "cpu" and _cxx_compiler() is None:
            return "torch.compile on the CPU needs a C++ compiler (g++ or clang++) for inductor, and none is on PATH"
    if device == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if device == "cuda" and backend.startswith(("triton", "compile-")) and _c_compiler() is None:
        return "Triton builds its CUDA launcher with a C compiler on first use, and none is on PATH (install gcc, or set CC)"
    if backend.startswith("triton"):
        try:
            import prunekit_kernels as pk
        except ImportError:
            return "the prunekit_kernels package is not installed"
        ok, why = pk.triton_available(torch.device(device))
        if not ok:
            return why
    return None


# ------------------------------------------------------------------------------------------------
# Runners
# ------------------------------------------------------------------------------------------------
@dataclass
class Runner:
    model: str
    backend: str
    run: Callable[[dict], torch.Tensor]  # batch -> task output, fp32 on the CPU (synchronised)
    size_bytes: int
    dtype: str = "fp32"
    notes: list = field(default_factory=list)
    times: list = field(default_factory=list)  # seconds per repeat (bench)
    onnx_path: Path | None = None  # the file an onnxruntime runner runs (to profile it)
    captures: Callable[[], int] | None = None  # *-graph backends: CUDA graphs captured so far


@dataclass
class OnnxFile:
    """An exported ``.onnx`` file and what its ``<file>.json`` report (written by export-onnx) says."""

    path: Path
    info: dict

    @property
    def kind(self) -> str | None:
        return self.info.get("kind")


def load_onnx_file(path: str | os.PathLike) -> OnnxFile:
    p = Path(path)
    if not p.is_file():
        raise PrunekitError(f"{path} is not a file: give an .onnx file written by `prunekit export-onnx`")
    side = p.with_name(p.name + ".json")
    info = _check_onnx_report(side, read_json(side, fix="re-export the model or delete the report")) if side.is_file() else {}
    return OnnxFile(p, info)


def _check_onnx_report(side: Path, info) -> dict:
    """The fields of an export report that eval and bench read, type-checked (a hand-edited or
    foreign ``.onnx.json`` is one clear error, not a TypeError deep inside)."""
    from .configs import TASK_KINDS
    from .flops import ModelShape

    def bad(field: str, want: str):
        return PrunekitError(f"{side}: {field} must be {want}; the export report is corrupt (re-export the model or delete it)")

    if not isinstance(info, dict):
        raise bad("the report", "a JSON object")
    if info.get("kind") is not None and info["kind"] not in TASK_KINDS:
        raise bad("kind", " or ".join(TASK_KINDS))
    for key in ("tokenizer", "reference"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise bad(key, "a path (a string)")
    for key in ("heads_per_layer", "ffn_per_layer"):
        v = info.get(key)
        if v is not None and not (isinstance(v, list) and len(v) <= 1024 and all(type(x) is int and 0 <= x < 1 << 20 for x in v)):
            raise bad(key, "a list of per-layer sizes")
    if info.get("params") is not None and type(info["params"]) is not int:
        raise bad("params", "a whole number")
    if info.get("hidden_size") is not None and not (type(info["hidden_size"]) is int and 1 <= info["hidden_size"] < 1 << 24):
        raise bad("hidden_size", "a whole number of dimensions")
    id2label = info.get("id2label")
    if id2label is not None and not (isinstance(id2label, dict) and len(id2label) <= 1 << 16
                                     and all(isinstance(v, str) for v in id2label.values())):
        raise bad("id2label", "an object of class names")
    if info.get("checks") is not None and not (isinstance(info["checks"], list) and all(isinstance(c, dict) for c in info["checks"])):
        raise bad("checks", "a list of objects")
    shape = info.get("shape")
    if shape:
        names = set(ModelShape.__dataclass_fields__)
        if not (isinstance(shape, dict) and set(shape) <= names and all(type(v) is int and 0 <= v < 1 << 24 for v in shape.values())):
            raise bad("shape", f"an object of whole numbers with the keys {', '.join(sorted(names))}")
        try:
            ModelShape(**shape)
        except TypeError:
            raise bad("shape", f"an object with the keys {', '.join(sorted(names))}") from None
    return info


def _ort_session(f: OnnxFile, device: str = "cpu", threads: int | None = None):
    from .export import ort_providers, session

    providers = ort_providers(device)
    try:
        return session(f.path, providers, threads)
    except Exception as e:  # noqa: BLE001 - not an ONNX model, or one this onnxruntime cannot run
        raise PrunekitError(f"onnxruntime cannot load {f.path}: {str(e).splitlines()[0][:200]}") from None


def onnx_output_kind(f: OnnxFile) -> str:
    """What a graph without an export report outputs, from its first output: hidden states [B, T, H]
    or ``embeddings`` -> embedding (mean-pooled), ``[B, 1]`` -> regression, else classification."""
    out = _ort_session(f).get_outputs()[0]
    if out.name == "embeddings" or len(out.shape) == 3:
        return "embedding"
    return "regression" if out.shape and out.shape[-1] == 1 else "classification"


def _with_recompile_room(fn, *args):
    """``fn(*args)`` with dynamo's recompile limits raised (named ``*cache_size_limit`` before torch 2.7)."""
    import torch._dynamo.config as dc

    names = [("recompile_limit", 64), ("accumulated_recompile_limit", 1024)]
    if not hasattr(dc, "recompile_limit"):
        names = [("cache_size_limit", 64), ("accumulated_cache_size_limit", 1024)]
    patch = {k: max(getattr(dc, k), v) for k, v in names if hasattr(dc, k)}
    with dc.patch(patch):
        return fn(*args)


def _weights_size(loaded) -> int:
    """The fp32 weights' bytes: the files of a model dir, or the parameters of a model loaded by hub id."""
    path = Path(loaded.path)
    if not path.is_dir():
        return sum(p.numel() * 4 for p in loaded.model.parameters())
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin", ".pt", ".onnx"))


class TaskOutput(nn.Module):
    """model -> logits, or embeddings mean-pooled in fp32 (and through the model's output projection,
    if it has one: what eval scores and the ONNX graph returns)."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, input_ids, attention_mask, token_type_ids, packed_indices=None):
        extra = {} if packed_indices is None else {"packed_indices": packed_indices}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **extra)
        return task_output(out, self.kind, attention_mask, fp32=True, projection=output_projection(self.model))


def _recent(cache: dict, key, keep: int, make: Callable):
    """``cache[key]``, made by ``make()`` when absent; the least recently used entry is dropped past ``keep``."""
    value = cache.pop(key, None)
    if value is None:
        while len(cache) >= keep:
            cache.pop(next(iter(cache)))
        value = make()
    cache[key] = value  # most recent last
    return value


class ShapeGraphs:
    """``fn(input_ids, attention_mask, token_type_ids, use_mask)`` replayed from CUDA graphs (the
    ``*-graph`` backends): one graph per input shape, and with ``unmasked_when_full`` one more for a
    batch without padding, captured with ``use_mask=False`` (what the compact model does without a
    graph: attention with no mask, the flash kernel). One host sync per call (is there padding?);
    the oldest graph is dropped past ``keep``. The output is the graph's own memory: valid until the
    next call.

    An original (transformers) model is always captured with its mask: on an H200 (transformers
    5.17) its unmasked capture of a batch 128 x 128 replayed in 18 ms where the plain model took
    7.2 ms, while the masked capture ran at the plain model's speed."""

    def __init__(self, fn: Callable, keep: int = 64, warmup: int = 2, unmasked_when_full: bool = True):
        self.fn, self.keep, self.warmup, self.unmasked_when_full = fn, keep, warmup, unmasked_when_full
        self.graphs: dict = {}  # (B, T, padded) -> (graph, static inputs, output); most recent last
        self.captures = 0
        self._pool = None  # one memory pool for all the graphs: they are replayed one at a time

    def _capture(self, feed: dict, use_mask: bool):
        from .cuda_graphs import capture_graph

        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        static = {k: v.clone() for k, v in feed.items()}
        graph, out = capture_graph(lambda: self.fn(**static, use_mask=use_mask), feed["input_ids"].device, self.warmup,
                                   self._pool)
        return graph, static, out

    def __call__(self, input_ids, attention_mask, token_type_ids):
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        padded = not self.unmasked_when_full or not bool(attention_mask.all())
        key = (*input_ids.shape, padded)
        captured = key in self.graphs
        graph, static, out = _recent(self.graphs, key, self.keep, lambda: self._capture(feed, padded))
        if captured:  # a new capture already holds this batch
            for k, v in feed.items():
                static[k].copy_(v)
        else:
            self.captures += 1
        from .cuda_graphs import on_cuda_device

        with on_cuda_device(input_ids.device):  # replayed on the current stream of the inputs' device
            graph.replay()
        return out


class _PackedGraphs:
    """The ``triton-fp16-graph`` backend: a compact model's :class:`CudaGraphRunner` per input shape
    (each keeps one graph per packed-token capacity, and one for a batch without padding)."""

    def __init__(self, model: nn.Module, kind: str, keep: int = 64):
        self.model, self.kind, self.keep = model, kind, keep
        self.runners: dict = {}
        self.captures = 0

    def __call__(self, input_ids, attention_mask, token_type_ids):
        key = tuple(input_ids.shape)
        runner = _recent(self.runners, key, self.keep, lambda: self.model.capture_cuda_graph(*key, clone_outputs=False))
        before = len(runner.graphs)
        out = runner(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        self.captures += len(runner.graphs) - before
        return task_output(out, self.kind, attention_mask, fp32=True, projection=output_projection(self.model))


def _graph_fn(model: nn.Module, kind: str, is_compact: bool) -> Callable:
    """The task output as :class:`ShapeGraphs` captures it. An original (transformers) model gets the
    key-padding mask already 4-D (``[B, 1, 1, T]``, True = attend), which its mask code takes as it
    is: no data-dependent check (a host sync) inside the capture."""

    if not is_compact:
        import transformers

        if int(transformers.__version__.split(".")[0]) < 5:
            raise PrunekitError("the *-graph backends need transformers >= 5 for an original model (4.x reads the "
                                f"attention mask on the host, which a CUDA graph cannot capture); this is {transformers.__version__}")

    def fn(input_ids, attention_mask, token_type_ids, use_mask: bool):
        mask = None
        if use_mask:
            mask = attention_mask if is_compact else attention_mask[:, None, None, :].bool()
        out = model(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids)
        return task_output(out, kind, attention_mask, fp32=True, projection=output_projection(model))

    return fn


def _torch_model(loaded, backend: str, device: str = "cpu") -> nn.Module | None:
    """A private copy of the model on ``device`` in the backend's dtype, with its attention
    implementation set once (runners are timed interleaved, so a shared model would switch
    implementation before every call). Moved before the backend is set: ``triton`` checks the
    device the model is on."""
    impl = "triton" if backend.startswith("triton") else "sdpa-packed" if backend.endswith("-packed") else \
        {"torch-eager": "eager"}.get(backend, "sdpa")
    if not loaded.is_compact and backend in COMPACT_ONLY:
        return None  # the compact model's own paths; an original has its transformers backends
    model = copy.deepcopy(loaded.compact_view if loaded.is_compact else loaded.model)
    model = model.to(device=device, dtype=TORCH_DTYPES[dtype_of(backend)]).eval()
    if loaded.is_compact:
        return model.set_backend(impl)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl
    return model


def _torch_runner(loaded, name: str, backend: str, device: str) -> Runner | None:
    model = _torch_model(loaded, backend, device)
    if model is None:
        return None
    dtype = dtype_of(backend)
    fn = TaskOutput(model, loaded.kind).eval()
    notes = []
    if backend == "triton-fp16-graph":
        fn = _PackedGraphs(model, loaded.kind)
    elif backend.endswith("-graph"):
        fn = ShapeGraphs(_graph_fn(model, loaded.kind, loaded.is_compact), unmasked_when_full=loaded.is_compact)
    elif backend.startswith("compile-"):
        # Frozen weights: inductor folds them into the graph and prepacks them for oneDNN (AMX on
        # CPUs that have it). Shapes are marked dynamic only if they change (eval's batches do).
        # The compact model compiles as one graph (fullgraph); a transformers model may break.
        # Every runner compiles TaskOutput.forward, one code object: dynamo counts each new model (and
        # each new input shape) as a recompile of it, and past its limit (8) it runs the rest eagerly,
        # silently. A bench of several models, or eval's changing batch shapes, goes past 8. The limit
        # is raised only while a runner calls its graph (compiling is lazy: it happens there), so the
        # caller's own torch.compile code keeps its settings.
        if backend.endswith("-packed"):
            # The padding-free path with the real tokens' indices found here (one host sync), outside
            # the graph: inside, nothing depends on the mask's content, and the row count, batch and
            # length are dynamic (marked so from the first call: every batch differs).
            compiled = torch.compile(fn, fullgraph=True, dynamic=True, options={"freezing": True})

            def call(input_ids, attention_mask, token_type_ids):
                indices = torch.nonzero(attention_mask.flatten()).flatten()
                return compiled(input_ids, attention_mask, token_type_ids, indices)
        else:
            call = torch.compile(fn, fullgraph=loaded.is_compact, options={"freezing": True})
        fn = lambda *a: _with_recompile_room(call, *a)  # noqa: E731
    if dtype == "bf16" and device == "cpu" and not native_bf16():
        notes.append(f"{name} {backend}: this CPU has no bf16 matrix instructions (AVX512-BF16/AMX): bf16 is emulated, slowly")

    def run(batch):
        with torch.inference_mode():
            y = fn(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return y.float().cpu()  # a copy to the host synchronises a CUDA device

    captures = (lambda: fn.captures) if isinstance(fn, (ShapeGraphs, _PackedGraphs)) else None
    return Runner(name, backend, run, _weights_size(loaded) // (1 if dtype == "fp32" else 2), dtype, notes,
                  captures=captures)


def _ort_inputs(sess) -> list[str]:
    return [i.name for i in sess.get_inputs()]


def _onnx_run(sess, pool: bool) -> Callable[[dict], torch.Tensor]:
    names = _ort_inputs(sess)

    def run(batch):
        feed = {k: batch[k].cpu().numpy() for k in names}
        y = torch.from_numpy(np.asarray(sess.run(None, feed)[0], dtype=np.float32))
        if pool and y.dim() == 3:  # a graph that returns hidden states: mean-pool them as eval does
            y = mean_pool(y, batch["attention_mask"].cpu())
        return y

    return run


def _ort_runner(loaded, name: str, backend: str, workdir: Path, threads: int | None,
                calibration: str | None, device: str = "cpu") -> Runner | None:
    from .export import ExportSettings, export_onnx, ort_providers, session

    on_cuda = backend.startswith("ort-cuda")
    providers = ort_providers(device if on_cuda else "cpu")
    static = backend == "ort-int8-static"
    es = ExportSettings(optimize=backend in ("ort-opt", "ort-int8", "ort-cuda-fp16"),  # static int8: the unfused graph
                        fp16=backend == "ort-cuda-fp16",
                        quantize="int8-static" if static else "int8" if backend == "ort-int8" else None,
                        calibration=calibration if static else None,  # None: the shipped corpus
                        device=device if on_cuda else None)  # the fp16 check on the GPU the runner uses
    # A directory of its own (unique, made atomically): the graph and whatever the export writes
    # beside it never meet another runner's files in a shared workdir.
    path = Path(tempfile.mkdtemp(prefix=f"{backend}-", dir=workdir)) / "model.onnx"
    report = export_onnx(loaded.path, path, es, loaded=loaded, write_report=False)
    sess = session(path, providers, threads)
    notes = []
    if on_cuda and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise PrunekitError(f"onnxruntime fell back to {sess.get_providers()[0]} instead of CUDA")
    if report.fused:
        notes.append(f"{name} {backend}: attention fused in {len(report.fused['attention_heads'])} of "
                     f"{report.fused['layers_with_heads']} layers with heads")
    if backend.startswith("ort-int8"):
        c = report.checks[-1]
        notes.append(f"{name} {backend}: output differs from fp32 PyTorch by {c.max_abs_diff:.2e} max abs "
                     f"({c.rel_diff:.1%} of max |output|); check the task metric with `prunekit eval --backend {backend}`")
    notes += [f"{name} {backend}: {n}" for n in report.notes]
    return Runner(name, backend, _onnx_run(sess, False), path.stat().st_size, dtype_of(backend), notes, onnx_path=path)


def onnx_file_runner(f: OnnxFile, name: str, device: str = "cpu", threads: int | None = None) -> Runner:
    """The ``ort`` backend: an exported file as it is."""
    sess = _ort_session(f, device, threads)
    if torch.device(device).type == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":  # e.g. CUDA libraries missing
        raise PrunekitError(f"onnxruntime fell back to {sess.get_providers()[0]} instead of CUDA for {f.path}")
    missing = [n for n in _ort_inputs(sess) if n not in ("input_ids", "attention_mask", "token_type_ids")]
    if missing:
        raise PrunekitError(f"{f.path} takes inputs {missing} besides input_ids/attention_mask/token_type_ids: not a BERT-style graph")
    stage = (f.info.get("checks") or [{}])[-1].get("stage", "")
    dtype = {"int8": "int8", "int8-static": "int8", "fp16": "fp16"}.get(stage, "fp32" if stage else "as exported")
    return Runner(name, "ort", _onnx_run(sess, True), f.path.stat().st_size, dtype, onnx_path=f.path)


def build_runner(source, name: str, backend: str, device: str = "cpu", threads: int | None = None,
                 workdir: Path | None = None, calibration: str | None = None) -> Runner | None:
    """A runner of ``source`` (a loaded model dir or an :class:`OnnxFile`) on ``backend``; None when
    the backend does not apply to this model (triton for an original). ``workdir`` holds the ONNX
    files an ``ort-*`` backend exports; ``calibration`` is the data ``ort-int8-static`` calibrates
    on (default: the shipped corpus)."""
    kind = torch.device(device).type  # "cuda:1" -> cuda for the checks; the models go to ``device`` itself
    if isinstance(source, OnnxFile):
        check_backend(backend, kind, onnx_file=True)
        why = unavailable("ort", kind)
        if why:
            raise PrunekitError(f"cannot run {source.path} on {kind}: {why}")
        return onnx_file_runner(source, name, device, threads)
    check_backend(backend, kind)
    why = unavailable(backend, kind)
    if why:
        raise PrunekitError(f"backend {backend} cannot run here: {why}")
    if backend.startswith("ort-"):
        if workdir is None:
            raise ValueError("ort backends need a workdir for their ONNX files")
        return _ort_runner(source, name, backend, workdir, threads, calibration, device)
    return _torch_runner(source, name, backend, device)
