"""ONNX export of a compact (or original) model, validated in onnxruntime when it is made.

``export_onnx(model_dir, output)`` writes one ``.onnx`` file with inputs ``input_ids``,
``attention_mask``, ``token_type_ids`` (int64, dynamic batch and sequence axes) and one output:
``logits`` (classification/regression) or ``embeddings`` (mean-pooled over the attention mask; a
model whose hidden width was cut maps them back to its teacher's width through its ``output_proj``,
as in PyTorch).

The graph is traced from :class:`OnnxGraph`, an export-only view of the model that computes what the
model computes but is laid out for onnxruntime:

* Q, K and V are separate projections, and every layer reshapes to ``[*, *, h_i, d]`` with its
  **own head count as a constant**. onnxruntime's transformer optimizer (model type ``bert``,
  ``num_heads=0, hidden_size=0``) reads the head count from that constant, so it can fuse each layer
  into an ``Attention`` node with that layer's head count. A transformers BERT reshapes with ``-1``
  and gets no fused attention at all without one global ``num_heads`` — wrong for uneven layers.
* An original Hugging Face model is exported through the same view (all heads and neurons kept,
  sliced by :func:`prunekit.compact.compact`), so the original and the compact model get the same
  graph optimizations; parity is still checked against the transformers model itself.
* A layer with no heads is ``LayerNorm(x + attn_out_bias)``, one with no FFN ``LayerNorm(x + down_bias)``.

Every stage is validated (huggingface/optimum's ``validate_model_outputs`` habit): random padded
inputs of a batch size and length other than the traced ones, onnxruntime against PyTorch (fp32),
max abs difference printed; over tolerance the export fails and nothing is left at ``output``
(all stages run in a temp dir beside it; the final file is moved into place at the end).

Optional stages, in this order: ``optimize`` (transformer fusions; the fused ``Attention`` nodes'
head counts are checked against the layers' — a fusion that got a layer's head count wrong is never
kept: the graph is re-optimized with attention fusion off), then ``fp16`` (for GPU) or
``quantize="int8"`` (dynamic, for CPU; it makes its own fusions from the unfused graph, see
:func:`quantize_int8`) / ``"int8-static"`` (activation ranges calibrated on real
sentences, ``calibration``); both int8 stages are checked against a looser relative tolerance, and
``prunekit eval`` gives the task metric.

Beside ``model.onnx`` the report ``model.onnx.json`` records what ``prunekit eval model.onnx``
needs: the kind, the tokenizer's directory, the model's shape (for FLOPs) and the reference model.
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .card import command_line, model_dir_of, write_card
from .errors import PrunekitError
from .flops import ModelShape
from .io import atomic_write_text, check_output_file, output_slot
from .loading import LoadedModel, has_tokenizer_files, load_model_dir
from .modeling import CompactBertModel, CompactBertPreTrainedModel
from .pooling import mean_pool, output_projection
from .system import int8_dot_product

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
QUANTIZE = ("int8", "int8-static")


def reference_output(loaded: LoadedModel, batch: dict) -> torch.Tensor:
    """The PyTorch output the ONNX graph must reproduce (fp32, eval mode)."""
    from .models import model_output

    with torch.no_grad():
        return model_output(loaded.model, loaded.kind, batch)


# ------------------------------------------------------------------------------------------------
# The export-only view
# ------------------------------------------------------------------------------------------------
class _OnnxLayer(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.heads, self.head_dim = layer.num_heads, layer.head_dim
        inner = self.heads * self.head_dim
        if inner:
            w, b = layer.qkv.weight.detach(), layer.qkv.bias.detach()
            self.q, self.k, self.v = (_linear(w[i * inner:(i + 1) * inner], b[i * inner:(i + 1) * inner]) for i in range(3))
            self.attn_out = _linear(layer.attn_out.weight.detach(), layer.attn_out_bias.detach())
        self.attn_out_bias = layer.attn_out_bias  # used alone when the layer has no heads
        self.attn_norm, self.ffn_norm = layer.attn_norm, layer.ffn_norm
        self.up = layer.up
        if layer.up is not None:
            self.down = _linear(layer.down.weight.detach(), layer.down_bias.detach())
        self.down_bias = layer.down_bias
        self.act = layer.act

    def forward(self, x: torch.Tensor, add_mask: torch.Tensor) -> torch.Tensor:
        if self.heads:
            b, t = x.shape[0], x.shape[1]
            h, d = self.heads, self.head_dim  # python ints: constants in the graph's Reshape shapes

            def split(y):
                return y.view(b, t, h, d).transpose(1, 2)

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d) + add_mask
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, t, h * d)
            x = self.attn_norm(self.attn_out(ctx) + x)
        else:
            x = self.attn_norm(x + self.attn_out_bias)
        if self.up is not None:
            x = self.ffn_norm(self.down(self.act(self.up(x))) + x)
        else:
            x = self.ffn_norm(x + self.down_bias)
        return x


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return lin


class OnnxGraph(nn.Module):
    """(input_ids, attention_mask, token_type_ids) -> logits or mean-pooled embeddings, laid out
    for onnxruntime (see the module docstring). Same function as ``model`` in eval mode."""

    def __init__(self, model: CompactBertPreTrainedModel):
        super().__init__()
        enc = model if isinstance(model, CompactBertModel) else model.bert
        self.embeddings = enc.embeddings
        self.layers = nn.ModuleList(_OnnxLayer(layer) for layer in enc.layers)
        self.classify = not isinstance(model, CompactBertModel)
        if self.classify:
            self.pooler, self.classifier = model.pooler, model.classifier
        else:  # a narrowed hidden width mapped back to the teacher's output space (None: none)
            self.output_proj = output_projection(model)
        self.eval()

    def forward(self, input_ids, attention_mask, token_type_ids):
        emb = self.embeddings
        x = emb(input_ids, token_type_ids, emb.position_ids(input_ids))
        add_mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, add_mask)
        if self.classify:
            return self.classifier(torch.tanh(self.pooler(x[:, 0])))
        pooled = mean_pool(x, attention_mask)
        return pooled if self.output_proj is None else self.output_proj(pooled)


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------
def random_inputs(config, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Random padded inputs: row 0 full length, the others random lengths >= 1; pads are pad ids."""
    g = torch.Generator().manual_seed(seed)
    length = max(1, min(length, config.max_position_embeddings - 2))
    pad = config.pad_token_id or 0
    lo = 5 if config.vocab_size > 10 else 0
    ids = torch.randint(lo, config.vocab_size, (batch, length), generator=g)
    ids[ids == pad] = (pad + 1) % config.vocab_size
    lens = torch.randint(1, length + 1, (batch,), generator=g)
    lens[0] = length
    mask = (torch.arange(length)[None, :] < lens[:, None]).long()
    types = (torch.rand(batch, length, generator=g) < 0.5).long() if config.type_vocab_size > 1 else torch.zeros_like(ids)
    return {"input_ids": torch.where(mask.bool(), ids, torch.full_like(ids, pad)), "attention_mask": mask,
            "token_type_ids": types * mask}


