"""Study-style CPU tables: FLOPs breakdown of the shapes, and measured speedup against FLOPs ratio.

For TinyBERT-4L, MiniLM-L6, TinyBERT-6L and BERT-base shapes (random weights, embedding models):

1. FLOPs per sequence of 128 tokens by component (analytic model of ``prunekit.flops``);
2. for FLOPs ratios 1.0, 0.5, 0.3, 0.2: a random-priority architecture cut to that budget
   (``select_to_budget``), compacted, and timed side by side with the original by ``prunekit.bench``
   (interleaved, batch 16 x 128 tokens) in torch (SDPA) and onnxruntime fp32 (optionally int8).

Writes ``benchmarks/results/cpu_speedup.{json,md}`` with the CPU, its ISA, threads, versions and the
load average before and after. Timing on a shared machine is only meaningful when it is quiet: with
the 1-minute load average above ``--max-load`` the script writes the FLOPs tables only and says so
(``--ignore-load`` to time anyway, marked as such).

    .venv/bin/python benchmarks/cpu_speedup.py                 # full run (~10-20 min on 2 cores)
    .venv/bin/python benchmarks/cpu_speedup.py --quick -o /tmp/q   # tiny shapes, seconds (a smoke test)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prunekit.architecture import Architecture  # noqa: E402
from prunekit.bench import BenchSettings, bench  # noqa: E402
from prunekit.system import cpu_info, system_info  # noqa: E402
from prunekit.compact import compact  # noqa: E402
from prunekit.flops import ModelShape, model_flops  # noqa: E402
from prunekit.io import atomic_write_text  # noqa: E402
from prunekit.models import load_teacher  # noqa: E402
from prunekit.selection import select_to_budget  # noqa: E402

SHAPES = {  # layers, hidden, heads, FFN
    "TinyBERT-4L": (4, 312, 12, 1200),
    "MiniLM-L6": (6, 384, 12, 1536),
    "TinyBERT-6L": (6, 768, 12, 3072),
    "BERT-base": (12, 768, 12, 3072),
}
QUICK_SHAPES = {"tiny-4L": (4, 48, 4, 96), "tiny-12L": (12, 32, 4, 64)}
RATIOS = (1.0, 0.5, 0.3, 0.2)
WORDS = "the a model small fast slow river stone light dark green".split()


def make_original(path: Path, dims: tuple, seed: int) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    layers, hidden, heads, ffn = dims
    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn,
                        architectures=["BertModel"])
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    return path


def make_compact(original: Path, out: Path, ratio: float, seq_len: int, seed: int) -> dict:
    teacher = load_teacher(str(original))
    s = teacher.shape
    g = torch.Generator().manual_seed(seed)
    arch: Architecture = select_to_budget(torch.rand(s.num_layers, s.num_heads, generator=g),
                                          torch.rand(s.num_layers, s.intermediate_size, generator=g), s, seq_len, ratio)
    compact(teacher, arch).save_pretrained(out)
    teacher.tokenizer.save_pretrained(out)
    return {"target": ratio, "achieved": arch.flops_ratio(s, seq_len), "heads": arch.head_counts, "ffn": arch.ffn_widths}


def flops_breakdown(shapes: dict, seq_len: int) -> list:
    rows = []
    for name, (layers, hidden, heads, ffn) in shapes.items():
        shape = ModelShape(layers, hidden, heads, hidden // heads, ffn, 0)
        f = model_flops(shape, seq_len)
        rows.append({"shape": name, "layers": layers, "hidden": hidden, "heads": heads, "head_dim": hidden // heads,
                     "ffn": ffn, "total": f.total, **{f"flops_{k}": f.by_component[k] for k in ("qkv", "attention", "output", "ffn")}})
    return rows


def to_markdown(res: dict) -> str:
    cpu = res["system"]["cpu"]
    isa = ", ".join(k for k, v in cpu["isa"].items() if v)
    out = [f"# CPU speedup vs FLOPs ratio ({res['seq_len']} tokens)", "",
           f"CPU: {cpu['model']} [{isa}], {res['threads']} threads; torch {res['system']['torch']}, onnxruntime "
           f"{res['system']['onnxruntime']}, transformers {res['system']['transformers']}; {res['date']}.", "",
           "## FLOPs per sequence (analytic, matrix products; a multiply-accumulate = 2)", "",
           "| shape | layers x hidden, heads x dim, FFN | total GFLOPs | QKV | attention | output | FFN |", "|---|---|---|---|---|---|---|"]
    for r in res["flops"]:
        t = r["total"]
        out.append(f"| {r['shape']} | {r['layers']} x {r['hidden']}, {r['heads']} x {r['head_dim']}, {r['ffn']} | {t / 1e9:.2f} | "
                   + " | ".join(f"{r['flops_' + k] / t:.1%}" for k in ("qkv", "attention", "output", "ffn")) + " |")
    out += [""]
    if not res.get("speed"):
        out += [f"Speed: not measured — {res['speed_note']}"]
        return "\n".join(out) + "\n" + _int8_section(res)
    out += [f"## Measured speedup, batch {res['batch']} x {res['seq_len']} tokens, random weights, random-priority architectures",
            "", f"Load average before/after: {res['load_average']}. {res.get('speed_note', '')}", "",
            "| shape | model (FLOPs ratio achieved) | backend | sentences/s | speedup | FLOPs speedup | measured / FLOPs |",
            "|---|---|---|---|---|---|---|"]
    for r in res["speed"]:
        out.append(f"| {r['shape']} | {'original' if r['original'] else 'compact %.2f' % r['ratio']} | {r['backend']} | {r['sentences_per_s']:.1f} | {r['speedup']:.2f} | "
                   f"{r['flops_speedup']:.2f} | {r['speedup_over_flops_speedup']:.2f} |")
    return "\n".join(out + _int8_over_fp32(res)) + "\n" + _int8_section(res)


def _int8_over_fp32(res: dict) -> list[str]:
    """ort-int8 over ort-fp32 per model (sentences/s ratio, same run), when both were timed."""
    speed = {(r["shape"], r["model"], r["backend"]): r for r in res["speed"]}
    rows = [(r, speed.get((r["shape"], r["model"], "ort-int8"))) for r in res["speed"] if r["backend"] == "ort-fp32"]
    rows = [(f, q) for f, q in rows if q]
    if not rows:
        return []
    out = ["", "### int8 over fp32 (onnxruntime, same run)", "", "| shape | model | ort-int8 / ort-fp32 |", "|---|---|---|"]
    for f, q in rows:
        out.append(f"| {f['shape']} | {'original' if f['original'] else 'compact %.2f' % f['ratio']} | "
                   f"{q['sentences_per_s'] / f['sentences_per_s']:.2f}x |")
    return out


def _int8_section(res: dict) -> str:
    """benchmarks/int8_profile.py's section, when its results are in the JSON."""
    if not res.get("int8_profile"):
        return ""
    from int8_profile import section

    return "\n" + section(res["int8_profile"])


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
