"""A model dir's config.json, checked before anything is built from it.

A model is built from its config's sizes before its weights are read, so a config that says 10**12
heads or FFN neurons would allocate without bound, and one that says -1 layers or "large" fails
deep inside transformers. Here every size is checked to be a whole number in a sane range and,
where the weights are safetensors, to match the shapes the weights hold (read from the files'
headers; no tensor is loaded): a config that does not belong to its weights is one clear error.
Every loader of a model dir (teachers, compact models; search, compact, distill, eval, export-onnx,
bench) goes through :func:`check_model_config`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import PrunekitError
from .io import read_json

COMPACT_MODEL_TYPE = "prunekit-compact-bert"  # = modeling.MODEL_TYPE (not imported: modeling imports torch and transformers)
BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "camembert")
TASK_KINDS = ("classification", "regression", "embedding")

# Bounds far above any BERT-family model (BERT-large: 24 layers, 16 heads, hidden 1024, FFN 4096,
# vocabulary 30k; XLM-R: vocabulary 250k), far below what would exhaust a machine.
LIMITS = {
    "hidden_size": (1, 1 << 16),
    "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1 << 12),
    "head_dim": (1, 1 << 16),
    "intermediate_size": (1, 1 << 20),
    "vocab_size": (1, 1 << 23),
    "max_position_embeddings": (1, 1 << 20),
    "type_vocab_size": (1, 1 << 12),
    "num_labels": (1, 1 << 16),
    "output_size": (1, 1 << 16),  # a compact embedding model's output width (its teacher's hidden size)
    "base_hidden_size": (1, 1 << 16),  # a compact model's teacher's hidden size, where its own was cut
}
OPTIONAL = ("head_dim", "output_size", "base_hidden_size")  # sizes a config may set to null
MAX_HEADER_BYTES = 100 << 20  # a safetensors header (JSON); BERT-base's is ~20 KB
# Each size above is bounded alone, but their products are what gets allocated: the parameters the
# config implies are capped too (BERT-large 335M, XLM-R-large 560M; 2e9 fp32 parameters is 8 GB).
MAX_PARAMS = 2_000_000_000


def model_type_of(cfg_file: str | os.PathLike) -> str | None:
    """The ``model_type`` named by a model dir's config.json, once the whole config passed :func:`check_model_config`."""
    return check_model_config(Path(cfg_file).parent).get("model_type")


def check_model_config(model_dir: str | os.PathLike) -> dict:
    """Read ``model_dir/config.json`` and check it (and it against the weights); return it as a dict."""
    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    cfg = read_json(path, "config.json", "restore the model's config.json (or re-save the model)")
    if not isinstance(cfg, dict):
        raise PrunekitError(f"{path} is not a model config: a JSON {type(cfg).__name__}, not an object")
    model_type = cfg.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise PrunekitError(f"{path}: model_type must be a string such as \"bert\", got {model_type!r}")
    if model_type not in BERT_FAMILY + (COMPACT_MODEL_TYPE,):
        return cfg  # not ours to size up: the loaders refuse what is not BERT-family
    _check_sizes(cfg, path)
    if model_type == COMPACT_MODEL_TYPE:
        _check_compact_layers(cfg, path)
    params = estimated_params(cfg)
    if params > MAX_PARAMS:
        raise PrunekitError(f"{path} describes a model of {params:.3g} parameters (over {MAX_PARAMS:.0e}, far above any "
                            "BERT-family model): the config is corrupt")
    _check_against_weights(cfg, model_dir, path, params)
    return cfg


