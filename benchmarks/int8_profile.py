"""Where onnxruntime int8 spends its time on the small BERT shapes, and which quantization variant is fastest.

For each shape of ``cpu_speedup.py`` (random weights, embedding models), the compact model at 30% of
the FLOPs (the same random-priority architecture as ``cpu_speedup.py``) and optionally the original:

1. per-op-type kernel time (onnxruntime's profiler, ``SessionOptions.enable_profiling``, mean per
   run) of ort-fp32 (the graph as exported), the fully fused graph quantized (what ort-int8 was:
   ``quantize_dynamic`` after the transformer optimizer's Attention/SkipLayerNormalization
   fusions) and ort-int8 as it is now (:func:`prunekit.export.quantize_int8`);
2. int8 variants timed **interleaved** with ort-fp32 in one process (threads=2 unless told,
   batch 16 x 128, medians over the repeats): ratio = fp32 median / variant median, and the
   variant's relative difference to the fp32 graph's output on the timed batch (max abs / max |fp32|).

Results go into ``benchmarks/results/cpu_speedup.json`` (key ``int8_profile``) and the section
"Why int8 adds little on the small shapes" of ``cpu_speedup.md`` (rendered by
``cpu_speedup_report.py``); ``cpu_speedup.py`` keeps both when it regenerates its tables. In a
folder (``-o``) without a ``cpu_speedup.json`` it writes ``int8_profile.json`` instead. With the
1-minute load average above ``--max-load`` nothing is timed.

    .venv/bin/python benchmarks/int8_profile.py --originals           # the published section (~5 min on 2 cores)
    .venv/bin/python benchmarks/int8_profile.py --shapes TinyBERT-4L --repeats 3 -o /tmp/p   # a smoke run
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from cpu_speedup_report import INT8_RATIO as RATIO
from cpu_speedup_report import PROFILED, int8_section, to_markdown
from random_models import SHAPES, make_compact, make_original

from prunekit.export import CPU_FUSION, ExportSettings, drop_value_info, export_onnx, optimize_graph
from prunekit.io import atomic_write_text
from prunekit.system import system_info

ROOT = Path(__file__).resolve().parents[1]


def _quantize(src: Path, dst: Path, **kw) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kw.setdefault("weight_type", QuantType.QInt8)
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT, **kw.pop("extra_options", {})}
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), extra_options=extra, **kw)
    finally:
        logging.disable(logging.NOTSET)
    return dst


def _narrow_matmuls(path: Path, limit: int = 64) -> list[str]:
    """Weight MatMuls with a side under ``limit`` (the Q/K/V/output projections of 1-2 head layers)."""
    import onnx

    g = onnx.load(str(path)).graph
    init = {i.name: list(i.dims) for i in g.initializer}
    return [n.name for n in g.node if n.op_type == "MatMul" and n.input[1] in init and min(init[n.input[1]]) < limit]


def _strip_shapes(path: Path) -> Path:
    """Drop the stored intermediate shapes, as :func:`prunekit.export.quantize_int8` does."""
    drop_value_info(path)
    return path


def variants(model_dir: Path, work: Path, heads: list, full: bool) -> dict:
    """name -> (onnx path, session options): ort-fp32's graph, then the int8 variants."""
    from onnxruntime.quantization import QuantType

    work.mkdir(parents=True)
    raw, fused, pre = work / "fp32.onnx", work / "fused.onnx", work / "int8-fused.onnx"
    export_onnx(model_dir, raw, ExportSettings(), write_report=False)
    optimize_graph(raw, fused, heads)  # what ort-opt runs (Attention, SkipLayerNormalization, BiasGelu fused)
    out = {"fp32 (ort-fp32)": (raw, {}), "fp32 fused (ort-opt)": (fused, {}),
           "int8 on the fused graph (old ort-int8)": (_quantize(fused, work / "old.onnx"), {})}
    now = work / "int8.onnx"
    export_onnx(model_dir, now, ExportSettings(optimize=True, quantize="int8"), write_report=False)
    out["int8 now (ort-int8)"] = (now, {})
    if not full:
        return out
    optimize_graph(raw, pre, heads, fusion=CPU_FUSION)  # what quantize_int8 quantizes

    def like_now(name: str, **kw) -> tuple:
        return _strip_shapes(_quantize(pre, work / name, **kw)), {}

    partly = work / "partly-fused.onnx"
    optimize_graph(raw, partly, heads, attention=False, fusion=CPU_FUSION)
    out["int8 on the fused graph, QUInt8 weights (U8U8)"] = (_quantize(fused, work / "old-u8.onnx", weight_type=QuantType.QUInt8), {})
    out["int8 on the fused graph, Attention left fp32"] = (_quantize(fused, work / "old-mm.onnx", op_types_to_quantize=["MatMul"]), {})
    out["int8 on the unfused graph (MatMulConstBOnly)"] = (
        _quantize(raw, work / "unfused.onnx", extra_options={"MatMulConstBOnly": True}), {})
    out["int8 now, shapes kept (the session fuses SkipLayerNormalization)"] = (_quantize(pre, work / "kept.onnx"), {})
    out["int8 now, attention unfused"] = (_strip_shapes(_quantize(partly, work / "unfused-attn.onnx")), {})
    out["int8 now, attention unfused, shapes kept"] = (_quantize(partly, work / "unfused-attn-kept.onnx"), {})
    out["int8 now + per-channel weights"] = like_now("pc.onnx", per_channel=True)
    out["int8 now + reduce_range"] = like_now("rr.onnx", reduce_range=True)
    out["int8 now, QUInt8 weights (U8U8)"] = like_now("u8.onnx", weight_type=QuantType.QUInt8)
    out["int8 now, Attention left fp32"] = like_now("mm.onnx", op_types_to_quantize=["MatMul"])
    out["int8 now, MatMuls with a side < 64 fp32"] = like_now("narrow.onnx", nodes_to_exclude=_narrow_matmuls(pre))
    out["int8 now, session level EXTENDED"] = (now, {"level": "extended"})
    static = work / "static.onnx"
    export_onnx(model_dir, static, ExportSettings(quantize="int8-static"), write_report=False)
    out["int8-static (ort-int8-static)"] = (static, {})
    return out


