"""The markdown of ``benchmarks/results/cpu_speedup.md`` (a module, not a script: it writes nothing).

Two scripts write that file from ``cpu_speedup.json``: ``cpu_speedup.py`` (the FLOPs and speedup
tables) and ``int8_profile.py`` (its section "Why int8 adds little on the small shapes", under the
JSON's key ``int8_profile``); each keeps the other's part. Both render it with :func:`to_markdown`,
defined here once, so neither script imports the other.
"""
from __future__ import annotations

INT8_RATIO = 0.3  # int8_profile.py's compact models: this share of the FLOPs
PROFILED = ("fp32 (ort-fp32)", "int8 on the fused graph (old ort-int8)", "int8 now (ort-int8)")  # its op profiles


def _model_label(row: dict) -> str:
    return "original" if row["original"] else f"compact {row['ratio']:.2f}"


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
        out.append(f"| {r['shape']} | {_model_label(r)} | {r['backend']} | {r['sentences_per_s']:.1f} | {r['speedup']:.2f} | "
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
        out.append(f"| {f['shape']} | {_model_label(f)} | "
                   f"{q['sentences_per_s'] / f['sentences_per_s']:.2f}x |")
    return out


def _int8_section(res: dict) -> str:
    """int8_profile.py's section, when its results are in the JSON."""
    if not res.get("int8_profile"):
        return ""
    return "\n" + int8_section(res["int8_profile"])


def int8_section(p: dict) -> str:
    """The markdown section cpu_speedup.md carries."""
    out = ["## Why int8 adds little on the small shapes", "",
           f"Measured by `benchmarks/int8_profile.py` ({p['date']}, onnxruntime {p['onnxruntime']}, {p['threads']} threads, "
           f"batch {p['batch']} x {p['seq_len']}, load average {p['load_average']}). Compact models at {INT8_RATIO:.0%} of the FLOPs "
           "(random-priority architectures, as above).", "",
           "### Kernel time per op type (ms per batch, onnxruntime profiler)", ""]
    for name, prof in p["profiles"].items():
        out += [f"**{name}**", "", "| op type | " + " | ".join(prof) + " |", "|---|" + "---|" * len(prof)]
        ops = sorted({o for v in prof.values() for o in v["ops_ms"]}, key=lambda o: -max(v["ops_ms"].get(o, 0) for v in prof.values()))
        for o in ops:
            cells = [v["ops_ms"].get(o, 0.0) for v in prof.values()]
            if max(cells) >= 0.2:
                out.append(f"| {o} | " + " | ".join(f"{c:.1f}" if c else "" for c in cells) + " |")
        out += ["| **whole run** | " + " | ".join(f"**{v['run_ms']:.1f}**" for v in prof.values()) + " |", ""]
    out += ["### Variants, timed interleaved with ort-fp32 (medians; ratio = fp32 / variant)", "",
            "Relative difference: max |variant - fp32| / max |fp32| on the timed batch (the export's own int8 check "
            "compares with PyTorch on padded inputs).", ""]
    names = list(p["timing"])
    rows = list(dict.fromkeys(k for t in p["timing"].values() for k in t))
    out += ["| variant | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        cells = []
        for n in names:
            v = p["timing"][n].get(r)
            cells.append(f"{v['x_over_fp32']:.2f}x ({v['median_ms']:.0f} ms, {v['rel_diff_vs_fp32']:.1%})" if v else "")
        out.append(f"| {r} | " + " | ".join(cells) + " |")
    out += ["", *_int8_summary(p)]
    return "\n".join(out) + "\n"


def _int8_summary(p: dict) -> list[str]:
    """What the profile says, in numbers (the reasons are in WHY)."""
    lines = []
    for name, prof in p["profiles"].items():
        fp32, old, now = (prof[k] for k in PROFILED)

        def share(v, op):
            return v["ops_ms"].get(op, 0.0) / max(sum(v["ops_ms"].values()), 1e-9)

        def part(v, k):
            return v["parts_ms"].get(k, 0.0)

        ffn, att = "output and FFN products", "attention (Q/K/V, scores, softmax, context)"
        rest32 = sum(fp32["ops_ms"].values()) - part(fp32, ffn) - part(fp32, att)
        rest8 = sum(now["ops_ms"].values()) - part(now, ffn) - part(now, att)
        lines.append(f"- {name}: on the fused graph SkipLayerNormalization took {share(old, 'SkipLayerNormalization'):.0%} of the "
                     f"int8 kernel time, QAttention {share(old, 'QAttention'):.0%}, DynamicQuantizeMatMul "
                     f"{share(old, 'DynamicQuantizeMatMul'):.0%}. Now, fp32 -> int8: output and FFN products {part(fp32, ffn):.1f} -> "
                     f"{part(now, ffn):.1f} ms ({part(fp32, ffn) / max(part(now, ffn), 1e-9):.1f}x, activation quantization "
                     f"included), attention {part(fp32, att):.1f} -> {part(now, att):.1f} ms, everything else (LayerNorm, Adds, "
                     f"GELU, embeddings, quantize/dequantize) {rest32:.1f} -> {rest8:.1f} ms.")
    return lines + [""] + WHY


WHY = [
    "Why: not the narrow layers first, but the fully fused graph. onnxruntime's CPU SkipLayerNormalization (fp32) "
    "is a scalar loop per row with a division per element; measured alone on [16, 128, H] it takes 1.5 ms (H=312) "
    "and 3.6 ms (H=768) where the Add and LayerNormalization it replaces take 0.66 and 1.23 ms, and on the small "
    "shapes it was 40-47% of the int8 run (on the big ones the int8 products dominate and hid it). Leaving it out of "
    "the transformer optimizer is not enough: with the graph's stored intermediate shapes onnxruntime's session "
    "fuses the residual Add + LayerNormalization after each quantized MatMul back into SkipLayerNormalization (row "
    "\"shapes kept\"). ort-int8 now (`prunekit.export.quantize_int8`) fuses Attention per layer (reading the 2D "
    "mask), LayerNorm and BiasGelu but not SkipLayerNormalization, quantizes, and drops the stored shapes.",
    "",
    "What remains, and why TinyBERT-4L still gains least: its output and FFN products run 2.1x faster in int8 "
    "(hidden 312, FFN about 350) where MiniLM-L6's run 2.9x (384, about 500), so narrow layers do pay VNNI/AMX less "
    "(activation quantization and per-call overhead weigh more); and LayerNorm, residual Adds, GELU and the "
    "quantize steps stay fp32, now about 40% of the int8 run.",
    "",
    "The fused fp32 graph (ort-opt, and the old ort-int8) reads the padding mask as sequence lengths: on "
    "left-padded inputs its output differs from PyTorch (measured 5% of max |output| on MiniLM-L6 at 30%), where "
    "ort-fp32 and the new ort-int8 (2D mask) are exact.",
]
