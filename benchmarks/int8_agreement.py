"""Dynamic int8 per tensor vs per channel: how many test predictions each keeps from fp32.

The `ort-int8` runner (the graph `prunekit eval --backend ort-int8` scores) built twice, with
onnxruntime's `quantize_dynamic` per tensor and per channel, against `ort-fp32`, on the word-order
task's test sentences (`benchmarks/distill_recovery.py` leaves the models and data in `--runs`;
run it first on a fresh checkout). Writes ``benchmarks/results/int8_agreement.md`` (``-o``) and
prints its table:

    .venv/bin/python benchmarks/int8_agreement.py     # ~2 min on 2 cores
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/bench-distill")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", default=str(ROOT / "benchmarks" / "results" / "int8_agreement.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import onnxruntime.quantization as Q
    from onnxruntime import __version__ as ort_version
    from transformers import AutoTokenizer

    from prunekit.backends import build_runner
    from prunekit.batching import encode
    from prunekit.data import load_data
    from prunekit.io import atomic_write_text
    from prunekit.loading import load_model_dir
    from prunekit.scoring import predict_with

    runs = Path(args.runs)
    ds = load_data(runs / "data" / "test.jsonl")
    data = encode(ds, AutoTokenizer.from_pretrained(str(runs / "teacher")), 128)
    y = torch.tensor(ds.labels)
    real = Q.quantize_dynamic
    table = ["| model | weights | accuracy | same prediction as fp32 | max logit difference |", "|---|---|---|---|---|"]
    print("\n".join(table), flush=True)
    for name in ("teacher", "search-distilled"):
        lm = load_model_dir(runs / name)
        outs = {}
        for variant, per_channel in (("fp32", None), ("per tensor", False), ("per channel", True)):
            def quantize(*a, **kw):
                return real(*a, **{**kw, "per_channel": per_channel})

            Q.quantize_dynamic = quantize  # export.quantize_int8 imports it at call time
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    backend = "ort-fp32" if per_channel is None else "ort-int8"
                    outs[variant] = predict_with(build_runner(lm, name, backend, "cpu", args.threads, Path(tmp)).run, data, "cpu", 64)
            finally:
                Q.quantize_dynamic = real
        ref = outs["fp32"].argmax(-1)
        for variant, out in outs.items():
            pred = out.argmax(-1)
            table.append(f"| {name} | {variant} | {(pred == y).float().mean():.4f} | {(pred == ref).float().mean():.1%} | "
                         f"{(out - outs['fp32']).abs().max():.3f} |")
            print(table[-1], flush=True)
    md = [f"# Dynamic int8 per tensor vs per channel (word-order test set, {len(ds):,} sentences)", "",
          f"`python benchmarks/int8_agreement.py` ({time.strftime('%Y-%m-%d')}, onnxruntime {ort_version}, "
          f"{args.threads} threads): the `ort-int8` graph with onnxruntime's `quantize_dynamic` per tensor and per channel, "
          "against `ort-fp32`.", "", *table]
    atomic_write_text(Path(args.out), "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
