"""benchmarks/train_precision.py: a training step timed in fp32 and in bf16 autocast side by side, on an
original and on a compact model; a smoke run on tiny models (the figures themselves are the benchmark's)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunekit.architecture import Architecture
from prunekit.compact import compact
from prunekit.modeling import save_compact
from prunekit.models import load_teacher

ROOT = Path(__file__).resolve().parents[1]


def test_train_precision_times_both_precisions_for_each_model(tiny_models, tmp_path):
    original = tiny_models("minilm6", "classification")
    teacher = load_teacher(str(original))
    s = teacher.shape
    arch = Architecture(heads=[[0]] * s.num_layers, neurons=[list(range(s.intermediate_size // 4))] * s.num_layers)
    small = tmp_path / "compact"
    save_compact(compact(teacher, arch), small)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_precision.py"), str(original), str(small), "--batch", "2",
           "--seq-len", "16", "--repeats", "2", "--warmup", "0", "--threads", "1", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "out.json").read_text())
    assert [r["model"] for r in res["rows"]] == [str(original), str(small)]
    for r in res["rows"]:
        assert r["fp32_s"] > 0 and r["bf16_s"] > 0 and len(r["times"]["fp32"]) == len(r["times"]["bf16"]) == 2
        ratios = sorted(f / b for f, b in zip(r["times"]["fp32"], r["times"]["bf16"]))
        assert r["bf16_speedup"] == pytest.approx(sum(ratios) / 2)  # the median of the two rounds' paired ratios
        assert r["fp32_range"][0] <= r["fp32_s"] <= r["fp32_range"][1]
    assert res["rows"][1]["params"] < res["rows"][0]["params"]
    md = (tmp_path / "out.md").read_text()
    assert "bf16 speedup" in md and res["cpu"]["model"] in md
