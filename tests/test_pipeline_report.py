"""benchmarks/real_tasks/pipeline.py's report: per-run dev and test accuracy, and the mean over the
seeds of one recipe (tags X, X-s1, X-s2), which is what the README's comparisons are read off."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory import load_real_task_script


@pytest.fixture(scope="module")
def pipeline():
    return load_real_task_script("pipeline")


def _run(results: Path, tag: str, test: float, dev: float, target: float = 0.3) -> None:
    stages = [{"stage": s, "seconds": 60.0, "rc": 0, "command": f"prunekit {s}"} for s in ("search", "compact", "distill", "eval")]
    run = {"task": "toy", "method": "search", "target": target, "tag": tag, "stages": stages, "finished": "2026-12-04 12:00 UTC",
           "git_commit": "0" * 40, "machine": {"model": "CPU"}, "threads": 2, "nice": 0,
           "distill": {"best": {"metrics": {"accuracy": dev}}},
           "distilled": {"accuracy": test, "examples": 978, "params": 1e6, "flops_ratio": target},
           "teacher": {"accuracy": 0.85}}
    (results / f"pipeline_toy_search_{target}_{tag}.json").write_text(json.dumps(run))


def test_recipe_strips_the_seed_suffix(pipeline):
    assert [pipeline.recipe(t) for t in ("S", "S-s1", "S-s12", "L3-s2", "H10", None)] == ["S", "S", "S", "L3", "H10", ""]


def test_report_gives_dev_per_run_and_the_seed_mean_per_recipe(pipeline, tmp_path):
    for tag, test, dev in (("S", 0.84, 0.82), ("S-s1", 0.82, 0.84), ("S-s2", 0.83, 0.80), ("H", 0.80, 0.81)):
        _run(tmp_path, tag, test, dev)
    text = pipeline.write_report("toy", tmp_path).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| search | 0.3 | S | 3 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4:8] == ["83.00", "1.00", "82.00", "84.00, 82.00, 83.00"]
    assert not any(line.startswith("| search | 0.3 | H | 1 |") for line in text.splitlines())  # one seed: no mean
    assert "| 82.00 | 84.00 |" in text  # S's own row: dev then test
