"""Does the search's latency check time an architecture as `prunekit bench` does? (issue 19)

`search --latency-check` times the chosen architecture as a compact model with random weights (and the
profile's small vocabulary) over a random-weight original; `prunekit bench` times the compacted model
over the real original. Both on the same backend. This script builds both pairs for each architecture
that `benchmarks/latency_target.py` left in ``--runs`` and times all of them interleaved in one loop
(every runner once per round, each round in its own order), ``--builds`` times over with freshly
exported sessions: the two ratios side by side under one state of the machine, and how much a fresh
build of the same graphs moves them. Next to them, what the search's check and bench measured when
latency_target.py ran (minutes apart, each under its own state of the machine).

    .venv/bin/python benchmarks/latency_target.py --shapes BERT-base --backends ort-int8   # first: the runs
    .venv/bin/python benchmarks/latency_check_agreement.py --shape BERT-base --backend ort-int8 \
        --out benchmarks/results/latency_check_agreement_bertbase_int8                      # ~6 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from prunekit import latency as lat
from prunekit.backends import build_runner
from prunekit.io import atomic_write_text
from prunekit.loading import load_model_dir
from prunekit.system import cpu_info
from prunekit.timing import paired_ratio

REPO = Path(__file__).resolve().parents[1]


def build(a: argparse.Namespace, runs: Path, names: list[str], original, tmp: Path) -> dict:
    """name -> runner: bench's ``original`` and compacts, the check's original and random-weight compacts."""
    shape, config = original.shape, original.config
    runners = {"bench original": build_runner(original, "bench original", a.backend, "cpu", a.threads, tmp, None),
               "check original": lat._original_runner(tmp, shape, a.backend, "cpu", a.threads, config)}
    for name in names:
        compact = load_model_dir(runs / f"{name}-compact")
        runners[f"bench {name}"] = build_runner(compact, f"bench {name}", a.backend, "cpu", a.threads, tmp, None)
        path = lat._random_model_dir(tmp / f"check-{name}", shape, shape.num_layers, list(compact.heads_per_layer),
                                     list(compact.ffn_per_layer), config, a.seq_len, compact.hidden_size)
        runners[f"check {name}"] = build_runner(load_model_dir(path), f"check {name}", a.backend, "cpu", a.threads, tmp, None)
    return runners


def time_all(runners: dict, feed: dict, warmup: int, repeats: int) -> dict:
    """name -> seconds per batch over ``repeats`` interleaved rounds (each round shuffled)."""
    times = {n: [] for n in runners}
    for _ in range(warmup):
        for r in runners.values():
            r.run(feed)
    for k in range(repeats):
        for n in random.Random(k).sample(list(runners), len(runners)):
            t0 = time.perf_counter()
            runners[n].run(feed)
            times[n].append(time.perf_counter() - t0)
    return times


def recorded(runs: Path, name: str, results: Path | None) -> dict:
    """What the search's check and latency_target.py's bench measured for ``name`` when it ran."""
    meta = json.loads((runs / name / "architecture.json").read_text())
    meta = meta.get("meta", meta)
    out = {"check_then": meta.get("measured_latency_ratio")}
    if results and results.is_file():
        for r in json.loads(results.read_text())["rows"]:
            if f"{r['shape']}-{r['backend']}-{r['target_speedup']:g}x" == name and "measured_ratio" in r:
                out["bench_then"] = r["measured_ratio"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="BERT-base")
    ap.add_argument("--backend", default="ort-int8")
    ap.add_argument("--speedups", type=float, nargs="+", default=[2.0, 3.0])
    ap.add_argument("--builds", type=int, default=3, help="fresh builds of every session, each timed")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", default=str(REPO / "runs" / "latency-target"))
    ap.add_argument("--results", help="latency_target.py's JSON for these runs (its bench ratios shown beside)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "latency_check_agreement"))
    a = ap.parse_args()
    runs = Path(a.runs)
    names = [f"{a.shape}-{a.backend}-{s:g}x" for s in a.speedups]
    missing = [n for n in [f"original-{a.shape}"] + [f"{n}-compact" for n in names] if not (runs / n).is_dir()]
    if missing:
        raise SystemExit(f"{runs} lacks {', '.join(missing)}: run benchmarks/latency_target.py --shapes {a.shape} "
                         f"--backends {a.backend} first")
    torch.set_num_threads(a.threads)
    cpu = cpu_info()
    machine = f"{cpu['model']} [{', '.join(k for k, v in cpu['isa'].items() if v)}]"
    original = load_model_dir(runs / f"original-{a.shape}")
    feed = lat._inputs(a.batch, a.seq_len, lat._profile_vocab(original.config), "cpu")  # ids both vocabularies take
    rows = []
    for b in range(a.builds):
        with tempfile.TemporaryDirectory(prefix="prunekit-agreement-") as tmp:
            runners = build(a, runs, names, original, Path(tmp))
            times = time_all(runners, feed, a.warmup, a.repeats)
        for name in names:
            row = {"build": b, "arch": name,
                   "bench": paired_ratio(times[f"bench {name}"], times["bench original"]),
                   "check": paired_ratio(times[f"check {name}"], times["check original"]),
                   "bench_min": min(times[f"bench {name}"]) / min(times["bench original"]),
                   "check_min": min(times[f"check {name}"]) / min(times["check original"]),
                   "original_ms": 1e3 * statistics.median(times["bench original"]),
                   "original_spread": max(times["bench original"]) / min(times["bench original"]),
                   **recorded(runs, name, Path(a.results) if a.results else None)}
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    lines = [f"# The search's latency check against bench, timed side by side ({machine}, {a.backend}, {a.threads} threads, "
             f"batch {a.batch} x {a.seq_len} tokens)", "",
             "Made by `benchmarks/latency_check_agreement.py`. Per fresh build of every session: the compact/original latency "
             f"ratio as the search's check times it (random weights) and as bench does (the compacted model), all runners "
             f"interleaved over {a.repeats} rounds (median of the rounds' ratios; beside it the ratio of the fastest runs); "
             "'then': what the check and bench measured when latency_target.py ran.", "",
             "| architecture | build | check now | bench now | check / bench | check now (fastest) | bench now (fastest) "
             "| original ms (slowest / fastest run) | check then | bench then |", "|" + "---|" * 10]
    for r in rows:
        then = lambda k: f"{r[k]:.3f}" if r.get(k) is not None else "-"  # noqa: E731
        lines.append(f"| {r['arch']} | {r['build']} | {r['check']:.3f} | {r['bench']:.3f} | {r['check'] / r['bench']:.3f} "
                     f"| {r['check_min']:.3f} | {r['bench_min']:.3f} | {r['original_ms']:.0f} ({r['original_spread']:.2f}x) "
                     f"| {then('check_then')} | {then('bench_then')} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"machine": machine, "settings": vars(a), "rows": rows}, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
