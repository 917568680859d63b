#!/usr/bin/env python
"""End to end on a GPU: the original model in transformers vs its compact 30%-FLOPs model per backend.

Made for one run on a lent GPU machine with its own torch/Triton/transformers, no network and
prunekit not installed:

    PYTHONUNBUFFERED=1 python benchmarks/gpu_e2e.py            # from the repo root, < 4 minutes
    bash benchmarks/gpu_session.sh                             # how the published files were made (--budget 85)

It imports ``prunekit`` and ``prunekit_kernels`` from this checkout (``checkout_imports``), then for a BERT-base-shaped classifier and a
MiniLM-L6-shaped embedding model with random weights (no downloads):

1. makes a 30%-FLOPs architecture (random priorities through ``select_to_budget``: the timing
   depends on the per-layer sizes, not on which heads are kept) and compacts the teacher;
2. checks on the GPU: the compact model (fp32, eager) against the gated teacher, and every backend
   in fp16 against the compact fp32 reference (relative error of the output and of the last hidden
   state at real tokens; Triton passes at <= 2x the error of eager fp16 + 1e-3);
3. times (``triton.testing.do_bench``, median) at batch 1/32/128, max length 128, fp16: the original
   in transformers with SDPA and eager attention, and the compact model with the eager, sdpa,
   triton-padded (the Triton kernels on the padded batch) and triton (padding-free; the default)
   backends, ``triton unaligned`` (QKV/FFN width alignment off, what the default did before), and
   both Triton backends replayed from CUDA graphs (``+graph``, prunekit's opt-in CudaGraphRunner),
   on fixed-length batches and on mixed-length ones (mean length ~1/3 of 128, one sequence at 128);
4. last, the original with SDPA replayed from a CUDA graph (what a user could do to it too), so that
   the graph variants have a fair baseline; a failed capture there cannot spoil the rest.

Every case runs in its own try/except and the timings have a time budget, so nothing is lost to one
failure. Writes ``gpu_e2e.{json,md}`` under ``--out``, else ``$OUT``, else ``benchmarks/results/``,
and prints the markdown last; the published copies are ``benchmarks/results/gpu_e2e_h100.{json,md}``
and ``gpu_e2e_h200.{json,md}``, renamed after the run with the device's name. ``--quick`` uses tiny
shapes and writes ``gpu_e2e_quick.*``; without CUDA it runs Triton under ``TRITON_INTERPRET=1`` in
fp32 and the "timings" are single wall-clock calls (a smoke test of this script only):

    python benchmarks/gpu_e2e.py --quick --out /tmp/e2e        # on a CPU, a few minutes
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
    md_table,
    model_configs,
    out_dir,
    rel_err,
    set_attn,
)
from random_models import random_arch
from timing import median_ms

HEADLINE_TARGET = 3.0  # issue 4: compact-triton >= 3x original-SDPA at batch 128, fp16
PACKING_TARGET = 1.5  # issue 4: padding-free >= 1.5x padded on a mixed batch (mean = max/3)


# ------------------------------------------------------------------------------------------------
def backend_runner(model, variant: str, batch_size: int, seq_len: int, on_gpu: bool):
    """Callable(**inputs) for a compact-model variant: '<backend>[ unaligned][+graph]'."""
    backend = variant.split()[0].split("+")[0]
    model.set_backend(backend, ffn_align=1 if "unaligned" in variant else None)
    if variant.endswith("+graph"):  # without CUDA (--quick smoke test) the runner calls the model
        return model.capture_cuda_graph(batch_size, seq_len, fallback=not on_gpu)
    return model


def check_model(name: str, teacher, arch, compact32, compact16, cfg: dict, dev: str) -> list[dict]:
    """fp32 parity with the gated teacher; every fp16 variant against the fp32 compact model."""
    from prunekit.gates import Gates
    from prunekit.models import model_output

    rows = []
    batch = inputs(make_batch(cfg["check_batch"], cfg["seq_len"], cfg["vocab"], True, dev, seed=7))
    valid = batch["attention_mask"].bool()

    def record(**kw):
        rows.append(dict(model=name, **kw))
        log(f"  check {rows[-1]}")

    try:
        gates = Gates(teacher.model, teacher.shape)
        with torch.inference_mode(), gates.active(*(m if m is None else m.to(dev) for m in arch.to_masks(teacher.shape))):
            gated = model_output(teacher.model, teacher.kind, batch).float()
        gates.remove()
        with torch.inference_mode():
            out = model_output(compact32.set_backend("eager"), teacher.kind, batch).float()
        err = rel_err(out, gated)
        record(check="compact fp32 vs gated teacher fp32", rel_err=err, max_abs=float((out - gated).abs().max()),
               status="PASS" if err < 1e-5 else "FAIL")
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc(limit=3)
        record(check="compact fp32 vs gated teacher fp32", status="ERROR", error=f"{type(exc).__name__}: {exc}"[:300])

    try:
        with torch.inference_mode():
            ref_out = model_output(compact32.set_backend("eager"), teacher.kind, batch).float()
            enc32 = compact32 if teacher.kind == "embedding" else compact32.bert
            ref_hidden = enc32(**batch).last_hidden_state.float()[valid]
    except Exception as exc:  # noqa: BLE001
        record(check="fp32 reference", status="ERROR", error=f"{type(exc).__name__}: {exc}"[:300])
        return rows
    errs = {}
    dt = str(compact16.dtype).replace("torch.", "")
    on_gpu = torch.cuda.is_available()
    b, t = batch["input_ids"].shape
    for variant in ("eager", "sdpa", "triton-padded", "triton", "triton unaligned", "triton-padded+graph", "triton+graph"):
        try:
            with torch.inference_mode():
                run = backend_runner(compact16, variant, b, t, on_gpu)
                out = model_output(run, teacher.kind, batch).float()  # a runner takes the same inputs
                hidden = None  # a graph runner of a classifier returns only the logits
                if "+graph" not in variant or teacher.kind == "embedding":
                    enc = run if teacher.kind == "embedding" else compact16.bert
                    hidden = enc(**batch).last_hidden_state.float()[valid]
            finite = bool(torch.isfinite(out).all()) and (hidden is None or bool(torch.isfinite(hidden).all()))
            errs[variant] = (rel_err(out, ref_out), None if hidden is None else rel_err(hidden, ref_hidden))
            tol = None
            status = "PASS" if finite else "FAIL"
            if variant.startswith("triton") and "eager" in errs:
                tol = (2 * errs["eager"][0] + 1e-3, 2 * errs["eager"][1] + 1e-3)
                ok = finite and errs[variant][0] <= tol[0] and (errs[variant][1] is None or errs[variant][1] <= tol[1])
                status = "PASS" if ok else "FAIL"
            record(check=f"{variant} {dt} vs compact fp32", rel_err=errs[variant][0], hidden_rel_err=errs[variant][1],
                   tol=None if tol is None else max(tol), status=status)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc(limit=3)
            record(check=f"{variant} {dt} vs compact fp32", status="ERROR", error=f"{type(exc).__name__}: {exc}"[:300])
    compact16.set_backend("eager")
    return rows


COMPACT_VARIANTS = ("eager", "sdpa", "triton-padded", "triton", "triton unaligned", "triton-padded+graph", "triton+graph")


def time_model(name: str, original16, compact16, cfg: dict, dev: str, deadline: float) -> tuple[list[dict], list]:
    """Every variant on the same batches. ``triton`` is the default backend behaviour (padding-free,
    QKV/FFN widths aligned to 8 with inert neurons on CUDA, one launch per kernel); ``unaligned``
    turns the alignment off; ``+graph`` replays a CUDA graph (CudaGraphRunner, opt-in). Returns the
    rows and the batches, for the original-with-graph phase that runs after every model."""
    rows, batches = [], []
    on_gpu = torch.cuda.is_available()
    variants = [("original sdpa", lambda b, t: set_attn(original16, "sdpa")),
                ("original eager", lambda b, t: set_attn(original16, "eager"))]
    variants += [(f"compact {v}", lambda b, t, v=v: backend_runner(compact16, v, b, t, on_gpu)) for v in COMPACT_VARIANTS]
    for batch_size in cfg["batches"]:
        for regime in ("fixed", "mixed"):
            if regime == "mixed" and batch_size == 1:
                continue  # one sentence is never padded
            batch = make_batch(batch_size, cfg["seq_len"], cfg["vocab"], regime == "mixed", dev, seed=batch_size)
            feed = inputs(batch)
            batches.append((regime, batch_size, batch))
            for label, prepare in variants:
                row = dict(model=name, regime=regime, B=batch_size, T=cfg["seq_len"], mean_len=round(batch["mean_len"], 1),
                           variant=label)
                if time.time() > deadline:
                    row.update(status="SKIP", error="time budget spent")
                else:
                    try:
                        with torch.inference_mode():
                            run = prepare(batch_size, cfg["seq_len"])
                        ms = median_ms(lambda: run(**feed), warmup=cfg["warmup"], rep=cfg["rep"])
                        row.update(ms=ms, sentences_per_s=batch_size / (ms / 1e3), status="OK")
                    except Exception as exc:  # noqa: BLE001
                        traceback.print_exc(limit=3)
                        row.update(status="ERROR", error=f"{type(exc).__name__}: {exc}"[:300])
                    run = None
                rows.append(row)
                log(f"  {row}")
    set_attn(original16, "eager")
    compact16.set_backend("eager")
    return rows, batches


def time_original_graphs(name: str, original16, kind: str, batches: list, cfg: dict, deadline: float) -> list[dict]:
    """Last of all (a capture that fails could leave the device unusable): original SDPA + graph."""
    from prunekit.models import model_output

    rows = []
    set_attn(original16, "sdpa")
    for regime, batch_size, batch in batches:
        row = dict(model=name, regime=regime, B=batch_size, T=cfg["seq_len"], mean_len=round(batch["mean_len"], 1),
                   variant="original sdpa+graph")
        if not torch.cuda.is_available():
            row.update(status="SKIP", error="no CUDA")
        elif time.time() > deadline:
            row.update(status="SKIP", error="time budget spent")
        else:
            try:
                feed = inputs(batch)
                with torch.inference_mode():
                    ref = model_output(original16, kind, feed).float()
                # A fixed-length batch needs no mask; H200 run 1 measured that unmasked capture at
                # 2.5x the plain SDPA time at B=128 (unexplained), so time both captures there and
                # keep the faster: the baseline gets its best form.
                best = None
                for with_mask in ((False, True) if regime == "fixed" else (True,)):
                    run, out = graph_original(original16, feed, with_mask)
                    with torch.inference_mode():
                        got = model_output(lambda **kw: run(**kw), kind, feed).float()
                    ms = median_ms(lambda: run(**feed), warmup=cfg["warmup"], rep=cfg["rep"])
                    row[f"ms_{'masked' if with_mask else 'unmasked'}"] = ms
                    if best is None or ms < best[0]:
                        best = (ms, rel_err(got, ref), with_mask)
                    del run, out
                    torch.cuda.empty_cache()
                ms, row["graph_rel_err"], row["graph_masked"] = best
                row.update(ms=ms, sentences_per_s=batch_size / (ms / 1e3), status="OK")
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc(limit=3)
                row.update(status="ERROR", error=f"{type(exc).__name__}: {exc}"[:300])
        rows.append(row)
        log(f"  {row}")
    return rows


KERNEL_CLASSES = (  # (class, substrings of a kernel name), first match wins
    ("attention", ("attention", "fmha", "flash", "attn")),
    ("layernorm+residual", ("layernorm", "layer_norm")),
    # before bias+gelu: a GEMM with a bias+GELU epilogue (the compact model's up projection in half
    # precision on CUDA) is a matmul
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "sm90", "sm80", "cublas", "matmul", "gemv")),  # nvjet: cuBLAS 12.8+ on Hopper
    ("bias+gelu", ("gelu",)),
    ("embedding/gather", ("embedding", "index", "gather", "scatter")),
)


def kernel_class(name: str) -> str:
    low = name.lower()
    return next((cls for cls, keys in KERNEL_CLASSES if any(k in low for k in keys)), "other (adds, copies, casts)")


def profile_forward(fn, reps: int = 5) -> dict:
    """GPU time per forward by kernel class, and kernels launched per forward."""
    by_class: dict = {}
    launches = 0
    for r in kernels_by_name(fn, reps):
        launches += r["launches"]
        cls = kernel_class(r["kernel"])
        by_class[cls] = by_class.get(cls, 0.0) + r["us"]
    total = sum(by_class.values())
    return dict(gpu_us=round(total, 1), launches_per_forward=round(launches, 1),
                share={k: round(v / total, 3) for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])} if total else {})


def profile_model(name: str, original16, compact16, batches: list, deadline: float) -> list[dict]:
    """Where the GPU time goes at the largest batch, fixed length: the original (SDPA) against the
    compact model on triton (a batch without padding: padded kernels, no mask) and sdpa. Says why a
    speedup falls short of the FLOPs ratio (work on the unpruned hidden width, launches)."""
    if not torch.cuda.is_available():
        return []
    regime, batch_size, batch = max((b for b in batches if b[0] == "fixed"), key=lambda b: b[1])
    feed = inputs(batch)
    rows = []
    for label, prepare in (("original sdpa", lambda: set_attn(original16, "sdpa")),
                           ("compact triton", lambda: compact16.set_backend("triton")),
                           ("compact sdpa", lambda: compact16.set_backend("sdpa"))):
        if time.time() > deadline:
            break
        try:
            model = prepare()
            rows.append(dict(model=name, B=batch_size, variant=label, **profile_forward(lambda: model(**feed))))
        except Exception as exc:  # noqa: BLE001 - the profiler may be unavailable on the machine
            rows.append(dict(model=name, B=batch_size, variant=label, error=f"{type(exc).__name__}: {exc}"[:200]))
        log(f"  profile {rows[-1]}")
    set_attn(original16, "eager")
    compact16.set_backend("eager")
    return rows


def add_ratios(timings: list[dict]) -> None:
    """x vs original SDPA (and vs original SDPA + graph), and padding-free vs padded, per group."""
    groups: dict = {}
    for r in timings:
        groups.setdefault((r["model"], r["regime"], r["B"]), []).append(r)
    pairs = {"compact triton": "compact triton-padded", "compact triton+graph": "compact triton-padded+graph"}
    for group in groups.values():
        ms = {r["variant"]: r.get("ms") for r in group}
        for r in group:
            if not r.get("ms"):
                continue
            if ms.get("original sdpa"):
                r["x_vs_original_sdpa"] = round(ms["original sdpa"] / r["ms"], 3)
            if ms.get("original sdpa+graph"):
                r["x_vs_original_sdpa_graph"] = round(ms["original sdpa+graph"] / r["ms"], 3)
            if r["variant"] in pairs and ms.get(pairs[r["variant"]]):
                r["x_vs_padded"] = round(ms[pairs[r["variant"]]] / r["ms"], 3)


# ------------------------------------------------------------------------------------------------
DEFAULT_NOTE = "default backend behaviour: padding-free, widths aligned to 8, no graph"


def headlines(result: dict) -> list[str]:
    lines = []
    big = max(result["config"]["batches"])
    for m in result["models"]:
        name = m["name"]
        rows = [r for r in result["timings"] if r["model"] == name and r["B"] == big]
        for regime in ("fixed", "mixed"):
            for variant, note in (("compact triton", DEFAULT_NOTE), ("compact triton+graph", "opt-in CudaGraphRunner")):
                r = next((x for x in rows if x["regime"] == regime and x["variant"] == variant), None)
                if r and r.get("x_vs_original_sdpa"):
                    x = r["x_vs_original_sdpa"]
                    verdict = "met" if x >= HEADLINE_TARGET else f"missed by {HEADLINE_TARGET / x:.2f}x"
                    g = r.get("x_vs_original_sdpa_graph")
                    fair = f"; {g:.2f}x original SDPA + graph" if g else ""
                    lines.append(f"{name}, B={big}, {regime} lengths: {variant} ({note}) = **{x:.2f}x** original SDPA "
                                 f"sentences/s (target {HEADLINE_TARGET}x: {verdict}{fair}; FLOPs ratio {m['flops_ratio']:.3f})")
        for variant in ("compact triton", "compact triton+graph"):
            r = next((x for x in rows if x["regime"] == "mixed" and x["variant"] == variant), None)
            if r and r.get("x_vs_padded"):
                x = r["x_vs_padded"]
                verdict = "met" if x >= PACKING_TARGET else f"missed by {PACKING_TARGET / x:.2f}x"
                lines.append(f"{name}, B={big}, mixed (mean length {r['mean_len']} of {r['T']}): padding-free {variant} = "
                             f"**{x:.2f}x** the same kernels padded (target {PACKING_TARGET}x: {verdict})")
    return lines


def write_report(folder: Path, stem: str, result: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    env = result["environment"]
    md = [f"# prunekit end to end on {env['device']}\n",
          f"torch {env['torch']}, triton {env['triton']}, transformers {env['transformers']}, CUDA {env['cuda']}, "
          f"python {env['python']}; {result['date']}; total {result['seconds']:.0f} s"
          + (" (quick: tiny shapes; on CPU the times are single calls, meaningless)" if result["quick"] else "") + "\n"]
    md.append("\n## Headline\n\n" + "\n".join(f"- {h}" for h in result["headlines"]) + "\n")
    md.append("\n## Models (random weights; 30%-FLOPs architecture from random priorities)\n\n")
    md.append(md_table(result["models"], ["name", "kind", "params_original", "params_compact", "flops_ratio",
                                          "heads_per_layer", "ffn_per_layer", "ffn_per_layer_aligned"]))
    md.append("\n## Correctness on the device (relative error of the output / last hidden state at real tokens)\n\n")
    md.append(md_table(result["checks"], ["model", "check", "rel_err", "hidden_rel_err", "tol", "status", "error"]))
    dt = result["dtype"].replace("torch.", "")
    md.append(f"\n## Throughput, {dt}, max length {result['config']['seq_len']} (median ms; x = speed vs original SDPA)\n\n")
    md.append("`triton` packs the real tokens (padding-free) and is the default; `triton-padded` runs the same kernels "
              "on the padded batch; on CUDA the compact sdpa/triton backends multiply with QKV/FFN widths padded to "
              "multiples of 8 by inert neurons (same outputs), `unaligned` turns that off; `+graph`: replayed from a "
              "CUDA graph (prunekit's opt-in CudaGraphRunner; for the original, a plain torch.cuda.graph capture); "
              "x_vs_padded: padding-free over padded, both with or both without a graph.\n\n")
    md.append(md_table(result["timings"], ["model", "regime", "B", "mean_len", "variant", "ms", "sentences_per_s",
                                           "x_vs_original_sdpa", "x_vs_original_sdpa_graph", "x_vs_padded", "graph_rel_err", "status"]))
    if result.get("profiles"):
        md.append("\n## Where the GPU time goes (largest batch, fixed length; torch.profiler, per forward)\n\n")
        for r in result["profiles"]:
            share = ", ".join(f"{k} {v:.0%}" for k, v in r.get("share", {}).items())
            md.append(f"- {r['model']} {r['variant']} (B={r['B']}): " + (
                f"{r['gpu_us'] / 1e3:.2f} ms of kernels, {r['launches_per_forward']:g} launches; {share}\n" if "gpu_us" in r
                else f"{r['error']}\n"))
    text = "".join(md)
    (folder / f"{stem}.md").write_text(text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes; on CPU, Triton interpreted and single-call times")
    ap.add_argument("--out", type=Path, default=None, help="output dir (default $OUT, else benchmarks/results)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the timings (default 200; 240 with --quick)")
    args = ap.parse_args()

    cfg = model_configs(args.quick)
    if args.budget is not None:
        cfg["budget"] = args.budget
    results = out_dir(args.out)
    stem = "gpu_e2e_quick" if args.quick else "gpu_e2e"
    try:
        use_checkout(args.quick)
        import prunekit_kernels  # noqa: F401 - the Triton backends need it; fail here, said in the results file
        from prunekit.compact import compact, count_params
    except Exception as exc:  # noqa: BLE001 - say why in the results file, then stop
        traceback.print_exc()
        results.mkdir(parents=True, exist_ok=True)
        (results / f"{stem}.json").write_text(json.dumps(dict(error=f"import failed: {type(exc).__name__}: {exc}",
                                                               environment=environment()), indent=1, default=str))
        print(f"RESULT: FAIL (cannot import prunekit: {type(exc).__name__}: {exc})", flush=True)
        return 1

    on_gpu = torch.cuda.is_available()
    dev = "cuda" if on_gpu else "cpu"
    dtype = torch.float16 if on_gpu else torch.float32  # the CPU interpreter has no fast fp16
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references in full precision
        torch.backends.cudnn.allow_tf32 = False
    env = environment()
    log(f"environment: {env}")
    result = dict(environment=env, date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), quick=args.quick, dtype=str(dtype),
                  config={k: v for k, v in cfg.items() if k != "models"}, models=[], checks=[], timings=[], profiles=[])
    deadline = T0 + cfg["budget"]
    originals = []  # (name, fp16 original, kind, batches) for the original-with-graph phase

    for name, spec in cfg["models"].items():
        log(f"model {name}")
        try:
            teacher = build_teacher(name, spec, cfg, dev)
            shape = teacher.shape
            arch = random_arch(shape, cfg["seq_len"], cfg["target"], seed=0)
            compact32 = compact(teacher, arch)
            info = dict(name=name, kind=teacher.kind, params_original=count_params(teacher.model),
                        params_compact=count_params(compact32), flops_ratio=arch.flops_ratio(shape, cfg["seq_len"]),
                        heads_per_layer=arch.head_counts, ffn_per_layer=arch.ffn_widths,
                        ffn_per_layer_aligned=[-(-w // 8) * 8 for w in arch.ffn_widths])
            result["models"].append(info)
            log(f"  {info}")
            compact16 = copy.deepcopy(compact32).to(dtype)
            result["checks"] += check_model(name, teacher, arch, compact32, compact16, cfg, dev)
            original16 = teacher.model.to(dtype)
            del compact32
            rows, batches = time_model(name, original16, compact16, cfg, dev, deadline)
            result["timings"] += rows
            result["profiles"] += profile_model(name, original16, compact16, batches, deadline + 10)
            originals.append((name, original16, teacher.kind, batches))
            del compact16, teacher
            if on_gpu:
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001 - the other model still runs
            traceback.print_exc()
            result["checks"].append(dict(model=name, check="setup", status="ERROR", error=f"{type(exc).__name__}: {exc}"[:300]))

    for name, original16, kind, batches in originals:
        log(f"original + CUDA graph: {name}")
        try:
            result["timings"] += time_original_graphs(name, original16, kind, batches, cfg, deadline + 25)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
    originals.clear()

    add_ratios(result["timings"])
    result["timings"].sort(key=lambda r: (list(cfg["models"]).index(r["model"]), r["B"], r["regime"] != "fixed"))
    result["headlines"] = headlines(result)
    result["seconds"] = time.time() - T0
    text = write_report(results, stem, result)
    log(f"wrote {results / (stem + '.json')} and {stem}.md")
    n_bad = sum(c["status"] in ("FAIL", "ERROR") for c in result["checks"])
    print()
    print(text, flush=True)
    print(f"RESULT: {'FAIL' if n_bad else 'PASS'} ({len(result['checks'])} checks, {n_bad} failed or errored)", flush=True)
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
