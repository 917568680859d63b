"""What lets a compact model dir travel: the files other libraries read beside the weights.

* sentence-transformers: an embedding model's dir is a ``SentenceTransformer`` model too. Its
  modules and pooling config are the teacher's where the teacher has them (``modules.json``,
  ``1_Pooling/``, ``2_Normalize/``, ...), else a Transformer + mean pooling, which is what prunekit
  scores an embedding model by. The Pooling module takes the model's own hidden width. A model whose
  hidden width was cut (``search --prune-hidden``) maps its pooled embedding back to the teacher's
  width through ``output_proj``: sentence-transformers applies those weights as a ``Dense`` module
  (identity activation) right after Pooling, the modules after it renumbered (``3_Normalize/``, ...).
  Its weights are copied from the dir's own ``model.safetensors`` every time the files are written,
  so a model saved again after training (distill) carries its trained projection.

The modeling file and config.json's ``auto_map`` (transformers with ``trust_remote_code=True``) are
written with the weights, by :func:`prunekit.modeling.save_compact`.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .io import atomic_write_bytes, atomic_write_text

ST_FILES = ("sentence_bert_config.json", "config_sentence_transformers.json")  # copied as they are; modules.json is rewritten
# The modules.json entry of the Dense module that holds a compact model's output_proj: its name marks it
# as prunekit's (rewritten, never copied, when the files of a compact dir are written again).
PROJECTION = {"name": "output_proj", "path": "0_Dense", "type": "sentence_transformers.models.Dense"}
DEFAULT_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
]
MEAN_POOLING = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False}


def local_dir(name_or_path: str | None) -> Path | None:
    """The local folder of a model: the dir itself, or a hub id's snapshot in the local hub cache
    (nothing is downloaded); None when there is neither."""
    if name_or_path is None:
        return None
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception:  # noqa: BLE001 - not a hub id, or not in the cache: there is no local folder
        return None


def write_sentence_transformers_files(dst: Path, source: str | None, hidden_size: int, max_seq_length: int) -> None:
    """Make ``dst`` (a compact embedding model dir, its config.json and model.safetensors written) load
    with ``SentenceTransformer(dst, trust_remote_code=True)``: the modules of ``source`` (the teacher's,
    or the student's: a dir, or a hub id in the local hub cache) when it is a sentence-transformers
    model, else a Transformer + mean pooling; Pooling over ``hidden_size`` (the model's own width),
    then the model's ``output_proj`` as a Dense module where it has one."""
    dst = Path(dst)
    src = local_dir(source)
    if src is not None and (src / "modules.json").is_file():
        for name in ST_FILES:
            if (src / name).is_file():
                _copy(src / name, dst / name)
        modules = [m for m in json.loads((src / "modules.json").read_text(encoding="utf-8"))
                   if m.get("name") != PROJECTION["name"]]  # a student's projection: written again from dst's weights
    else:
        src, modules = None, [dict(m) for m in DEFAULT_MODULES]
        atomic_write_text(dst / "sentence_bert_config.json",
                          json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2) + "\n")
    projection = output_projection_weights(dst)
    if projection is not None:
        pooling = [i for i, m in enumerate(modules) if str(m.get("type", "")).endswith("Pooling")]
        modules.insert(pooling[0] + 1 if pooling else len(modules), dict(PROJECTION))
    written = []
    for idx, module in enumerate(modules):
        old = module.get("path") or ""
        module = dict(module, idx=idx, path=re.sub(r"^\d+_", f"{idx}_", old))
        new = dst / module["path"] if module["path"] else None
        if module.get("name") == PROJECTION["name"]:
            _write_dense(new, *projection)
        elif new is not None and str(module.get("type", "")).endswith("Pooling"):
            _write_pooling(new, src / old if src is not None and old else None, hidden_size)
        elif src is not None and old and (src / old).is_dir():  # e.g. a teacher's own Dense; the Transformer is the dir itself
            _copy(src / old, new)
        elif new is not None:
            new.mkdir(parents=True, exist_ok=True)  # Normalize and the like keep nothing
        written.append(module)
    atomic_write_text(dst / "modules.json", json.dumps(written, indent=2) + "\n")


def output_projection_weights(model_dir: Path) -> tuple | None:
    """``(weight, bias)`` of the ``output_proj`` saved in ``model_dir/model.safetensors``, or None
    when the model has none (its hidden width is the teacher's, or ``compact --narrow-output``)."""
    from safetensors import safe_open

    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        names = {k for k in f.keys() if k.startswith("output_proj.")}  # the bare encoder's keys have no prefix
        if "output_proj.weight" not in names:
            return None
        bias = f.get_tensor("output_proj.bias") if "output_proj.bias" in names else None
        return f.get_tensor("output_proj.weight"), bias


def _write_dense(folder: Path, weight, bias) -> None:
    """sentence-transformers' ``Dense`` folder (its config.json and model.safetensors) for ``weight`` [out, in]."""
    import torch
    from safetensors.torch import save

    out_features, in_features = weight.shape
    if bias is None:
        bias = torch.zeros(out_features, dtype=weight.dtype)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.json", json.dumps({
        "in_features": in_features, "out_features": out_features, "bias": True,
        "activation_function": "torch.nn.modules.linear.Identity",
    }, indent=2) + "\n")
    atomic_write_bytes(folder / "model.safetensors", save({"linear.weight": weight.contiguous(), "linear.bias": bias.contiguous()}))


def _write_pooling(folder: Path, source: Path | None, hidden_size: int) -> None:
    """A Pooling folder: the source's config (mean pooling where there is none) over ``hidden_size``."""
    config = dict(MEAN_POOLING)
    if source is not None and (source / "config.json").is_file():
        _copy(source, folder)
        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    key = "embedding_dimension" if "embedding_dimension" in config else "word_embedding_dimension"  # sentence-transformers >= 6 renamed it
    config = {key: hidden_size, **{k: v for k, v in config.items() if k != key}}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")


def _copy(src: Path, dst: Path) -> None:
    """A file or folder copied (nothing to do when the files are written again in the dir they came from)."""
    if src.resolve() == dst.resolve():
        return
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copyfile(src, dst)
