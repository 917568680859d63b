"""benchmarks/arch_speed.py: architecture files (with and without a pruned hidden width) cut out of a
random-weight original of their shape and timed by bench; a smoke run on a tiny shape, one repeat."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from prunekit.architecture import Architecture
from prunekit.flops import ModelShape

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ModelShape(num_layers=2, hidden_size=32, num_heads=4, head_dim=8, intermediate_size=64)


def _arch(path: Path, heads: list[int], ffn: list[int], hidden: int | None) -> Path:
    head_mask, ffn_mask = torch.zeros(2, 4), torch.zeros(2, 64)
    for layer in range(2):
        head_mask[layer, : heads[layer]] = 1
        ffn_mask[layer, : ffn[layer]] = 1
    hidden_mask = None if hidden is None else (torch.arange(32) < hidden).float()
    Architecture.from_masks(head_mask, ffn_mask, {"method": "search"}, hidden_mask).save(path, SHAPE, 16)
    return path


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "arch_speed.py"), *args, "--backends", "torch-eager", "--batch", "2",
           "--seq-len", "16", "--repeats", "1", "--threads", "1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_arch_speed_times_each_architecture_beside_the_original(tmp_path):
    a = _arch(tmp_path / "a.json", [2, 1], [40, 20], None)
    b = _arch(tmp_path / "b.json", [1, 1], [48, 24], 24)
    proc = _run(tmp_path, f"A={a}", f"B={b}", "--pairs", "B:A")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["archs"]["A"]["hidden"] == 32 and out["archs"]["B"]["hidden"] == 24
    assert out["archs"]["B"]["heads"] == [1, 1] and out["archs"]["B"]["ffn"] == [48, 24]
    speedups = {Path(r["model"]).name: r["speedup"] for r in out["rows"]}
    assert set(speedups) >= {"A", "B"} and all(speedups[k] > 0 for k in ("A", "B"))
    [pair] = out["pairs"]
    assert pair["pair"] == "B:A" and abs(pair["ratio"] - speedups["B"] / speedups["A"]) < 1e-9
    assert "| B | 24 | 1 1 | 48 24 |" in (tmp_path / "out.md").read_text()


def test_arch_speed_refuses_mixed_shapes_and_bad_names(tmp_path):
    a = _arch(tmp_path / "a.json", [2, 1], [40, 20], None)
    other = json.loads(a.read_text())
    other["shape"]["intermediate_size"] = 128
    (tmp_path / "c.json").write_text(json.dumps(other))
    proc = _run(tmp_path, f"A={a}", f"C={tmp_path / 'c.json'}")
    assert proc.returncode != 0 and "different shapes" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run(tmp_path, str(a))
    assert proc.returncode != 0 and "NAME=PATH" in proc.stderr and "Traceback" not in proc.stderr


def test_arch_speed_rounds_give_the_median_and_range(tmp_path):
    a = _arch(tmp_path / "a.json", [2, 1], [40, 20], None)
    b = _arch(tmp_path / "b.json", [1, 1], [48, 24], 24)
    proc = _run(tmp_path, f"A={a}", f"B={b}", "--pairs", "B:A", "--rounds", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert len(out["rounds"]) == 3
    per_round = [{Path(r["model"]).name: r["speedup"] for r in rows} for rows in out["rounds"]]
    ratios = sorted(rd["B"] / rd["A"] for rd in per_round)
    [pair] = out["pairs"]
    assert pair["rounds"] == 3 and abs(pair["ratio"] - ratios[1]) < 1e-9
    assert pair["min"] == ratios[0] and pair["max"] == ratios[2]
    assert f"[{ratios[0]:.3f}-{ratios[2]:.3f}]" in (tmp_path / "out.md").read_text()
    proc = _run(tmp_path, f"A={a}", "--rounds", "0")
    assert proc.returncode != 0 and "--rounds" in proc.stderr and "Traceback" not in proc.stderr
