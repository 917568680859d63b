"""Accuracy in every precision: the word-order teacher and its distilled 30% student in fp32, bf16
and int8 (dynamic and static), through the same runners `prunekit bench` times.

It reuses the model dirs ``benchmarks/distill_recovery.py`` leaves in ``--runs`` (default
``runs/bench-distill``: ``teacher/``, ``search-distilled/``, ``data/{train,dev,test}.jsonl``); run
that first on a fresh checkout (~25 min on 2 cores). Then ``prunekit eval`` scores both models on
the 1,000 test sentences through each backend; static int8 calibrates on 128 training sentences
(never the test ones). Then ``prunekit bench`` times both models on the same backends on the
test sentences' real lengths (batches of 16 padded to their longest; the compact model also on its
padding-free ``torch-bf16-packed``), after waiting for a quiet machine as ``cpu_best.py`` does, so
each accuracy stands next to its speed. Writes ``benchmarks/results/precision_accuracy.{json,md}``
(``-o`` for another folder).

    .venv/bin/python benchmarks/precision_accuracy.py          # the published tables (~4 min on 2 quiet cores)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from timing import Contention, wait_quiet

from prunekit.bench import BenchSettings, bench, format_best
from prunekit.evaluate import EvalSettings, evaluate, format_table
from prunekit.io import atomic_write_text
from prunekit.system import system_info

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("torch-sdpa", "torch-bf16", "compile-bf16", "ort-fp32", "ort-int8", "ort-int8-static")
COMPACT_ONLY = ("torch-bf16-packed", "compile-bf16-packed")  # the compact model's padding-free paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/bench-distill", help="where distill_recovery.py left its models and data")
    ap.add_argument("--backends", nargs="*", default=list(BACKENDS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-load", type=float, default=1.0, help="wait for the 1-min load average to drop below this")
    ap.add_argument("--wait", type=float, default=300)
    ap.add_argument("--no-speed", dest="speed", action="store_false")
    ap.add_argument("-o", "--out-dir", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    runs = Path(a.runs)
    need = [runs / "teacher", runs / "search-distilled", runs / "data" / "test.jsonl", runs / "data" / "train.jsonl"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run `python benchmarks/distill_recovery.py --runs {runs}` first")
    torch.set_num_threads(a.threads)
    t0 = time.time()
    report = evaluate(EvalSettings([str(runs / "teacher"), str(runs / "search-distilled")], data=str(runs / "data" / "test.jsonl"),
                                   backends=a.backends, calibration=str(runs / "data" / "train.jsonl"), max_length=128))
    # The compact model's padding-free paths (an original has none): scored against its fp32 too.
    packed = evaluate(EvalSettings([str(runs / "search-distilled")], data=str(runs / "data" / "test.jsonl"),
                                   backends=["torch-sdpa", *COMPACT_ONLY], max_length=128))
    report["models"] += [row for row in packed["models"] if row["backend"] in COMPACT_ONLY]
    print(format_table(report), flush=True)
    speed = None
    if a.speed:
        load0 = wait_quiet(a.max_load, a.wait)
        c = Contention()
        speed = bench(BenchSettings(models=[str(runs / "teacher"), str(runs / "search-distilled")],
                                    backends=list(dict.fromkeys([*a.backends, *COMPACT_ONLY])),
                                    batch=16, seq_len=128, real_lengths=str(runs / "data" / "test.jsonl"), num_batches=8,
                                    repeats=a.repeats, warmup=1, threads=a.threads, fvcore=False))
        speed["foreign_cpu"], speed["load_before_wait_end"] = c.foreign(), load0
        print(format_best(speed["best"][0]), flush=True)
    sysinfo = system_info("cpu")
    cpu = sysinfo["cpu"]
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "system": sysinfo, "threads": torch.get_num_threads(),
           "seconds": round(time.time() - t0, 1), "report": report, "speed": speed}

    def sent_s(model_type: str, backend: str) -> str:
        if speed is None:
            return "-"
        name = speed["models"][0 if model_type == "teacher" else 1]["name"]
        r = next((r for r in speed["rows"] if r["model"] == name and r["backend"] == backend), None)
        return "-" if r is None else f"{r['sentences_per_s']:.0f}"

    rows = ["| model | backend | dtype | test accuracy | change vs its fp32 | F1 | sentences/s |", "|---|---|---|---|---|---|---|"]
    for row in report["models"]:
        r = row["results"]["dev"]
        who = "teacher (MiniLM-L6, fine-tuned)" if row["type"] == "teacher" else "compact 30% FLOPs, distilled"
        d = r.get("primary_delta")
        rows.append(f"| {who} | {row['backend']} | {row['dtype']} | {r['metrics']['accuracy']:.4f} | "
                    f"{'-' if d is None else f'{100 * d:+.1f} pt'} | {r['metrics'].get('f1', float('nan')):.4f} | "
                    f"{sent_s(row['type'], row['backend'])} |")
    if speed is not None:
        rows += ["", f"Speed: `prunekit bench` on the test sentences' real lengths (8 batches of 16, padded to their longest: "
                     f"{speed['batches'][0]} ...), {speed['threads']} threads, interleaved, median of {a.repeats}; load average "
                     f"{speed['load_average']['start']:.2f} -> {speed['load_average']['end']:.2f}, other processes' CPU share "
                     f"{speed['foreign_cpu']:.0%}. {format_best(speed['best'][0])}."]
    md = "\n".join([
        "# Accuracy by precision (word-order task, 1,000 test sentences)", "",
        f"`python benchmarks/precision_accuracy.py`: the models of `benchmarks/distill_recovery.py`, scored by "
        f"`prunekit eval --backend ...`; static int8 calibrated on 128 training sentences. CPU: {cpu['model']} "
        f"[{', '.join(k for k, v in cpu['isa'].items() if v)}], {res['threads']} threads; torch {sysinfo['torch']}, "
        f"onnxruntime {sysinfo['onnxruntime']}; {res['date']}.", "", *rows, ""])
    out = Path(a.out_dir)
    atomic_write_text(out / "precision_accuracy.json", json.dumps(res, indent=1) + "\n")
    atomic_write_text(out / "precision_accuracy.md", md)
    print(md)


if __name__ == "__main__":
    main()
