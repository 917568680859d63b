"""Latency targets (issue 19): `search --cost latency` asked for 2x and 3x on CPU backends, then
`prunekit bench` on the same backend: the measured speedup beside the target and the cost model's
prediction, per architecture.

For each shape, backend and speedup: profile the backend once (the latency table, kept under
``--runs``), search with ``--cost latency --target-speedup S``, compact, and bench the original and
the compact model side by side on that backend at the profiled batch and length. Shapes:

* ``MiniLM-L6``: the packaged all-MiniLM-L6-v2 (real weights), searched with the gate search
  (``--method search``, ``--steps`` steps) on the shipped corpus;
* ``BERT-base``: a random-weight BERT-base (nothing real of that size ships here), its architecture
  chosen by ``--method magnitude`` (no training: its latency is what is measured, not its accuracy).

Writes ``benchmarks/results/latency_target.{json,md}`` (``--out`` for another stem). From the repo
root, on a quiet machine (the profile and the bench time things):

    .venv/bin/python benchmarks/latency_target.py                      # both shapes, torch-sdpa and ort-int8, 2x and 3x
    .venv/bin/python benchmarks/latency_target.py --quick --out /tmp/lt  # tiny shapes, a smoke run (~2 min)
    python benchmarks/latency_target.py --device cuda --backends triton-fp16-graph torch-fp16-graph --random-weights \
        --batch 64 --out $OUT/latency_target_gpu                         # on a lent GPU (gpu_session.sh)

On a compact-only backend (``triton-fp16-graph``) the speedup is over the original on its counterpart
(``torch-fp16-graph``), in the profile and in bench alike.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from random_models import QUICK_SHAPES, SHAPES, make_original

from prunekit.backends import COMPACT_ONLY, COUNTERPART
from prunekit.bench import BenchSettings, bench
from prunekit.compact import compact_to_dir
from prunekit.errors import PrunekitError
from prunekit.io import atomic_write_text
from prunekit.models import default_model_path
from prunekit.search import SearchSettings, search
from prunekit.system import cpu_info

REPO = Path(__file__).resolve().parents[1]


def original(shape: str, runs: Path, quick: bool, random_weights: bool = False) -> tuple[str, str]:
    """(the model dir, the search method) of a shape."""
    if shape == "MiniLM-L6" and not quick and not random_weights:
        return str(default_model_path()), "search"
    dims = (QUICK_SHAPES if quick else SHAPES)[shape]
    path = runs / f"original-{shape}"
    if not path.exists():
        make_original(path, dims, seed=0)
    return str(path), "magnitude"


def one(a: argparse.Namespace, shape: str, backend: str, speedup: float, model: str, method: str, runs: Path) -> dict:
    """Search, compact and bench one (shape, backend, speedup); the row of the table."""
    name = f"{shape}-{backend}-{speedup:g}x"
    table = runs / f"table-{shape}-{backend}.json"
    if a.prune_hidden and table.is_file() and "hidden_widths" not in json.loads(table.read_text())["model"]:
        table.unlink()  # profiled before the hidden width's terms were: profile again
    t0 = time.perf_counter()
    s = SearchSettings(model=model, output_dir=str(runs / name), method=method, target=1.0 / speedup, cost="latency",
                       device=a.device, backend=backend, latency_batch=a.batch, latency_seq_len=a.seq_len, latency_threads=a.threads,
                       latency_repeats=a.repeats, latency_table=str(table), latency_check=a.check, max_steps=a.steps, batch_size=16,
                       max_length=a.seq_len, max_examples=a.examples, prune_hidden=a.prune_hidden and method == "search",
                       group_by_length=False)  # random batches, as the recorded results were made
    result = search(s, force=True, progress=False)
    searched = time.perf_counter() - t0
    compact_to_dir(runs / name, out_dir=runs / f"{name}-compact", force=True, measure_fvcore=False)
    # a compact-only backend (triton-fp16-graph) times the original on its counterpart, as the profile does
    backends = [backend] + ([COUNTERPART[backend]] if backend in COMPACT_ONLY else [])
    res = bench(BenchSettings(models=[model, str(runs / f"{name}-compact")], device=a.device, backends=backends, batch=a.batch,
                              seq_len=a.seq_len, repeats=a.bench_repeats, warmup=2, threads=a.threads, fvcore=False))
    [check] = res["latency_targets"]
    meta = result.architecture.meta
    return {"shape": shape, "backend": backend, "target_speedup": speedup, "method": method,
            "predicted_ratio": check["predicted_ratio"], "measured_ratio": check["measured_ratio"],
            "prediction_error": check["error"], "measured_speedup": 1.0 / check["measured_ratio"],
            "off_target": (1.0 / check["measured_ratio"]) / speedup - 1.0, "flops_ratio": meta.get("flops_ratio"),
            "floor": meta["latency_model"]["floor"], "projected": meta.get("projected"),
            "search_measured_ratio": meta.get("measured_latency_ratio"), "rechosen": max(0, len(meta.get("latency_check", [])) - 1),
            "overhead": json.loads(table.read_text())["model"].get("overhead"),
            "heads": result.architecture.head_counts, "ffn": result.architecture.ffn_widths,
            "hidden": result.architecture.hidden_size,
            "search_seconds": round(searched, 1), "bench_notes": res["notes"], "load_average": res["load_average"]}


def report(rows: list, machine: str, a: argparse.Namespace) -> str:
    lines = [f"# Latency targets: measured vs asked and predicted ({machine}, {a.threads} threads, batch {a.batch} x {a.seq_len} tokens)",
             "", "Made by `benchmarks/latency_target.py`. Ratios are compact latency over the original's on the same backend "
             "(bench's median over interleaved repeats of the two times' ratio); the prediction is the search's latency model's for the "
             "architecture it chose, so the prediction error is the model's; the search's check times the choice (random weights) "
             "beside the original and re-chooses while it is outside the band (`--latency-check`).", "",
             "| shape | backend | asked | measured speedup | off target | predicted ratio | measured ratio | prediction error "
             "| search's check: measured ratio (re-choices) | FLOPs ratio | floor | heads per layer | FFN per layer | hidden |", "|" + "---|" * 14]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['shape']} | {r['backend']} | {r['target_speedup']:g}x | refused: {r['refused']} |" + " |" * 10)
            continue
        lines.append(f"| {r['shape']} | {r['backend']} | {r['target_speedup']:g}x | {r['measured_speedup']:.2f}x | {r['off_target']:+.1%} "
                     f"| {r['predicted_ratio']:.3f} | {r['measured_ratio']:.3f} | {r['prediction_error']:+.1%} | "
                     f"{_check(r)} | {r['flops_ratio']:.3f} | {r['floor']:.3f} | {r['heads']} | {r['ffn']} | {r.get('hidden') or 'full'} |")
    notes = sorted({n for r in rows for n in r.get("bench_notes", [])})
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def _check(r: dict) -> str:
    m = r.get("search_measured_ratio")
    return "-" if m is None else f"{m:.3f} ({r['rechosen']})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["MiniLM-L6", "BERT-base"])
    ap.add_argument("--backends", nargs="+", default=["torch-sdpa", "ort-int8"])
    ap.add_argument("--speedups", type=float, nargs="+", default=[2.0, 3.0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cuda for the GPU backends (triton-fp16-graph, torch-fp16-graph)")
    ap.add_argument("--prune-hidden", action="store_true", help="the gate search prunes the hidden width too (MiniLM)")
    ap.add_argument("--random-weights", action="store_true",
                    help="MiniLM-L6 with random weights and --method magnitude too (a machine without the packaged model)")
    ap.add_argument("--repeats", type=int, default=7, help="profile repeats per timed model")
    ap.add_argument("--bench-repeats", type=int, default=15)
    ap.add_argument("--check", type=int, default=3, help="search --latency-check (0: the latency model alone)")
    ap.add_argument("--steps", type=int, default=120, help="gate-search steps (MiniLM)")
    ap.add_argument("--examples", type=int, default=2000, help="corpus sentences the search reads")
    ap.add_argument("--runs", default=str(REPO / "runs" / "latency-target"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "latency_target"))
    ap.add_argument("--quick", action="store_true", help="tiny random shapes, few steps: a smoke run")
    a = ap.parse_args()
    if a.quick:
        a.shapes, a.seq_len, a.batch, a.steps, a.examples, a.repeats, a.bench_repeats = list(QUICK_SHAPES), 32, 4, 10, 64, 2, 3
    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    machine = f"{cpu['model']} [{', '.join(k for k, v in cpu['isa'].items() if v)}]"
    if a.device.startswith("cuda"):
        import torch

        machine = f"{torch.cuda.get_device_name()} (host: {machine})"
    rows = []
    for shape in a.shapes:
        model, method = original(shape, runs, a.quick, a.random_weights)
        for backend in a.backends:
            for speedup in a.speedups:
                try:
                    rows.append(one(a, shape, backend, speedup, model, method, runs))
                except PrunekitError as e:  # a target below the backend's floor: refused, as it should be
                    rows.append({"shape": shape, "backend": backend, "target_speedup": speedup, "refused": str(e)})
                print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("heads", "ffn", "bench_notes")}), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"machine": machine, "settings": vars(a), "rows": rows}, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), report(rows, machine, a))
    print(report(rows, machine, a))


if __name__ == "__main__":
    main()
