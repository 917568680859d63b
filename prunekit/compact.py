"""Compaction: cut an architecture's kept heads and FFN neurons out of the teacher into a dense model.

``compact(teacher, arch)`` slices, per layer, the kept heads' rows of Q/K/V (packed into one QKV
projection, ``[Q heads | K heads | V heads]``) and their columns of the attention output
projection, and the kept neurons' rows of the FFN up-projection and columns of its
down-projection; embeddings, LayerNorms, biases of the projections back to the hidden size, the
pooler and the classifier are copied. The result (:mod:`prunekit.modeling`) computes what the
teacher computes with the other heads and neurons masked to zero.

``compact_to_dir`` does it from a search run dir (or a teacher plus an architecture.json), checks
that parity on random inputs, counts parameters and FLOPs of the original and the compact model
(the analytic model of :mod:`prunekit.flops`, and fvcore's measured count on eager attention,
attention matmuls included, doubled to match our FLOP definition) and writes the model dir
atomically: config.json, model.safetensors, tokenizer files, architecture.json, compact_report.json.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .architecture import Architecture, config_hash
from .card import command_line, write_card
from .errors import PrunekitError
from .flops import model_flops
from .io import atomic_output_dir, atomic_write_text, check_output_dir, read_json
from .modeling import (
    CompactBertConfig,
    CompactBertForSequenceClassification,
    CompactBertModel,
    CompactBertPreTrainedModel,
    save_compact,
)
from .models import Teacher, classifier_head, load_teacher, model_output, quiet
from .portable import write_sentence_transformers_files

log = logging.getLogger(__name__)

DEFAULT_SEQ_LEN = 128
ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
WEIGHTS = ("teacher", "search")
# fvcore ops that are matrix products: the analytic model counts exactly these.
MATMUL_OPS = ("linear", "matmul", "addmm", "bmm", "mm", "einsum")


# ------------------------------------------------------------------------------------------------
# Slicing
# ------------------------------------------------------------------------------------------------
def compact_config(teacher: Teacher, arch: Architecture, narrow_output: bool = False) -> CompactBertConfig:
    """The compact model's config: the teacher's, with ``arch``'s heads, FFN widths and hidden width.
    An embedding model whose hidden width is cut maps its output back to the teacher's width unless
    ``narrow_output``."""
    tc, shape = teacher.config, teacher.shape
    pos_type = getattr(tc, "position_embedding_type", "absolute") or "absolute"
    if pos_type != "absolute":
        raise PrunekitError(f"{teacher.name_or_path} uses {pos_type!r} position embeddings; prunekit compacts absolute ones only")
    extra = {}
    if teacher.kind != "embedding":
        extra = dict(num_labels=tc.num_labels, id2label=dict(tc.id2label), label2id=dict(tc.label2id), problem_type=tc.problem_type)
    elif arch.hidden is not None and not narrow_output:
        extra = dict(output_size=shape.hidden_size)
    if arch.hidden is not None:  # the original's shape (FLOPs ratios, export reports) stays readable from the config
        extra["base_hidden_size"] = shape.hidden_size
    return CompactBertConfig(
        vocab_size=tc.vocab_size,
        hidden_size=arch.hidden_size or shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        head_dim=shape.head_dim,
        kept_heads=[list(h) for h in arch.heads],
        intermediate_size=shape.intermediate_size,
        intermediate_sizes=arch.ffn_widths,
        hidden_act=tc.hidden_act,
        hidden_dropout_prob=tc.hidden_dropout_prob,
        attention_probs_dropout_prob=tc.attention_probs_dropout_prob,
        classifier_dropout=getattr(tc, "classifier_dropout", None),
        max_position_embeddings=tc.max_position_embeddings,
        type_vocab_size=tc.type_vocab_size,
        initializer_range=tc.initializer_range,
        layer_norm_eps=tc.layer_norm_eps,
        pad_token_id=tc.pad_token_id if tc.pad_token_id is not None else 0,
        position_style="roberta" if tc.model_type in ROBERTA_TYPES else "absolute",
        base_model_type=tc.model_type,
        base_model_name_or_path=teacher.name_or_path,
        task_kind=teacher.kind,
        **extra,
    )


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    if not heads:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(j * head_dim, (j + 1) * head_dim) for j in heads])


@torch.no_grad()
def compact(teacher: Teacher, arch: Architecture, narrow_output: bool = False) -> CompactBertPreTrainedModel:
    """A dense model with only ``arch``'s heads, neurons and hidden dimensions of ``teacher`` (eager
    backend, eval mode). See :func:`compact_config` for ``narrow_output``."""
    arch.validate(teacher.shape)
    config = compact_config(teacher, arch, narrow_output)
    cls = CompactBertModel if teacher.kind == "embedding" else CompactBertForSequenceClassification
    dtype = next(teacher.model.parameters()).dtype
    model = cls(config).to(dtype)
    student = model if teacher.kind == "embedding" else model.bert
    base = teacher.model.base_model
    d = config.head_dim
    device = next(teacher.model.parameters()).device
    kept = None if arch.hidden is None else torch.tensor(arch.hidden, dtype=torch.long, device=device)

    def into(w: torch.Tensor) -> torch.Tensor:  # a weight that reads the hidden state: its kept columns
        return w if kept is None else w[:, kept]

    def out_of(w: torch.Tensor) -> torch.Tensor:  # a weight, bias or norm that writes it: its kept rows
        return w if kept is None else w[kept]

    def norm(dst: nn.LayerNorm, src: nn.LayerNorm) -> None:
        dst.weight.copy_(out_of(src.weight))
        dst.bias.copy_(out_of(src.bias))

    emb, temb = student.embeddings, base.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        getattr(emb, name).weight.copy_(into(getattr(temb, name).weight))
    norm(emb.LayerNorm, temb.LayerNorm)

    for layer, tl, heads, neurons in zip(student.layers, base.encoder.layer, arch.heads, arch.neurons):
        att, out, inter, ffn_out = tl.attention.self, tl.attention.output, tl.intermediate, tl.output
        if heads:
            rows = _head_rows(heads, d).to(device)
            layer.qkv.weight.copy_(into(torch.cat([p.weight[rows] for p in (att.query, att.key, att.value)])))
            layer.qkv.bias.copy_(torch.cat([p.bias[rows] for p in (att.query, att.key, att.value)]))
            layer.attn_out.weight.copy_(out_of(out.dense.weight[:, rows]))
        layer.attn_out_bias.copy_(out_of(out.dense.bias))
        norm(layer.attn_norm, out.LayerNorm)
        if neurons:
            idx = torch.tensor(neurons, dtype=torch.long, device=device)
            layer.up.weight.copy_(into(inter.dense.weight[idx]))
            layer.up.bias.copy_(inter.dense.bias[idx])
            layer.down.weight.copy_(out_of(ffn_out.dense.weight[:, idx]))
        layer.down_bias.copy_(out_of(ffn_out.dense.bias))
        norm(layer.ffn_norm, ffn_out.LayerNorm)

    if teacher.kind != "embedding":
        pooler, classifier = classifier_head(teacher.model)
        model.pooler.weight.copy_(out_of(into(pooler.weight)))
        model.pooler.bias.copy_(out_of(pooler.bias))
        model.classifier.weight.copy_(into(classifier.weight))
        model.classifier.bias.copy_(classifier.bias)
    elif model.output_proj is not None:  # the kept dimensions back in their places, the others 0: the gated teacher's output
        model.output_proj.weight.zero_()
        model.output_proj.weight[kept.cpu(), torch.arange(len(kept))] = 1.0
        model.output_proj.bias.zero_()
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------
# Counting
# ------------------------------------------------------------------------------------------------
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _Judged(nn.Module):
    """The output a model is judged by, as one tensor (what fvcore's tracer needs)."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, input_ids, attention_mask):
        return model_output(self.model, self.kind, {"input_ids": input_ids, "attention_mask": attention_mask})


def fvcore_flops(model: nn.Module, kind: str, seq_len: int, vocab_size: int) -> dict:
    """fvcore's count for one sequence of ``seq_len`` tokens, doubled (fvcore counts a
    multiply-accumulate as 1): ``matmul`` over matrix products only (comparable with the analytic
    model), ``all_ops`` with fvcore's default handlers (LayerNorm included), ``by_operator``."""
    from fvcore.nn import FlopCountAnalysis

    backend = getattr(getattr(model, "config", None), "backend", None)
    if isinstance(model, CompactBertPreTrainedModel):
        model.config.backend = "eager"  # fvcore has no handler for SDPA and cannot trace Triton
    ids = torch.randint(0, vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    inputs = (ids.to(device), torch.ones(1, seq_len, dtype=torch.long, device=device))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(_Judged(model, kind).eval(), inputs)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            by_op = {k: 2 * int(v) for k, v in analysis.by_operator().items()}
    finally:
        if backend is not None:
            model.config.backend = backend
    return {
        "matmul": sum(v for k, v in by_op.items() if k in MATMUL_OPS),
        "all_ops": sum(by_op.values()),
        "by_operator": by_op,
    }


@torch.no_grad()
def parity_error(teacher: Teacher, arch: Architecture, model: nn.Module, seed: int = 0) -> float:
    """Largest |compact - gated teacher| over a random padded batch, relative to the output's scale."""
    from .gates import Gates

    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    length = min(16, teacher.config.max_position_embeddings - 2)
    ids = torch.randint(0, teacher.config.vocab_size, (3, length), generator=g)
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, length // 2 :] = 0
    mask[2, 3:] = 0
    batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if teacher.config.model_type in ROBERTA_TYPES:  # RoBERTa positions come from the pad token
        batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, teacher.config.pad_token_id)
    masks = [m if m is None else m.to(device) for m in arch.to_masks(teacher.shape)]
    gates = Gates(teacher.model, teacher.shape)
    try:
        with gates.active(*masks):
            ref = model_output(teacher.model, teacher.kind, batch).float()
    finally:
        gates.remove()
    out = model_output(model, teacher.kind, batch).float()
    if out.shape[-1] != ref.shape[-1] and arch.hidden is not None:  # a narrow-output embedding model: the kept dimensions
        ref = ref[:, torch.tensor(arch.hidden, device=ref.device)]
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-6))