def session(path: str | os.PathLike, providers: list | None = None, threads: int | None = None):
    """An onnxruntime session; threads do not spin while idle (so they do not steal another runtime's cores)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Providers this onnxruntime lacks (CUDA in a CPU-only build) are left out rather than warned about;
    # an entry is a name or (name, options).
    available = set(ort.get_available_providers())
    providers = [p for p in providers or () if (p[0] if isinstance(p, tuple) else p) in available] or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=providers)


@dataclass
class Check:
    stage: str  # export | optimize | fp16 | int8-fusion (fp32, what int8 quantizes) | int8 | int8-static
    max_abs_diff: float
    rel_diff: float  # max abs diff / max |reference|
    tolerance: float
    relative: bool  # tolerance applies to rel_diff (fp16, int8) or to max_abs_diff (fp32)
    providers: list
    shapes: list

    @property
    def ok(self) -> bool:
        return (self.rel_diff if self.relative else self.max_abs_diff) <= self.tolerance


def validate(path: Path, loaded: LoadedModel, stage: str, tolerance: float, relative: bool = False,
             providers: list | None = None, seed: int = 0) -> Check:
    """Run the ONNX file and the PyTorch model on random padded inputs of shapes other than the
    traced one (padded on the right, and once on the left); the largest difference over them.

    int8 stages skip the left-padded batch: there a classifier pools a padding position, whose
    state on random tokens int8 moves by up to 60-100% of the output (the word-order MiniLM teacher:
    0.62-0.74 with attention fused or not, 1.08 with the old mask-as-lengths fusion), which says
    nothing about a broken quantization (the fused graph int8 starts from is checked exactly in
    fp32 first, left padding included: stage ``int8-fusion``). They get a third right-padded batch
    instead (4 x 24, three rows padded): with only the first batch's two padded rows, int8 attention
    that ignores the mask moved the packaged all-MiniLM-L6-v2's output by 0.27-0.50 of max |output|
    (seeds 0-2), near the tolerance; with it 0.50-0.65 (seeds 0-3), the honest int8 0.14-0.16."""
    sess = session(path, providers)
    # the graph's own inputs: a classifier with no heads in any layer never reads the mask, and its
    # graph has no attention_mask input (the backends' runners feed the same way)
    inputs = {i.name for i in sess.get_inputs()}
    worst_abs, worst_rel, shapes = 0.0, 0.0, []
    cases = ((3, 17, False), (1, 5, False)) + (((4, 24, False),) if stage in QUANTIZE else ((3, 11, True),))
    for i, (b, t, left) in enumerate(cases):
        batch = random_inputs(loaded.config, b, t, seed + 1 + i)
        if left:  # padding on the left (some tokenizers' choice): a fused attention must read the mask itself
            batch = {k: v.flip(1) for k, v in batch.items()}
        ref = reference_output(loaded, batch).float().numpy()
        got = sess.run(None, {k: v.numpy() for k, v in batch.items() if k in inputs})[0].astype(np.float32)
        if got.shape != ref.shape:
            raise PrunekitError(f"{stage}: ONNX output shape {got.shape} != PyTorch {ref.shape} for inputs {b}x{t}")
        diff = float(np.abs(got - ref).max()) if ref.size else 0.0
        if not math.isfinite(diff):
            diff = float("inf")
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(float(np.abs(ref).max()), 1e-12))
        shapes.append([b, batch["input_ids"].shape[1]])
    return Check(stage, worst_abs, worst_rel, tolerance, relative, list(sess.get_providers()), shapes)


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------
def ort_providers(device: str) -> list | None:
    """onnxruntime's providers for ``device``: on cuda:N the CUDA provider on GPU N (onnxruntime's
    own default is GPU 0), the CPU after it; None on the CPU."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]


