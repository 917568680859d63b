"""The measured latency ratio of pipeline runs' students, side by side under one set of conditions (issue 19).

A latency search records the ratio its own check measured; a FLOPs search records none, and two
runs' checks ran at different times beside different work. This times every given run's
architecture (``<run>/search/architecture.json``, random weights, as the check does) against the
teacher's original on one backend, round-robin over ``--rounds`` rounds so a machine's drift is
spread over all of them, and prints and writes the median ratio of each (and its range). From
the repo root:

    .venv/bin/python benchmarks/real_tasks/run_latency.py --task docstrings --threads 1 --batch 8 \\
        search-0.3-R search-0.3-R-s1 search-0.318-Ln2 ... --out benchmarks/results/real_tasks/latency_docstrings
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from transformers import AutoConfig

from prunekit import latency as lat
from prunekit.architecture import Architecture
from prunekit.flops import ModelShape
from prunekit.system import cpu_info

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run dir names under runs/real_tasks/<task>/pipeline/")
    ap.add_argument("--task", required=True)
    ap.add_argument("--backend", default="torch-sdpa")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7, help="interleaved repeats per measurement (the check's --latency-repeats)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="write <out>.json and <out>.md")
    args = ap.parse_args(argv)

    task_dir = ROOT / "runs" / "real_tasks" / args.task
    config = AutoConfig.from_pretrained(task_dir / "teacher")
    shape = ModelShape.from_config(config)
    archs = {}
    for name in args.runs:
        path = task_dir / "pipeline" / name / "search" / "architecture.json"
        if not path.is_file():
            sys.exit(f"no architecture at {path}: give run dir names under {task_dir / 'pipeline'}")
        archs[name] = (Architecture.load(path, shape), json.loads(path.read_text()))
    ratios = {name: [] for name in archs}
    for r in range(args.rounds):
        for name, (arch, _) in archs.items():
            ratio = lat.measure_ratio(arch.head_counts, arch.ffn_widths, shape, args.backend, "cpu", args.batch, args.seq_len,
                                      args.threads, config, args.repeats, hidden=arch.hidden_size)
            ratios[name].append(ratio)
            print(f"round {r}: {name} {ratio:.4f}", flush=True)
    rows = []
    for name, (arch, meta) in archs.items():
        rows.append({"run": name, "median": statistics.median(ratios[name]), "ratios": ratios[name],
                     "flops_ratio": meta.get("achieved_flops_ratio"), "heads": sum(arch.head_counts),
                     "check_measured": meta.get("measured_latency_ratio"), "target_latency_ratio": meta.get("target_latency_ratio")})
    cpu = cpu_info()
    isa = ", ".join(k for k, v in cpu["isa"].items() if v)
    machine = f"{cpu['model']} [{isa}], torch {torch.__version__}"
    head = (f"# Measured latency ratio of each run's architecture over the original ({args.task}; {args.backend}, batch {args.batch} x "
            f"{args.seq_len}, {args.threads} thread(s), {args.repeats} repeats x {args.rounds} rounds, random weights; {machine})\n\n"
            "Made by `benchmarks/real_tasks/run_latency.py`; rounds run round-robin over the runs.\n\n"
            "| run | FLOPs ratio | heads | latency target | search's check | measured here (median) | range |\n|---|---:|---:|---:|---:|---:|---:|\n")
    lines = [f"| `{r['run']}` | {r['flops_ratio']:.3f} | {r['heads']} | {_f(r['target_latency_ratio'])} | {_f(r['check_measured'])} | "
             f"**{r['median']:.3f}** | {min(r['ratios']):.3f}-{max(r['ratios']):.3f} |" for r in rows]
    text = head + "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "machine": machine, "rows": rows}, indent=1) + "\n")
        out.with_suffix(".md").write_text(text)
    return 0


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(main())
