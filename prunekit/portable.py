"""What lets a compact model dir travel: the files other libraries read beside the weights.

* sentence-transformers: an embedding model's dir is a ``SentenceTransformer`` model too. Its
  modules and pooling config are the teacher's where the teacher has them (``modules.json``,
  ``1_Pooling/``, ``2_Normalize/``, ...), else a Transformer + mean pooling, which is what prunekit
  scores an embedding model by.

The modeling file and config.json's ``auto_map`` (transformers with ``trust_remote_code=True``) are
written with the weights, by :func:`prunekit.modeling.save_compact`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .io import atomic_write_text

ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


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
    """Make ``dst`` (a compact embedding model dir) load with ``SentenceTransformer(dst, trust_remote_code=True)``:
    the files of ``source`` (the teacher's, or the student's: a dir, or a hub id in the local hub
    cache) when it is a sentence-transformers model, else a Transformer + mean pooling."""
    teacher_dir = local_dir(source)
    modules = teacher_dir / "modules.json" if teacher_dir is not None else None
    if modules is not None and modules.is_file():
        for name in ST_FILES:
            if (teacher_dir / name).is_file():
                shutil.copyfile(teacher_dir / name, dst / name)
        for module in json.loads(modules.read_text(encoding="utf-8")):
            path = module.get("path") or ""
            if path and (teacher_dir / path).is_dir():  # e.g. 1_Pooling/config.json; the Transformer is the dir itself
                shutil.copytree(teacher_dir / path, dst / path, dirs_exist_ok=True)
            elif path:
                (dst / path).mkdir(parents=True, exist_ok=True)  # Normalize and the like keep nothing
        return
    atomic_write_text(dst / "modules.json", json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ], indent=2) + "\n")
    atomic_write_text(dst / "sentence_bert_config.json",
                      json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2) + "\n")
    (dst / "1_Pooling").mkdir(exist_ok=True)
    atomic_write_text(dst / "1_Pooling" / "config.json", json.dumps({
        "word_embedding_dimension": hidden_size, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
    }, indent=2) + "\n")