@dataclass
class ExportSettings:
    """``prunekit export-onnx`` options (saved beside the model as ``<output>.json``)."""

    opset: int = 17
    fp16: bool = False  # for GPU: weights and compute in fp16, inputs/outputs stay as they are
    optimize: bool = False  # onnxruntime.transformers optimizer, per-layer head counts detected
    quantize: str | None = None  # "int8": dynamic int8 MatMuls (CPU); "int8-static": calibrated on `calibration`
    calibration: str | None = None  # int8-static: data (file or GLUE task) to calibrate on; None: the shipped corpus
    calibration_examples: int = 128  # sentences run for calibration
    atol: float = 1e-4  # fp32 graphs: max abs difference to PyTorch
    fp16_rtol: float = 2e-2  # fp16: max abs difference / max |output|
    # int8 (dynamic and static): max abs difference / max |output| on the random check inputs: a guard
    # against a broken quantization (errors of order 1), not an accuracy bound (eval --backend gives
    # the metric). Why 0.25: docs/method.md, "Measurements behind choices in the code".
    int8_rtol: float = 0.25
    force: bool = False
    seed: int = 0
    device: str | None = None  # the GPU the fp16 check runs on (cuda:N); None: the CUDA provider's default when there is a GPU


@dataclass
class ExportReport:
    output: str
    kind: str
    source: str
    is_compact: bool
    heads_per_layer: list
    ffn_per_layer: list
    output_name: str
    checks: list = field(default_factory=list)
    fused: dict = field(default_factory=dict)  # optimize: op counts, attention per layer
    notes: list = field(default_factory=list)
    size_bytes: int = 0
    settings: dict = field(default_factory=dict)
    source_abs: str = ""  # what eval reads from: the model dir, its tokenizer, its reference
    tokenizer: str | None = None
    reference: str | None = None  # the teacher a compact model was cut from; an original itself
    shape: dict = field(default_factory=dict)  # prunekit.flops.ModelShape of the original
    hidden_size: int | None = None  # the model's own hidden width (narrower than shape's where it was cut)
    params: int = 0
    id2label: dict | None = None  # the classes' names, for lining up labels by name in eval
    command: str | None = None  # the prunekit command that made it (for the model card)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["checks"] = [dict(asdict(c), ok=c.ok) for c in self.checks]
        return d