def session(path: Path, threads: int, level: str = "all", disabled: tuple = (), profile: str = ""):
    """As :func:`prunekit.export.session` (no spinning, one inter-op thread), with the knobs varied here."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))


def op_profile(path: Path, feed: dict, threads: int, runs: int, tmp: Path) -> dict:
    """Mean kernel ms per run by op type (as onnxruntime runs the graph, after its own fusions)."""
    s = session(path, threads, profile=str(tmp / "prof"))
    for _ in range(runs):
        s.run(None, feed)
    f = s.end_profiling()
    events = json.loads(Path(f).read_text())
    Path(f).unlink()
    by, part, n, total = collections.Counter(), collections.Counter(), 0, 0.0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            by[op] += e["dur"]
            m = re.search(r"/(attn_out|up|down)/MatMul", e["name"])
            if m and op in ("MatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
                part["output and FFN products"] += e["dur"]
            elif op in ("QAttention", "Attention", "FusedMatMul", "Softmax", "Transpose") or (op == "MatMul" and not m):
                part["attention (Q/K/V, scores, softmax, context)"] += e["dur"]
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            n, total = n + 1, total + e["dur"]
    n = max(n, 1)
    return {"run_ms": total / n / 1e3, "ops_ms": {k: v / n / 1e3 for k, v in by.most_common()},
            "parts_ms": {k: v / n / 1e3 for k, v in part.items()}}


def time_interleaved(paths: dict, feed: dict, threads: int, repeats: int, warmup: int) -> dict:
    sessions = {k: session(p, threads, opt.get("level", "all"), tuple(opt.get("disabled", ()))) for k, (p, opt) in paths.items()}
    times: dict = {k: [] for k in sessions}
    for _ in range(warmup):
        for s in sessions.values():
            s.run(None, feed)
    for _ in range(repeats):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t0)
    ref = sessions["fp32 (ort-fp32)"].run(None, feed)[0]
    out = {}
    for k, s in sessions.items():
        y = s.run(None, feed)[0]
        out[k] = {"median_ms": 1e3 * statistics.median(times[k]), "min_ms": 1e3 * min(times[k]),
                  "rel_diff_vs_fp32": float(np.abs(y - ref).max() / np.abs(ref).max())}
    base = out["fp32 (ort-fp32)"]["median_ms"]
    for v in out.values():
        v["x_over_fp32"] = base / v["median_ms"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--variants-on", nargs="*", default=["TinyBERT-4L", "MiniLM-L6"],
                    help="shapes that get every variant and the profile (the others: old vs new int8)")
    ap.add_argument("--originals", action="store_true", help="time the originals too (old vs new int8)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile-runs", type=int, default=10)
    ap.add_argument("--max-load", type=float, default=1.2)
    ap.add_argument("--ignore-load", action="store_true")
    ap.add_argument("-o", "--out-dir", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    import onnxruntime as ort

    load = os.getloadavg()[0]
    if load > a.max_load and not a.ignore_load:
        sys.exit(f"1-minute load average {load:.2f} > {a.max_load}: rerun when the machine is quiet (or --ignore-load)")
    p = {"date": time.strftime("%Y-%m-%d %H:%M"), "onnxruntime": ort.__version__, "threads": a.threads, "batch": a.batch,
         "seq_len": a.seq_len, "repeats": a.repeats, "cpu": system_info("cpu")["cpu"]["model"], "profiles": {}, "timing": {},
         "load_average": {"start": round(load, 2)}}
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(5, 16, (a.batch, a.seq_len)).astype(np.int64),
            "attention_mask": np.ones((a.batch, a.seq_len), np.int64), "token_type_ids": np.zeros((a.batch, a.seq_len), np.int64)}
    with tempfile.TemporaryDirectory(prefix="int8-profile-") as tmp:
        tmp = Path(tmp)
        for si, name in enumerate(SHAPES):
            if name not in a.shapes:
                continue
            orig = make_original(tmp / name, SHAPES[name], seed=si)
            d = tmp / f"{name}-{RATIO}"
            arch = make_compact(orig, d, RATIO, a.seq_len, seed=100 * si + int(100 * RATIO))
            models = [(f"{name} compact {RATIO}", d, arch["heads"])] + ([(f"{name} original", orig, [SHAPES[name][2]] * SHAPES[name][0])] if a.originals else [])
            for label, model_dir, heads in models:
                full = name in a.variants_on and "compact" in label
                paths = variants(model_dir, tmp / f"{label}-onnx".replace(" ", "_"), heads, full)
                if full:
                    p["profiles"][label] = {k: op_profile(paths[k][0], feed, a.threads, a.profile_runs, tmp) for k in PROFILED}
                print(f"{label}: timing {len(paths)} graphs (load {os.getloadavg()[0]:.2f})", flush=True)
                p["timing"][label] = time_interleaved(paths, feed, a.threads, a.repeats, a.warmup)
                for k, v in p["timing"][label].items():
                    print(f"  {k:50s} {v['median_ms']:8.1f} ms {v['x_over_fp32']:5.2f}x rel {v['rel_diff_vs_fp32']:.3f}", flush=True)
    p["load_average"]["end"] = round(os.getloadavg()[0], 2)
    out = Path(a.out_dir)
    res_path = out / "cpu_speedup.json"
    res = json.loads(res_path.read_text()) if res_path.is_file() else None
    if res is None:
        atomic_write_text(out / "int8_profile.json", json.dumps(p, indent=2) + "\n")
        print(int8_section(p))
        return
    res["int8_profile"] = p
    atomic_write_text(res_path, json.dumps(res, indent=2) + "\n")
    atomic_write_text(out / "cpu_speedup.md", to_markdown(res))
    print(int8_section(p))


if __name__ == "__main__":
    main()
