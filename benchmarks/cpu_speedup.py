"""Study-style CPU tables: FLOPs breakdown of the shapes, and measured speedup against FLOPs ratio.

For TinyBERT-4L, MiniLM-L6, TinyBERT-6L and BERT-base shapes (random weights, embedding models):

1. FLOPs per sequence of 128 tokens by component (analytic model of ``prunekit.flops``);
2. for FLOPs ratios 1.0, 0.5, 0.3, 0.2: a random-priority architecture cut to that budget
   (``select_to_budget``), compacted, and timed side by side with the original by ``prunekit.bench``
   (interleaved, batch 16 x 128 tokens) in torch (SDPA) and onnxruntime fp32 (optionally int8).

Writes ``benchmarks/results/cpu_speedup.{json,md}`` (``-o`` for another folder) with the CPU, its
ISA, threads, versions and the load average before and after; the section of ``int8_profile.py`` in
both files is kept (``cpu_speedup_report.py`` renders the markdown). Timing on a shared machine is
only meaningful when it is quiet: with the 1-minute load average above ``--max-load`` the script
writes the FLOPs tables only and says so (``--ignore-load`` to time anyway, marked as such).

    # the published tables (~10-20 min on 2 quiet cores):
    .venv/bin/python benchmarks/cpu_speedup.py --backends torch-sdpa ort-fp32 ort-int8
    .venv/bin/python benchmarks/cpu_speedup.py --quick -o /tmp/q   # tiny shapes, seconds (a smoke test)
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from cpu_speedup_report import to_markdown
from random_models import QUICK_SHAPES, SHAPES, make_compact, make_original

from prunekit.bench import BenchSettings, bench
from prunekit.flops import ModelShape, model_flops
from prunekit.io import atomic_write_text
from prunekit.system import system_info

ROOT = Path(__file__).resolve().parents[1]
RATIOS = (1.0, 0.5, 0.3, 0.2)


def flops_breakdown(shapes: dict, seq_len: int) -> list:
    rows = []
    for name, (layers, hidden, heads, ffn) in shapes.items():
        shape = ModelShape(layers, hidden, heads, hidden // heads, ffn, 0)
        f = model_flops(shape, seq_len)
        rows.append({"shape": name, "layers": layers, "hidden": hidden, "heads": heads, "head_dim": hidden // heads,
                     "ffn": ffn, "total": f.total, **{f"flops_{k}": f.by_component[k] for k in ("qkv", "attention", "output", "ffn")}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 1 repeat: checks the script, measures nothing")
    ap.add_argument("--shapes", nargs="*", default=None, help=f"subset of {list(SHAPES)}")
    ap.add_argument("--backends", nargs="*", default=["torch-sdpa", "ort-fp32"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--max-load", type=float, default=1.2, help="skip timing when the 1-min load average is above this")
    ap.add_argument("--ignore-load", action="store_true")
    ap.add_argument("-o", "--out-dir", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()

    shapes = QUICK_SHAPES if a.quick else {k: SHAPES[k] for k in (a.shapes or SHAPES)}
    batch, seq_len, repeats = (2, 16, 1) if a.quick else (a.batch, a.seq_len, a.repeats)
    if a.threads:
        torch.set_num_threads(a.threads)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "system": system_info("cpu"), "threads": torch.get_num_threads(),
           "batch": batch, "seq_len": seq_len, "ratios": list(RATIOS), "backends": a.backends, "quick": a.quick,
           "flops": flops_breakdown(shapes, seq_len), "speed": []}
    load = os.getloadavg()[0]
    if load > a.max_load and not (a.ignore_load or a.quick):
        res["speed_note"] = (f"the 1-minute load average was {load:.2f} (> {a.max_load}) on this shared machine; "
                             "rerun when it is quiet")
    else:
        if load > a.max_load:
            res["speed_note"] = f"measured with load average {load:.2f} (> {a.max_load}): not for publication"
        res["load_average"] = {"start": load}
        with tempfile.TemporaryDirectory(prefix="cpu-speedup-") as tmp:
            for si, (name, dims) in enumerate(shapes.items()):
                orig = make_original(Path(tmp) / name, dims, seed=si)
                dirs, archs = [str(orig)], {}
                for ratio in RATIOS:
                    d = Path(tmp) / f"{name}-{ratio}"
                    archs[d.name] = make_compact(orig, d, ratio, seq_len, seed=100 * si + int(100 * ratio))
                    dirs.append(str(d))
                print(f"{name}: timing {len(dirs)} models x {a.backends}", flush=True)
                b = bench(BenchSettings(models=dirs, backends=a.backends, batch=batch, seq_len=seq_len, repeats=repeats,
                                        warmup=a.warmup, threads=a.threads, fvcore=False))
                for row in b["rows"]:
                    arch = archs.get(row["model"])
                    res["speed"].append({"shape": name, "model": row["model"], "ratio": arch["achieved"] if arch else 1.0,
                                         "original": arch is None, "backend": row["backend"],
                                         **{k: row[k] for k in ("sentences_per_s", "latency_median_ms", "latency_p90_ms",
                                                                "speedup", "flops_speedup", "speedup_over_flops_speedup")}})
                res.setdefault("architectures", {}).update({f"{name}@{k.rsplit('-', 1)[1]}": v for k, v in archs.items()})
                res.setdefault("notes", []).extend(b["notes"])
        res["load_average"]["end"] = os.getloadavg()[0]
    out = Path(a.out_dir)
    previous = out / "cpu_speedup.json"
    if previous.is_file():  # benchmarks/int8_profile.py's results are kept (it is run separately)
        kept = json.loads(previous.read_text()).get("int8_profile")
        if kept:
            res["int8_profile"] = kept
    atomic_write_text(out / "cpu_speedup.json", json.dumps(res, indent=2) + "\n")
    atomic_write_text(out / "cpu_speedup.md", to_markdown(res))
    print(to_markdown(res))


if __name__ == "__main__":
    main()
