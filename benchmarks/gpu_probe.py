"""Why the compact model's fixed-length speedup stops short of its FLOPs ratio on a GPU: measured.

``gpu_e2e.py`` found the BERT-base 30%-FLOPs compact model (fp16, batch 128 x 128 tokens, Triton
kernels replayed from a CUDA graph) at 2.6x the original where the FLOPs say 3.3x, and its
profile puts 22% of the compact model's GPU time in bias + residual + LayerNorm and 14% in
bias + GELU. This script measures what that claim rests on, in one short call (~1 min):

1. the device's two ceilings: a large device-to-device copy (bytes read + written per
   second) and a large fp16 matrix product (FLOP/s);
2. every kernel of one compact forward and one original forward by name (time and launches per
   forward), each memory-bound epilogue's achieved bandwidth against the copy ceiling (so
   "LayerNorm is at the memory floor" is a number, not a guess);
3. the FFN up projection with cuBLASLt's bias + GELU epilogue (``torch._addmm_activation``, the
   tanh form of GELU; the default in half precision on CUDA since this probe's first run) against
   the GEMM + prunekit's exact-GELU kernel, timed side by side under CUDA graphs with the original
   + graph as the baseline in the same run, with each one's error against the fp32 model: the
   trade (one pass less over the FFN activations; tanh GELU vs erf GELU) decided by measurement.

It builds the same random BERT-base model and 30% architecture as ``gpu_e2e.py`` (``gpu_common``,
``random_models``). Writes ``gpu_probe.{json,md}`` under ``--out``, else ``$OUT``, else
``benchmarks/results/``; the published copy is ``benchmarks/results/gpu_probe_h100.{json,md}``
(renamed after the run; the candidate's A/B numbers there were copied in from the run's log).
``--quick``: tiny shapes on the CPU, ``gpu_probe_quick.*`` (a smoke test of the script; nothing is timed).

    python benchmarks/gpu_probe.py              # on the GPU machine, from the repo root
    bash benchmarks/gpu_session.sh              # how the published files were made
    python benchmarks/gpu_probe.py --quick --out /tmp/probe   # a CPU smoke test
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from checkout_imports import use_checkout
from gpu_common import (
    T0,
    build_teacher,
    environment,
    graph_original,
    inputs,
    kernels_by_name,
    log,
    make_batch,
    model_configs,
    out_dir,
    rel_err,
    set_attn,
)
from random_models import random_arch
from timing import median_ms

REP_MS = 200  # do_bench's repeat time per measurement (its warm-up: median_ms's default 25 ms)


def kernel_table(fn, reps: int = 5) -> list[dict]:
    """Each kernel of one forward (:func:`gpu_common.kernels_by_name`), rounded for the report."""
    return [dict(kernel=r["kernel"][:110], launches=round(r["launches"], 1), us=round(r["us"], 1))
            for r in kernels_by_name(fn, reps)]


def ceilings(on_gpu: bool) -> dict:
    """Copy bandwidth (GB/s, read + write) and fp16 matmul rate (TFLOP/s), measured here."""
    dev = "cuda" if on_gpu else "cpu"
    n = (1 << 28) if on_gpu else (1 << 20)  # 512 MiB of fp16 on the GPU: far beyond its L2
    src = torch.randn(n, device=dev, dtype=torch.float16)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), rep=REP_MS, on_gpu=on_gpu)
    m = 8192 if on_gpu else 256
    a = torch.randn(m, m, device=dev, dtype=torch.float16 if on_gpu else torch.float32)
    b = torch.randn_like(a)
    mm_ms = median_ms(lambda: a @ b, rep=REP_MS, on_gpu=on_gpu)
    return dict(copy_GBps=round(2 * n * 2 / ms / 1e6, 1), copy_ms=round(ms, 4),
                matmul_TFLOPs=round(2 * m ** 3 / mm_ms / 1e9, 1), matmul_ms=round(mm_ms, 4))


def epilogue_bandwidth(pk, n_tokens: int, hidden: int, ffn: int, on_gpu: bool) -> list[dict]:
    """Achieved GB/s of prunekit's two epilogue kernels at the model's sizes (bytes each must move:
    bias+residual+LayerNorm reads x and the residual and writes the output; bias+GELU reads and
    writes the activations), against the copy ceiling."""
    dev = "cuda" if on_gpu else "cpu"
    dt = torch.float16 if on_gpu else torch.float32
    x = torch.randn(n_tokens, hidden, device=dev, dtype=dt)
    res = torch.randn_like(x)
    bias, w, b = (torch.randn(hidden, device=dev, dtype=dt) for _ in range(3))
    u = torch.randn(n_tokens, ffn, device=dev, dtype=dt)
    ub = torch.randn(ffn, device=dev, dtype=dt)
    size = x.element_size()
    out = []
    ms = median_ms(lambda: pk.bias_residual_layernorm(x, bias, res, w, b, 1e-12), rep=REP_MS, on_gpu=on_gpu)
    out.append(dict(kernel="bias_residual_layernorm", shape=f"{n_tokens}x{hidden}", ms=round(ms, 4),
                    GBps=round(3 * n_tokens * hidden * size / ms / 1e6, 1)))
    ms = median_ms(lambda: F.layer_norm(x + res + bias, (hidden,), w, b, 1e-12), rep=REP_MS, on_gpu=on_gpu)
    out.append(dict(kernel="torch add+add+layer_norm", shape=f"{n_tokens}x{hidden}", ms=round(ms, 4),
                    GBps=round(3 * n_tokens * hidden * size / ms / 1e6, 1)))
    ms = median_ms(lambda: pk.bias_gelu(u, ub), rep=REP_MS, on_gpu=on_gpu)
    out.append(dict(kernel="bias_gelu", shape=f"{n_tokens}x{ffn}", ms=round(ms, 4),
                    GBps=round(2 * n_tokens * ffn * size / ms / 1e6, 1)))
    ms = median_ms(lambda: F.gelu(u + ub), rep=REP_MS, on_gpu=on_gpu)
    out.append(dict(kernel="torch add+gelu", shape=f"{n_tokens}x{ffn}", ms=round(ms, 4),
                    GBps=round(2 * n_tokens * ffn * size / ms / 1e6, 1)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes on the CPU: a smoke test, no timings")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results = out_dir(args.out)
    results.mkdir(parents=True, exist_ok=True)
    on_gpu = torch.cuda.is_available() and not args.quick
    dev = "cuda" if on_gpu else "cpu"
    dtype = torch.float16 if on_gpu else torch.float32
    use_checkout(args.quick)
    import prunekit_kernels as pk
    from prunekit import modeling
    from prunekit.compact import compact

    cfg = model_configs(args.quick)
    name = next(iter(cfg["models"]))
    spec = cfg["models"][name]
    result = dict(environment=environment(), date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), quick=args.quick)
    try:
        result["ceilings"] = ceilings(on_gpu)
        log(f"ceilings {result['ceilings']}")
        teacher = build_teacher(name, spec, cfg, dev)
        shape = teacher.shape
        arch = random_arch(shape, cfg["seq_len"], cfg["target"], seed=0)
        compact32 = compact(teacher, arch)
        compact16 = copy.deepcopy(compact32).to(dtype)
        original16 = teacher.model.to(dtype)
        b = cfg["batches"][-1]
        fixed = make_batch(b, cfg["seq_len"], cfg["vocab"], False, dev, seed=b)
        mixed = make_batch(b, cfg["seq_len"], cfg["vocab"], True, dev, seed=b)
        n_tokens = b * cfg["seq_len"]
        ffn = round(sum(arch.ffn_widths) / len(arch.ffn_widths) / 8) * 8
        result["epilogues"] = epilogue_bandwidth(pk, n_tokens, spec["hidden_size"], ffn, on_gpu)
        log(f"epilogues {result['epilogues']}")

        if on_gpu:
            compact16.set_backend("triton")
            result["kernels_compact_triton"] = kernel_table(lambda: compact16(**inputs(fixed)))
            set_attn(original16, "sdpa")
            result["kernels_original_sdpa"] = kernel_table(lambda: original16(**inputs(fixed)))
        # the candidate: error against fp32 (the logits), then time under CUDA graphs, both regimes
        compact32.to(dev).set_backend("sdpa")
        with torch.inference_mode():
            ref = compact32(**inputs(mixed)).logits.float()
        result["batches"] = {"fixed": dict(B=b, mean_len=fixed["mean_len"]), "mixed": dict(B=b, mean_len=mixed["mean_len"])}
        if not on_gpu:  # --quick: take the epilogue branch on the CPU too, so the smoke test runs its call
            modeling._gelu_in_gemm = lambda x, exact_gelu: not exact_gelu
        variants = {}
        for label, exact in (("triton, GEMM + exact-GELU kernel (exact_gelu=True)", True),
                             ("triton default (fp16: cuBLASLt bias+GELU, tanh)", False)):
            row = dict(variant=label)
            compact16.set_backend("triton", exact_gelu=exact)  # on the CPU (--quick): the kernels interpreted
            try:
                with torch.inference_mode():
                    row["rel_err_vs_fp32"] = rel_err(compact16(**inputs(mixed)).logits.float(), ref)
                if on_gpu:
                    for regime, batch in (("fixed", fixed), ("mixed", mixed)):
                        runner = compact16.capture_cuda_graph(b, cfg["seq_len"])
                        row[f"{regime}_graph_ms"] = round(median_ms(lambda: runner(**inputs(batch)), rep=REP_MS, on_gpu=on_gpu), 4)
                        del runner
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc(limit=4)
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            variants[label] = row
            log(f"  {row}")
        if on_gpu:  # the baseline, same run: the original with a CUDA graph (gpu_e2e's capture)
            for regime, batch in (("fixed", fixed), ("mixed", mixed)):
                run, _ = graph_original(original16, inputs(batch), with_mask=regime == "mixed")
                ms = median_ms(lambda: run(**inputs(batch)), rep=REP_MS, on_gpu=on_gpu)
                for row in variants.values():
                    if f"{regime}_graph_ms" in row:
                        row[f"{regime}_x_vs_original_graph"] = round(ms / row[f"{regime}_graph_ms"], 3)
                result[f"original_sdpa_graph_{regime}_ms"] = round(ms, 4)
        result["variants"] = list(variants.values())
        failed = [v["variant"] for v in variants.values() if "error" in v]
        if failed:
            result["error"] = f"variant(s) failed: {', '.join(failed)}"
    except Exception as exc:  # noqa: BLE001 - write what was measured
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"[:400]
    result["seconds"] = round(time.time() - T0, 1)
    stem = "gpu_probe_quick" if args.quick else "gpu_probe"
    (results / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    lines = [f"# GPU probe on {result['environment']['device']}", "", f"ceilings: {result.get('ceilings')}", ""]
    for e in result.get("epilogues", []):
        share = f", {e['GBps'] / result['ceilings']['copy_GBps']:.0%} of copy" if result.get("ceilings") else ""
        lines.append(f"- {e['kernel']} {e['shape']}: {e['ms']} ms, {e['GBps']} GB/s{share}")
    for key in ("kernels_compact_triton", "kernels_original_sdpa"):
        if key in result:
            total = sum(r["us"] for r in result[key])
            lines += ["", f"## {key} ({total:.0f} us per forward)", "", "| us | launches | kernel |", "|---|---|---|"]
            lines += [f"| {r['us']} | {r['launches']} | `{r['kernel']}` |" for r in result[key][:25]]
    lines += ["", "## candidate", ""] + [f"- {json.dumps(v)}" for v in result.get("variants", [])]
    for regime in ("fixed", "mixed"):
        if f"original_sdpa_graph_{regime}_ms" in result:
            lines.append(f"- original sdpa + graph, {regime}: {result[f'original_sdpa_graph_{regime}_ms']} ms")
    if "error" in result:
        lines.append(f"\nERROR: {result['error']}")
    text = "\n".join(lines) + "\n"
    (results / f"{stem}.md").write_text(text)
    print(text, flush=True)
    print(f"RESULT: {'FAIL' if 'error' in result else 'PASS'} ({result['seconds']} s)", flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