# ------------------------------------------------------------------------------------------------
# From a run dir to a model dir
# ------------------------------------------------------------------------------------------------
@dataclass
class CompactReport:
    output_dir: str
    teacher: str
    kind: str
    seq_len: int
    weights: str
    heads_per_layer: list[int]
    ffn_per_layer: list[int]
    hidden_size: int  # the compact model's hidden (residual) width: the teacher's unless --prune-hidden cut it
    original: dict = field(default_factory=dict)  # params, flops_analytic, flops_fvcore, flops_fvcore_all_ops
    compact: dict = field(default_factory=dict)
    parity_rel_err: float = 0.0
    notes: list[str] = field(default_factory=list)
    command: str | None = None  # the prunekit command that made it (for the model card)

    def to_dict(self) -> dict:
        return asdict(self)


def _resolve_inputs(source, architecture) -> tuple[Path, Path | None]:
    """(architecture.json path, run dir or None) from what the user gave."""
    run_dir = None
    if source is not None:
        src = Path(source)
        if not src.exists():
            raise PrunekitError(f"run directory not found: {src} (give the directory `prunekit search` wrote)")
        if src.is_dir() and (src / "config.json").is_file():
            from .configs import model_type_of
            from .modeling import MODEL_TYPE

            if model_type_of(src / "config.json") == MODEL_TYPE:  # a compact (or distilled) model has architecture.json too
                raise PrunekitError(
                    f"{src} is a compact model already, not a search run dir: compact takes the directory `prunekit "
                    f"search` wrote (to use this model, distill, eval or export it)"
                )
        if src.is_dir() and (src / "architecture.json").is_file():
            run_dir = src
        elif architecture is None:
            raise PrunekitError(f"{src} is not a search run dir (no architecture.json); pass --architecture to give one")
    if architecture is not None:
        arch_path = Path(architecture)
        if arch_path.is_dir():
            arch_path = arch_path / "architecture.json"
        if not arch_path.is_file():
            raise PrunekitError(f"architecture file not found: {arch_path}")
        return arch_path, run_dir
    if run_dir is None:
        raise PrunekitError("give a search run dir, or --architecture with --model")
    return run_dir / "architecture.json", run_dir