def _check_settings(s: ExportSettings) -> None:
    if s.quantize is not None and s.quantize not in QUANTIZE:
        raise PrunekitError(f"--quantize {s.quantize!r}: only {', '.join(QUANTIZE)} is supported")
    if s.fp16 and s.quantize:
        raise PrunekitError("--fp16 and --quantize int8 exclude each other: fp16 is for GPUs, int8 for CPUs")
    if not 9 <= s.opset <= 21:
        raise PrunekitError(f"--opset {s.opset}: use an opset between 9 and 21 (17 is tested)")
    for name in ("atol", "fp16_rtol", "int8_rtol"):
        if not getattr(s, name) > 0:
            raise PrunekitError(f"{name} must be > 0, got {getattr(s, name)}")
    if s.calibration is not None and s.quantize != "int8-static":
        raise PrunekitError("--calibration is the data static int8 calibrates on: use it with --quantize int8")
    if s.calibration_examples < 1:
        raise PrunekitError(f"calibration_examples must be >= 1, got {s.calibration_examples}")


def trace_to_onnx(model: CompactBertPreTrainedModel, path: Path, opset: int, output_name: str) -> None:
    """torch.onnx (TorchScript exporter: the graph onnxruntime's fusions recognise) of OnnxGraph(model)."""
    was_training = model.training
    graph = OnnxGraph(model).eval()  # export a wrapper in eval mode: torch.onnx.export restores the given module's mode
    example = random_inputs(model.config, 2, 8, seed=0)
    axes = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}
    axes[output_name] = {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, tuple(example[n] for n in INPUT_NAMES), str(path), input_names=list(INPUT_NAMES),
                              output_names=[output_name], dynamic_axes=axes, opset_version=opset, dynamo=False,
                              do_constant_folding=True)
    finally:
        model.train(was_training)


