"""The task files `build.py` writes (one JSON object per line: `text`, `label`), read by the scripts beside it."""
from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(texts, labels) of a task file, the first ``limit`` rows if given."""
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.append(row["text"])
            labels.append(row["label"])
            if limit and len(texts) >= limit:
                break
    return texts, labels