def _saved_seq_len(arch_path: Path) -> int:
    """The sequence length the search counted FLOPs at (its --max-length), as architecture.json says."""
    flops = read_json(arch_path).get("flops", {})  # Architecture.load has checked it is a JSON object
    value = flops.get("seq_len") if isinstance(flops, dict) else None
    if value is None:
        return DEFAULT_SEQ_LEN
    if type(value) is not int or not 1 <= value <= 1 << 20:
        raise PrunekitError(f"{arch_path}: flops.seq_len must be a whole number of tokens in 1..{1 << 20}, got {value!r}; the file is corrupt")
    return value


def _check_base_model(arch: Architecture, teacher: Teacher, arch_path: Path) -> None:
    saved = (arch.meta.get("base_model") or {}).get("config_hash")
    mine = config_hash(teacher.shape, getattr(teacher.config, "vocab_size", None))
    if saved and saved != mine:
        name = (arch.meta.get("base_model") or {}).get("name_or_path", "another model")
        raise PrunekitError(
            f"{arch_path} was searched for {name} (config hash {saved}), not for {teacher.name_or_path} "
            f"({mine}): use the model it was searched for, or search this one"
        )


def _load_searched_weights(run_dir: Path | None, teacher: Teacher) -> Teacher:
    """The teacher with the weights the search trained jointly with the gates (its last intact checkpoint)."""
    from .checkpoint import load_latest_checkpoint

    if run_dir is None:
        raise PrunekitError("--weights search needs the search run dir (its checkpoints hold the trained weights)")
    found = load_latest_checkpoint(run_dir / "checkpoints", none_left="no other checkpoint")
    state = {k[len("student."):]: v for k, v in found[1].items() if k.startswith("student.")} if found else {}
    if not state:
        raise PrunekitError(
            f"{run_dir} has no trained weights (searched with --freeze-weights, or a baseline, or its checkpoints are corrupt or from a prunekit older than checkpoint format 2): "
            "use --weights teacher"
        )
    model = copy.deepcopy(teacher.model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PrunekitError(f"{run_dir}/checkpoints hold weights of another model: {str(e).splitlines()[0][:160]}") from None
    return Teacher(model=model.eval(), tokenizer=teacher.tokenizer, kind=teacher.kind, name_or_path=teacher.name_or_path, shape=teacher.shape)


def compact_to_dir(
    source: str | os.PathLike | None,
    architecture: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    force: bool = False,
    model: str | None = None,
    kind: str | None = None,
    weights: str = "teacher",
    seq_len: int | None = None,
    measure_fvcore: bool = True,
    narrow_output: bool = False,
) -> CompactReport:
    """Compact a search result into a model dir; returns the parameter and FLOPs report.

    ``source`` is a search run dir (its architecture.json names the teacher); ``architecture``
    gives the json explicitly; ``model`` overrides the teacher; ``weights`` is ``teacher`` (the
    teacher's own) or ``search`` (the weights the search trained jointly, from its last checkpoint).
    ``narrow_output``: an embedding model whose hidden width is cut outputs that width, not the teacher's.
    """
    if weights not in WEIGHTS:
        raise PrunekitError(f"unknown --weights {weights!r}: use {' or '.join(WEIGHTS)}")
    arch_path, run_dir = _resolve_inputs(source, architecture)
    if out_dir is None:
        if run_dir is None:
            raise PrunekitError("give an output directory (-o)")
        out_dir = run_dir.with_name(run_dir.name + "-compact")
    out_dir = Path(out_dir)
    check_output_dir(out_dir, force)  # fail before the slow part

    unchecked = Architecture.load(arch_path)  # format only; the teacher's shape comes next
    base = unchecked.meta.get("base_model") or {}
    name = model or base.get("name_or_path")
    if not name:
        raise PrunekitError(f"{arch_path} names no base model: pass --model")
    teacher = load_teacher(name, kind or base.get("kind") or "auto")
    arch = Architecture.load(arch_path, teacher.shape)
    _check_base_model(arch, teacher, arch_path)
    if weights == "search":
        teacher = _load_searched_weights(run_dir, teacher)
    seq_len = seq_len or _saved_seq_len(arch_path)

    compact_model = compact(teacher, arch, narrow_output)
    err = parity_error(teacher, arch, compact_model)
    if not err <= 1e-4:  # an internal bug, not a user mistake
        raise RuntimeError(f"compact model differs from the gated teacher by {err:.2e} (relative); not written")

    shape = teacher.shape
    report = CompactReport(
        output_dir=str(out_dir), teacher=teacher.name_or_path, kind=teacher.kind, seq_len=seq_len, weights=weights,
        heads_per_layer=arch.head_counts, ffn_per_layer=arch.ffn_widths, parity_rel_err=err, command=command_line(),
        hidden_size=arch.hidden_size or shape.hidden_size,
    )
    for key, m, per_layer in (("original", teacher.model, (None, None, None)),
                              ("compact", compact_model, (arch.head_counts, arch.ffn_widths, arch.hidden_size))):
        entry = {"params": count_params(m), "flops_analytic": model_flops(shape, seq_len, *per_layer).total,
                 "hidden_size": per_layer[2] or shape.hidden_size}
        if measure_fvcore:
            try:
                fv = fvcore_flops(m, teacher.kind, seq_len, teacher.config.vocab_size)
                entry.update(flops_fvcore=fv["matmul"], flops_fvcore_all_ops=fv["all_ops"])
            except Exception as e:  # noqa: BLE001 - a count we cannot measure is reported, not fatal
                entry.update(flops_fvcore=None, flops_fvcore_all_ops=None)
                report.notes.append(f"fvcore could not trace the {key} model: {type(e).__name__}: {str(e)[:160]}")
        getattr(report, key).update(entry)
    report.notes.append(
        "FLOPs per sequence of seq_len tokens, 2 per multiply-accumulate; fvcore measured on eager attention, "
        "matrix products only (flops_fvcore_all_ops adds LayerNorm and the like)"
    )

    with atomic_output_dir(out_dir, force) as work:
        quiet(save_compact, compact_model, work)  # no "Writing model shards" bar for one small file
        teacher.tokenizer.save_pretrained(work)
        if teacher.kind == "embedding":
            write_sentence_transformers_files(work, teacher.name_or_path, compact_model.config.hidden_size, seq_len)
        atomic_write_text(work / "architecture.json", arch_path.read_text(encoding="utf-8"))
        atomic_write_text(work / "compact_report.json", json.dumps(report.to_dict(), indent=1) + "\n")
        write_card(work, name=out_dir.name)
    return report