def optimize_graph(src: Path, dst: Path, heads_per_layer: list, attention: bool = True, fp16: bool = False,
                   fusion: dict | None = None) -> dict:
    """onnxruntime.transformers optimizer with per-layer head detection; returns fusion statistics.

    The fused Attention nodes' ``num_heads`` are compared, in graph order, with the layers' head
    counts; a mismatch means a fusion assumed a wrong head count, and the caller re-runs with
    ``attention=False``. ``fusion``: other ``FusionOptions`` attributes to set (see
    :data:`CPU_FUSION`)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions("bert")
    opts.enable_attention = attention
    for name, value in (fusion or {}).items():
        if not hasattr(opts, name):
            raise ValueError(f"onnxruntime's FusionOptions has no {name!r}")
        setattr(opts, name, value)
    # onnxruntime's fusion modules log through loggers of their own module names; "input hidden size
    # is not the same as the q,k,v weights" is expected for a layer with fewer heads than hidden/d.
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            om = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, optimization_options=opts, opt_level=0)
            if fp16:
                om.convert_float_to_float16(keep_io_types=True)
    finally:
        logging.disable(logging.NOTSET)
    fused_heads = [next((a.i for a in n.attribute if a.name == "num_heads"), None)
                   for n in om.model.graph.node if n.op_type in ("Attention", "MultiHeadAttention")]
    expected = [h for h in heads_per_layer if h > 0]
    stats = {k: v for k, v in om.get_fused_operator_statistics().items() if v}
    om.save_model_to_file(str(dst))
    return {"ops": stats, "attention_heads": fused_heads, "layers_with_heads": len(expected),
            "heads_match": _heads_match(fused_heads, expected)}


def _heads_match(fused: list, expected: list) -> bool:
    """Fused head counts must be those of the layers, in order (a subset if some layers did not fuse)."""
    it = iter(expected)
    return all(any(f == e for e in it) for f in fused)


# Attention fused per layer is masked by the 2D attention_mask itself (attention_mask_format 2 =
# AttentionMaskFormat.AttentionMask): onnxruntime's default reads sequence lengths from it, which is
# wrong for left padding (5% off in fp32 on a tiny model; caught by validate()'s left-padded batch).
GPU_FUSION = {"attention_mask_format": 2}
# On the CPU (fp32 --optimize and dynamic int8) also no SkipLayerNormalization: onnxruntime's CPU
# kernel for it is 2-3x slower than the Add and LayerNormalization it replaces (see quantize_int8).
CPU_FUSION = {"enable_skip_layer_norm": False, "enable_bias_skip_layer_norm": False, **GPU_FUSION}
INT8_NOTE = ("dynamic int8 quantizes the exported graph after its own fusions (Attention with the 2D mask, LayerNorm, "
             "BiasGelu; no SkipLayerNormalization, slower on the CPU than the Add and LayerNorm it replaces)")


def quantize_int8(src: Path, dst: Path, heads_per_layer: list = (), check_fused: Callable[[Path], None] | None = None,
                  reduce_range: bool = False) -> dict:
    """Dynamic int8 of ``src``, the graph as exported (unfused): weights int8 per output channel, activations
    quantized per batch (``DynamicQuantizeLinear``, u8; onnxruntime's U8S8 kernels, VNNI/AMX) in
    ``QAttention`` and ``DynamicQuantizeMatMul``; the attention score/context products, Softmax,
    LayerNorm and GELU fp32. Returns the fusion statistics of :func:`optimize_graph`
    (``heads_per_layer``: the layers' head counts; a fusion that gets one wrong is redone with
    attention unfused, and ``notes`` says so). ``reduce_range``: 7-bit weights, for CPUs without an
    int8 dot product (see :func:`int8_reduce_range`).

    The graph is fused first with :data:`CPU_FUSION` (no SkipLayerNormalization), and the
    quantized graph is saved without its stored intermediate shapes (``value_info``): with them,
    onnxruntime's session fuses every residual Add + LayerNormalization after a quantized MatMul
    into SkipLayerNormalization again; without, it infers symbolic shapes and leaves them apart.
    This order made int8 1.5-1.7x faster than quantizing the fully fused graph (SkipLayerNormalization
    is a slow scalar loop in onnxruntime's CPU kernel). Weights are per channel (one scale per output
    column): per tensor, a few outlier weights set the scale and the packaged MiniLM's embeddings fell
    to cosine 0.964 to PyTorch's (0.993 per channel), at no gain in speed. The measurements:
    docs/method.md, "Measurements behind choices in the code"."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused = dst.with_name(dst.stem + ".fused.onnx")
    try:
        stats = optimize_graph(src, fused, list(heads_per_layer), fusion=CPU_FUSION)
        if not stats["heads_match"]:
            notes = [f"the optimizer fused attention with head counts {stats['attention_heads']} that do not match the "
                     f"layers' {[h for h in heads_per_layer if h]}: int8 attention left unfused"]
            stats = dict(optimize_graph(src, fused, list(heads_per_layer), attention=False, fusion=CPU_FUSION), notes=notes)
        if check_fused is not None:  # the fused fp32 graph, exactly (left padding included), before int8 blurs it
            check_fused(fused)
        logging.disable(logging.WARNING)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # DefaultTensorType: shape inference gives no types past fused com.microsoft ops (Attention, ...)
                quantize_dynamic(str(fused), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        finally:
            logging.disable(logging.NOTSET)
        drop_value_info(dst)
    finally:
        fused.unlink(missing_ok=True)
    return stats


REDUCE_RANGE_NOTE = (
    "int8 weights in 7 bits (reduce_range): this CPU has no int8 dot product (VNNI/AMX), and onnxruntime's 8-bit "
    "kernels for it saturate; the file runs on any x86 CPU (one made on a VNNI CPU is less exact on CPUs without)")


def int8_reduce_range(isa: dict | None = None) -> bool:
    """Whether int8 weights are quantized to 7 bits here: on an x86 CPU without an int8 dot product
    (AVX512-VNNI, AVX-VNNI, AMX-INT8), onnxruntime multiplies u8 activations by s8 weights with
    VPMADDUBSW, whose int16 sums of two products saturate; onnxruntime's documentation advises
    ``reduce_range`` there (measured: docs/method.md)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    return not int8_dot_product(isa)


def drop_value_info(path: Path) -> None:
    """Save ``path`` without its stored intermediate shapes: with them, onnxruntime's session fuses
    each residual Add + LayerNormalization into SkipLayerNormalization (slow on the CPU) again."""
    import onnx

    model = onnx.load(str(path))
    del model.graph.value_info[:]
    onnx.save(model, str(path))


def calibration_batches(loaded: LoadedModel, data: str | None, examples: int, batch: int = 16,
                        max_length: int = 128) -> list[dict]:
    """Real sentences (``data``: a file or GLUE task; None: the shipped corpus), tokenized with the
    model's tokenizer and padded per batch: what static int8 measures activation ranges on."""
    from .data import load_data

    if loaded.tokenizer is None:
        raise PrunekitError(f"static int8 calibration tokenizes sentences, and {loaded.path} has no tokenizer files")
    ds = load_data(data, max_examples=examples)
    enc = loaded.tokenizer(ds.texts, ds.pairs, truncation=True, max_length=max_length) if ds.pairs else \
        loaded.tokenizer(ds.texts, truncation=True, max_length=max_length)
    pad = loaded.config.pad_token_id or 0
    out = []
    for i in range(0, len(enc["input_ids"]), batch):
        rows = enc["input_ids"][i:i + batch]
        types = (enc.get("token_type_ids") or [[0] * len(r) for r in enc["input_ids"]])[i:i + batch]
        t = max(len(r) for r in rows)
        ids = np.full((len(rows), t), pad, dtype=np.int64)
        mask = np.zeros((len(rows), t), dtype=np.int64)
        tt = np.zeros((len(rows), t), dtype=np.int64)
        for j, (r, ty) in enumerate(zip(rows, types)):
            ids[j, :len(r)], mask[j, :len(r)], tt[j, :len(r)] = r, 1, ty
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": tt})
    return out


def quantize_int8_static(src: Path, dst: Path, batches: list[dict], reduce_range: bool = False) -> None:
    """Static int8 of the weight MatMuls (``QLinearMatMul``), activation ranges from ``batches`` (MinMax).

    Only MatMuls with a constant weight are quantized (``MatMulConstBOnly``): the attention score
    and context products, LayerNorm, Softmax and GELU stay fp32; weights int8 per channel,
    activations uint8 (what VNNI multiplies). The FFN down projections stay fp32 too: their input,
    the GELU output, is long-tailed, and one uint8 range for it costs accuracy. ``src`` must be the
    unfused graph: onnxruntime's quantizer cannot see into fused ``Attention`` nodes. The operator
    form, not QDQ (which quantizes only the weights, then run slower than fp32). The measurements:
    docs/method.md, "Measurements behind choices in the code"."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    ort.set_default_logger_severity(3)  # the calibrator's session warns about initializers it drops

    graph = onnx.load(str(src)).graph
    producer = {o: n for n in graph.node for o in n.output}

    def after_gelu(name: str) -> bool:  # GELU as exported: x * 0.5 * (1 + erf(x / sqrt 2)); Erf a few nodes up
        todo, seen = [producer.get(name)], 0
        while todo and seen < 8:  # breadth first: the Erf branch, not the long way up through the up projection
            n = todo.pop(0)
            if n is None:
                continue
            if n.op_type in ("Erf", "Gelu", "Tanh"):
                return True
            seen += 1
            todo += [producer.get(i) for i in n.input]
        return False

    down = [n.name for n in graph.node if n.op_type == "MatMul" and after_gelu(n.input[0])]

    inputs = {i.name for i in graph.input}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {k: v for k, v in batch.items() if k in inputs}

    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QOperator, op_types_to_quantize=["MatMul"],
                            per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=down,
                            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logging.disable(logging.NOTSET)
        for f in src.parent.glob("*augmented*.onnx"):  # the calibrator's own copy of the model
            f.unlink(missing_ok=True)


def _abs_if_dir(path: str | None) -> str | None:
    """A local dir as an absolute path (the report is read from elsewhere); a hub id as it is."""
    return str(Path(path).resolve()) if path and Path(path).is_dir() else path


def _tokenizer_dir(loaded: LoadedModel) -> str | None:
    if has_tokenizer_files(Path(loaded.path)):
        return str(Path(loaded.path).resolve())
    return _abs_if_dir(loaded.config.base_model_name_or_path) if loaded.is_compact else None


def export_onnx(model_dir: str | os.PathLike, output: str | os.PathLike, settings: ExportSettings | None = None,
                loaded: LoadedModel | None = None, write_report: bool = True) -> ExportReport:
    """Export, (optimize), (fp16 | int8), validate every stage, and move the result to ``output``."""
    s = settings or ExportSettings()
    _check_settings(s)
    out = Path(output)
    check_output_file(out, s.force)  # before the slow part; again under the lock when writing
    loaded = loaded or load_model_dir(model_dir)
    cfg = loaded.config
    output_name = "embeddings" if loaded.kind == "embedding" else "logits"
    report = ExportReport(output=str(out), kind=loaded.kind, source=str(model_dir), is_compact=loaded.is_compact,
                          heads_per_layer=list(cfg.num_heads_per_layer), ffn_per_layer=list(cfg.intermediate_sizes),
                          output_name=output_name, settings=asdict(s), source_abs=str(Path(loaded.path).resolve()),
                          tokenizer=_tokenizer_dir(loaded),
                          reference=_abs_if_dir(cfg.base_model_name_or_path) if loaded.is_compact else str(Path(loaded.path).resolve()),
                          shape=ModelShape.from_config(cfg, 0 if loaded.kind == "embedding" else None).to_dict(),
                          hidden_size=cfg.hidden_size,
                          params=sum(p.numel() for p in loaded.compact_view.parameters()),
                          id2label=None if loaded.kind != "classification" else {str(k): str(v) for k, v in cfg.id2label.items()},
                          command=command_line())
    reduce_range = s.quantize in QUANTIZE and int8_reduce_range()
    if reduce_range:
        report.notes.append(REDUCE_RANGE_NOTE)
    with output_slot(out, s.force, "file") as work:
        current = work / "model.onnx"
        trace_to_onnx(loaded.compact_view, current, s.opset, output_name)
        _require(report, validate(current, loaded, "export", s.atol, seed=s.seed))
        if s.optimize and s.quantize == "int8-static":
            report.notes.append("static int8 quantizes the unfused graph (onnxruntime's quantizer cannot see into fused "
                                "Attention nodes): --optimize left off")
        elif s.quantize == "int8":
            report.notes.append(INT8_NOTE + (" (--optimize: the same fusions, done by the int8 step)" if s.optimize else ""))
        elif s.optimize:
            opt = work / "optimized.onnx"
            fusion = GPU_FUSION if s.fp16 else CPU_FUSION
            fused = optimize_graph(current, opt, report.heads_per_layer, fusion=fusion)
            if not fused["heads_match"]:
                msg = (f"the optimizer fused attention with head counts {fused['attention_heads']} that do not match "
                       f"the layers' {[h for h in report.heads_per_layer if h]}: attention fusion left off")
                report.notes.append(msg)
                log.warning(msg)
                fused = optimize_graph(current, opt, report.heads_per_layer, attention=False, fusion=fusion)
            if not s.fp16:
                drop_value_info(opt)
            report.fused = fused
            _require(report, validate(opt, loaded, "optimize", s.atol, seed=s.seed))
            current = opt
        if s.fp16:
            half = work / "fp16.onnx"
            _to_fp16(current, half)
            providers = ort_providers(s.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            _require(report, validate(half, loaded, "fp16", s.fp16_rtol, relative=True, providers=providers, seed=s.seed))
            current = half
        if s.quantize == "int8":
            q = work / "int8.onnx"
            report.fused = quantize_int8(current, q, report.heads_per_layer, check_fused=lambda f: _require(
                report, validate(f, loaded, "int8-fusion", s.atol, seed=s.seed)), reduce_range=reduce_range)
            report.notes += report.fused.pop("notes", [])
            _require(report, validate(q, loaded, "int8", s.int8_rtol, relative=True, seed=s.seed))
            current = q
        elif s.quantize == "int8-static":
            q = work / "int8-static.onnx"
            quantize_int8_static(current, q, calibration_batches(loaded, s.calibration, s.calibration_examples),
                                 reduce_range=reduce_range)
            _require(report, validate(q, loaded, "int8-static", s.int8_rtol, relative=True, seed=s.seed))
            current = q
        report.size_bytes = current.stat().st_size
        if write_report:
            atomic_write_text(out.with_name(out.name + ".json"), json.dumps(report.to_dict(), indent=2) + "\n")
        os.replace(current, out)
    if write_report and model_dir_of(out) is not None:  # exported into a model dir: its card lists the file
        write_card(model_dir_of(out))
    return report


def _to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    om = OnnxModel(onnx.load(str(src)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        om.convert_float_to_float16(keep_io_types=True)
    om.save_model_to_file(str(dst))


def _require(report: ExportReport, check: Check) -> None:
    report.checks.append(check)
    log.info("%s: max abs diff %.2e (rel %.2e) on %s", check.stage, check.max_abs_diff, check.rel_diff, check.providers)
    if not check.ok:
        what = f"relative difference {check.rel_diff:.2e}" if check.relative else f"max abs difference {check.max_abs_diff:.2e}"
        hint = ""
        if check.stage in QUANTIZE and math.isfinite(check.rel_diff):  # lossy: more loss may be accepted, metric checked
            hint = (f"; `export-onnx --int8-rtol {_round_up(check.rel_diff)}` accepts it "
                    f"(then check the task metric: `prunekit eval --backend ort-{check.stage}`)")
        raise PrunekitError(
            f"ONNX {check.stage} graph differs from PyTorch: {what} > tolerance {check.tolerance:g} "
            f"(inputs {check.shapes}, {check.providers[0]}); nothing was written{hint}"
        )


def _round_up(x: float) -> str:
    """``x`` (finite, > 0) rounded up to 2 significant digits (a tolerance that accepts it): 0.3317 -> 0.34."""
    e = math.floor(math.log10(x)) - 1
    digits = math.ceil(x / 10 ** e)
    while float(f"{digits * 10 ** e:g}") < x:  # float rounding
        digits += 1
    return f"{digits * 10 ** e:g}"