def estimated_params(cfg: dict) -> int:
    """Parameters of the embeddings and encoder layers a (size-checked) config implies: a lower
    bound on what building it allocates (no pooler or task head)."""
    hidden = cfg.get("hidden_size", 768)
    layers, heads = cfg.get("num_hidden_layers", 12), cfg.get("num_attention_heads", 12)
    head_dim = cfg.get("head_dim") or max(1, hidden // heads)
    if cfg.get("model_type") == COMPACT_MODEL_TYPE:
        counts, widths = cfg["num_heads_per_layer"], cfg["intermediate_sizes"]
    else:
        counts, widths = [heads] * layers, [cfg.get("intermediate_size", 3072)] * layers
    emb = (cfg.get("vocab_size", 30522) + cfg.get("max_position_embeddings", 512) + cfg.get("type_vocab_size", 2)) * hidden
    per_layer = sum(4 * n * head_dim * hidden + 2 * w * hidden for n, w in zip(counts, widths))
    return emb + per_layer


def _whole(value, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi


def _check_sizes(cfg: dict, path: Path) -> None:
    for name, (lo, hi) in LIMITS.items():
        if name in cfg and not (cfg[name] is None and name in OPTIONAL) and not _whole(cfg[name], lo, hi):
            raise PrunekitError(f"{path}: {name} must be a whole number in {lo}..{hi}, got {_short(cfg[name])}; the config is corrupt")
    labels = cfg.get("id2label")
    if labels is not None and (not isinstance(labels, dict) or not 1 <= len(labels) <= LIMITS["num_labels"][1]):
        raise PrunekitError(f"{path}: id2label must map 1..{LIMITS['num_labels'][1]} class ids to names; the config is corrupt")
    hidden, heads = cfg.get("hidden_size", 768), cfg.get("num_attention_heads", 12)
    if cfg.get("model_type") != COMPACT_MODEL_TYPE and hidden % heads:
        raise PrunekitError(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}; the config is corrupt")


def _check_compact_layers(cfg: dict, path: Path) -> None:
    layers, heads = cfg.get("num_hidden_layers", 12), cfg.get("num_attention_heads", 12)
    width = cfg.get("intermediate_size", 3072)

    def per_layer(name: str, ok, what: str) -> None:
        value = cfg.get(name)
        if value is None:
            return
        if not isinstance(value, list) or len(value) != layers or not all(ok(v) for v in value):
            raise PrunekitError(f"{path}: {name} must list, for each of the {layers} layers, {what}; the config is corrupt")

    if cfg.get("num_heads_per_layer") is None and isinstance(cfg.get("kept_heads"), list):
        cfg["num_heads_per_layer"] = [len(k) if isinstance(k, list) else -1 for k in cfg["kept_heads"]]
    for name in ("num_heads_per_layer", "intermediate_sizes"):
        if cfg.get(name) is None:
            raise PrunekitError(f"{path}: a compact config lists its per-layer sizes, but {name} is missing; the config is corrupt")
    per_layer("num_heads_per_layer", lambda v: _whole(v, 0, heads), f"a head count in 0..{heads}")
    per_layer("intermediate_sizes", lambda v: _whole(v, 0, width), f"an FFN width in 0..{width}")
    per_layer("kept_heads", lambda v: isinstance(v, list) and all(_whole(j, 0, heads - 1) for j in v) and len(set(v)) == len(v),
              f"the distinct indices (0..{heads - 1}) of the teacher heads it kept")
    counts, kept = cfg.get("num_heads_per_layer"), cfg.get("kept_heads")
    if counts is not None and kept is not None and [len(k) for k in kept] != counts:
        raise PrunekitError(f"{path}: kept_heads does not match num_heads_per_layer; the config is corrupt")
    if cfg.get("task_kind", "embedding") not in TASK_KINDS:
        raise PrunekitError(f"{path}: task_kind must be one of {', '.join(TASK_KINDS)}, got {_short(cfg.get('task_kind'))}")


# ------------------------------------------------------------------------------------------------
# Against the weights
def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """The tensor shapes a safetensors file declares, from its header alone."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(size - 8, MAX_HEADER_BYTES):
            raise PrunekitError(f"{path} is corrupt or incomplete (its header is cut short or of impossible length): re-save the model")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, RecursionError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise PrunekitError(f"{path} is corrupt or incomplete (its header is not valid JSON): re-save the model")
    shapes, end = {}, 0
    for name, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if name != "__metadata__" and isinstance(shape, list) and all(type(d) is int for d in shape):
            shapes[name] = shape
            offsets = entry.get("data_offsets")
            if isinstance(offsets, list) and len(offsets) == 2 and type(offsets[1]) is int:
                end = max(end, offsets[1])
    if end > size - 8 - n:
        raise PrunekitError(f"{path} is corrupt or incomplete (cut short: {size} bytes of {8 + n + end}): re-save the model")
    return shapes


def _weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.glob("*.safetensors") if p.name == "model.safetensors" or p.name.startswith("model-"))


def _check_against_weights(cfg: dict, model_dir: Path, path: Path, params: int) -> None:
    files = _weight_files(model_dir)
    if not files:
        # .bin weights (or a hub id): no header to read, but a file too small for the parameters the
        # config implies (at 2 bytes each, the least a BERT checkpoint stores) cannot belong to it.
        bins = [p for p in model_dir.glob("*.bin") if p.name == "pytorch_model.bin" or p.name.startswith("pytorch_model-")]
        size = sum(p.stat().st_size for p in bins)
        if bins and 2 * params > size * 1.05 + (64 << 10):
            raise PrunekitError(f"{path} describes {params:,} parameters, but the weights in {model_dir} hold {size:,} bytes: "
                                "the config does not belong to these weights (restore the model's own config.json)")
        return
    shapes: dict[str, list[int]] = {}
    for f in files:
        shapes.update(safetensors_shapes(f))
    where = files[0].name if len(files) == 1 else "the safetensors weights"

    def find(suffix: str) -> list[int] | None:
        hits = [s for k, s in shapes.items() if k == suffix or k.endswith("." + suffix)]
        return hits[0] if hits else None

    def agree(field: str, got: int, desc: str) -> None:
        if field in cfg and cfg[field] is not None and cfg[field] != got:
            raise PrunekitError(
                f"{path} says {field} = {cfg[field]}, but {where} holds {desc} of {got}: "
                "the config does not belong to these weights (restore the model's own config.json)"
            )

    word = find("embeddings.word_embeddings.weight")
    if word is None or len(word) != 2:
        raise PrunekitError(f"{where} in {model_dir} holds no word embeddings: not the weights of a BERT-family model")
    agree("vocab_size", word[0], "a vocabulary")
    agree("hidden_size", word[1], "a hidden size")
    for suffix, field, desc in (("embeddings.position_embeddings.weight", "max_position_embeddings", "position embeddings"),
                                ("embeddings.token_type_embeddings.weight", "type_vocab_size", "token types")):
        shape = find(suffix)
        if shape:
            agree(field, shape[0], desc)
    compact = cfg.get("model_type") == COMPACT_MODEL_TYPE
    pattern = re.compile(r"(?:^|\.)layers\.(\d+)\." if compact else r"(?:^|\.)encoder\.layer\.(\d+)\.")
    present = {int(m.group(1)) for k in shapes for m in [pattern.search(k)] if m}
    agree("num_hidden_layers", len(present), "a layer count")
    if compact:
        d = cfg.get("head_dim") or word[1] // cfg.get("num_attention_heads", 12)
        for i, (n, w) in enumerate(zip(cfg.get("num_heads_per_layer") or [], cfg.get("intermediate_sizes") or [])):
            qkv, up = find(f"layers.{i}.qkv.weight"), find(f"layers.{i}.up.weight")
            if (qkv[0] if qkv else 0) != 3 * n * d or (up[0] if up else 0) != w:
                raise PrunekitError(
                    f"{path}: layer {i} has {n} heads of {d} and FFN width {w}, but {where} holds QKV rows "
                    f"{qkv[0] if qkv else 0} and FFN width {up[0] if up else 0}: the config does not belong to these weights"
                )
    else:
        up = find("encoder.layer.0.intermediate.dense.weight")
        if up:
            agree("intermediate_size", up[0], "an FFN width")
    head = find("classifier.out_proj.weight") or find("classifier.weight")
    if head and cfg.get("num_labels") is not None:
        agree("num_labels", head[0], "a classifier")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
