"""The task files `build.py` writes (one JSON object per line: `text`, `label`, and `text_pair` in a
two-segment task), read by the scripts beside it."""
from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: Path, limit: int | None = None) -> tuple[list[str], list[str], list[str] | None]:
    """(texts, labels, second segments or None) of a task file, the first ``limit`` rows if given."""
    texts, labels, pairs = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.append(row["text"])
            labels.append(row["label"])
            if "text_pair" in row:
                pairs.append(row["text_pair"])
            if limit and len(texts) >= limit:
                break
    if pairs and len(pairs) != len(texts):
        raise SystemExit(f"{path}: some rows have a text_pair and some do not")
    return texts, labels, pairs or None
