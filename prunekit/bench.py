"""Side-by-side speed of the original and compact models: FLOPs, size, latency, sentences/sec.

``bench(settings)`` loads every model (the first is the reference, normally the original), builds
each backend that runs on the device, and times them **interleaved**: after warm-up, each repeat
runs every (model, backend) once in turn, so a load change on a shared machine hits all of them
alike. Per row: FLOPs per sequence (analytic, and fvcore's count of the matrix products doubled),
parameters, size on disk of what runs, latency median and p90 per batch, sentences/sec, speedup
over the first model on the same backend (paired: the median over the repeats of the two times'
ratio in the same repeat, :mod:`prunekit.timing`, so a drift of the machine's speed cancels; a compact-only backend, such as the padding-free
``torch-bf16-packed`` or ``triton-fp16``: over the original in PyTorch's attention at the same
dtype, with graphs for a graphed one; ``backends.COUNTERPART``), and that speedup divided by the
FLOPs speedup.

Backends (:mod:`prunekit.backends`, shared with ``prunekit eval``): by default every one that runs
on the device — on the CPU torch fp32 (eager, SDPA) and bf16, ``torch.compile`` fp32 and bf16,
onnxruntime fp32, fused (per-layer Attention), dynamic int8 and static int8 (calibrated on
``calibration``, the ``real_lengths`` data or the shipped corpus); on CUDA fp32 SDPA, fp16 PyTorch
with and without CUDA graphs, ``torch.compile`` fp16, the compact model's Triton kernels in fp16
with and without graphs, and onnxruntime's CUDA provider in fp32 and fp16. ONNX files are exported on the fly into a temp dir
(and validated, see :mod:`prunekit.export`); onnxruntime gets the same thread count as torch and
its idle threads do not spin, so they leave the cores to torch between interleaved runs. The last
lines compare each compact model's fastest backend with the original's fastest ("best compact vs
best original"): the comparison a user makes.

Modes: fixed length (``batch`` x ``seq_len`` tokens, what the study reports) or real lengths: the
sentences of a data file, tokenized, cut to ``seq_len``, batched in order and padded to each
batch's longest (one timed repeat = all batches).
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .backends import COMPACT_ONLY, COUNTERPART, CPU_BACKENDS, Runner, build_runner, check_backend, unavailable
from .errors import PrunekitError
from .flops import ModelShape, model_flops
from .io import atomic_output_dir, atomic_write_bytes, read_json, rescue
from .loading import LoadedModel, load_model_dir
from .system import system_info
from .timing import paired_ratio

log = logging.getLogger(__name__)

# Every backend that can run on the device (prunekit.backends: torch fp32/bf16, torch.compile fp32/bf16,
# onnxruntime fp32 / fused / dynamic and static int8); the timing is best-against-best.
# On CUDA: fp32 SDPA as the reference point, then fp16 (what GPUs serve in): PyTorch, PyTorch from CUDA
# graphs (the fair baseline for the graphed Triton path), torch.compile, the compact model's Triton
# kernels with and without graphs, onnxruntime's CUDA provider in fp32 and fp16.
DEFAULT_BACKENDS = {"cpu": CPU_BACKENDS,
                    "cuda": ("torch-sdpa", "torch-fp16", "torch-fp16-graph", "compile-fp16", "triton-fp16",
                             "triton-fp16-graph", "ort-cuda", "ort-cuda-fp16")}


@dataclass
class BenchSettings:
    """``prunekit bench`` options (saved in the results JSON)."""

    models: list = field(default_factory=list)  # model dirs; the first is the reference (the original)
    device: str = "cpu"
    backends: list | None = None  # None: DEFAULT_BACKENDS[device]
    batch: int = 16
    seq_len: int = 128
    real_lengths: str | None = None  # a data file (or GLUE task): time its sentences' real lengths
    num_batches: int = 4  # real-length mode: batches of the data timed per repeat
    repeats: int = 10
    warmup: int = 2
    threads: int | None = None  # None: torch's default (the cores)
    calibration: str | None = None  # ort-int8-static's data; None: real_lengths' data, else the shipped corpus
    fvcore: bool = True
    seed: int = 0


# ------------------------------------------------------------------------------------------------
# Backends (the runners themselves are prunekit.backends', shared with eval)
# ------------------------------------------------------------------------------------------------
def _check_backends(s: BenchSettings, notes: list) -> list:
    """The backends to time: those asked for (names checked), or every one this machine has.
    One that cannot run here is left out with a one-line note."""
    kind = torch.device(s.device).type  # cuda:1 -> cuda for the checks; the models go to s.device itself
    asked = list(s.backends or DEFAULT_BACKENDS[kind])
    for b in asked:
        check_backend(b, kind)
    out = []
    for b in asked:
        why = unavailable(b, kind)
        if why:
            notes.append(f"{b}: skipped ({why})")
        else:
            out.append(b)
    return out


def _build(lm: LoadedModel, name: str, backend: str, s: BenchSettings, workdir: Path, batch: dict,
           notes: list) -> Runner | None:
    try:
        r = build_runner(lm, name, backend, s.device, s.threads, workdir, s.calibration or s.real_lengths)
    except PrunekitError as e:  # this backend cannot take this model: say so, time the rest
        notes.append(f"{name} {backend}: skipped ({e})")
        return None
    if r is None:
        return None
    notes.extend(r.notes)
    # One untimed run now, whatever --warmup says: it compiles (torch.compile; Triton's kernels and
    # launcher) and shows a backend that cannot run here after all. Such a failure is not the
    # user's: report it and time the rest.
    try:
        r.run(batch)
    except Exception as e:  # noqa: BLE001
        what = "torch.compile failed" if backend.startswith("compile-") else "its first run failed"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        notes.append(f"{name} {backend}: skipped ({what}: {first})")
        return None
    return r


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def _batches(s: BenchSettings, loaded: list[LoadedModel], device: str) -> list[dict]:
    first = loaded[0]
    cfg = first.config
    max_len = min(c.max_position_embeddings - (c.pad_token_id + 1 if c.position_style == "roberta" else 0) for c in (m.config for m in loaded))
    if s.seq_len < 1 or s.seq_len > max_len:
        raise PrunekitError(f"--seq-len {s.seq_len}: the model takes 1..{max_len} tokens")
    g = torch.Generator().manual_seed(s.seed)
    lo = 5 if cfg.vocab_size > 10 else 0

    def make(lengths):
        t = max(lengths)
        ids = torch.randint(lo, cfg.vocab_size, (len(lengths), t), generator=g)
        ids[ids == cfg.pad_token_id] = lo + 1
        mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).long()
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, cfg.pad_token_id))
        return {k: v.to(device) for k, v in
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}.items()}

    if s.real_lengths is None:
        return [make([s.seq_len] * s.batch)]
    from .data import load_data

    if first.tokenizer is None:
        raise PrunekitError(f"--real-lengths needs a tokenizer, and {first.path} has none")
    data = load_data(s.real_lengths, max_examples=s.batch * s.num_batches)
    enc = first.tokenizer(data.texts, data.pairs, truncation=True, max_length=s.seq_len) if data.pairs else \
        first.tokenizer(data.texts, truncation=True, max_length=s.seq_len)
    lengths = [len(x) for x in enc["input_ids"]]
    return [make(lengths[i:i + s.batch]) for i in range(0, len(lengths), s.batch)]


# ------------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------------
def _flops(loaded: LoadedModel, batches: list[dict], fvcore: bool, notes: list, name: str) -> dict:
    cfg = loaded.config
    shape = ModelShape.from_config(cfg, 0 if loaded.kind == "embedding" else None)  # the original's
    heads, ffn = cfg.num_heads_per_layer, cfg.intermediate_sizes
    # Per sequence at the padded length actually run (the work every backend here does), in the
    # model's own hidden width (narrower than the original's where search --prune-hidden cut it).
    lens = [b["input_ids"].shape[1] for b in batches for _ in range(b["input_ids"].shape[0])]
    analytic = sum(model_flops(shape, t, heads, ffn, cfg.hidden_size).total for t in lens) / len(lens)
    out = {"analytic": analytic, "fvcore": None}
    if fvcore:
        from .compact import fvcore_flops

        t = batches[0]["input_ids"].shape[1]
        try:
            out["fvcore"] = fvcore_flops(loaded.compact_view, loaded.kind, t, cfg.vocab_size)["matmul"]
            out["fvcore_seq_len"] = t
        except Exception as e:  # noqa: BLE001 - fvcore's tracer is not ours to fix; the analytic count stands
            notes.append(f"{name}: fvcore could not count ({str(e).splitlines()[0][:120]})")
    return out


def _checked(s: BenchSettings) -> BenchSettings:
    """The settings checked (one line each), with the device resolved once ("auto" -> cpu or cuda)."""
    from .distributed import resolve_device

    if not s.models:
        raise PrunekitError("give at least one model dir (the original first, then compact ones)")
    for name in ("batch", "repeats", "num_batches"):
        if getattr(s, name) < 1:
            raise PrunekitError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(s, name)}")
    if s.warmup < 0:
        raise PrunekitError(f"--warmup must be >= 0, got {s.warmup}")
    s = replace(s, device=str(resolve_device(s.device)))
    if s.threads is not None and s.threads < 1:
        raise PrunekitError(f"--threads must be >= 1, got {s.threads}")
    return s


def _time(s: BenchSettings, backends: list, names: list, loaded: list, batches: list, notes: list) -> list:
    """Every runner that can run here, warmed up, then timed over ``s.repeats`` repeats interleaved
    (every runner once per repeat, so a change in the machine's load reaches them all alike)."""
    with tempfile.TemporaryDirectory(prefix="prunekit-bench-") as tmp:  # the runners' exported files
        runners = []
        for backend in backends:
            for name, lm in zip(names, loaded):
                r = _build(lm, name, backend, s, Path(tmp), batches[0], notes)
                if r is not None:
                    runners.append(r)
        if not runners:
            only = [b for b in backends if b in COMPACT_ONLY]
            why = "; ".join(notes + ([f"{', '.join(only)} run(s) compact models only"] if only else [])) or ", ".join(backends)
            raise PrunekitError(f"no backend could run these models ({why}); choose others with --backend "
                                f"(`prunekit bench --help` lists them)")
        for _ in range(s.warmup):
            for r in runners:
                for b in batches:
                    r.run(b)
        warm = [r.captures() if r.captures else 0 for r in runners]
        for _ in range(s.repeats):  # interleaved: every runner once per repeat
            for r in runners:
                t0 = time.perf_counter()
                for b in batches:
                    r.run(b)
                r.times.append(time.perf_counter() - t0)
        for r, before in zip(runners, warm):
            if r.captures and r.captures() > before:
                notes.append(f"{r.model} {r.backend}: {r.captures() - before} CUDA graph capture(s) inside the timed repeats "
                             "(a batch shape the warm-up did not run): its times include them; use --warmup 1 or more")
    return runners


def _rows(runners: list, models_info: list, names: list, num_batches: int, sentences: int, notes: list) -> list:
    """One row per runner: latency, throughput, size, FLOPs, and the speedup over the first model on
    the same backend (a compact-only backend against its counterpart), and over its FLOPs speedup."""
    rows = []
    by_name = {m["name"]: m for m in models_info}
    for r in runners:
        med = statistics.median(r.times)
        m = by_name[r.model]
        rows.append({"model": r.model, "backend": r.backend, "dtype": r.dtype, "latency_median_ms": 1e3 * med / num_batches,
                     "latency_p90_ms": 1e3 * float(np.percentile(r.times, 90)) / num_batches,
                     "sentences_per_s": sentences / med, "size_bytes": r.size_bytes, "params": m["params"],
                     "flops_analytic": m["flops"]["analytic"], "flops_fvcore": m["flops"]["fvcore"]})
    notes.extend(noise_notes(rows))
    first = names[0]
    times = {(r.model, r.backend): r.times for r in runners}
    for row in rows:
        like = COUNTERPART.get(row["backend"], row["backend"])
        base = next((x for x in rows if x["model"] == first and x["backend"] == like), None)
        # paired over the interleaved repeats: the machine's drift between repeats cancels
        row["speedup"] = 1.0 / paired_ratio(times[row["model"], row["backend"]], times[first, like]) if base else None
        # a model with no heads nor FFN left has no matrix-product FLOPs: no FLOPs speedup to state
        row["flops_speedup"] = by_name[first]["flops"]["analytic"] / row["flops_analytic"] if row["flops_analytic"] else None
        row["speedup_over_flops_speedup"] = row["speedup"] / row["flops_speedup"] if row["speedup"] and row["flops_speedup"] else None
    return rows


def bench(s: BenchSettings) -> dict:
    """Run the benchmark; returns the results dict (see :func:`format_table` for the rows)."""
    s = _checked(s)
    notes: list = []
    backends = _check_backends(s, notes)
    if s.threads:
        torch.set_num_threads(s.threads)
    device = s.device
    names = _unique_names(s.models)
    loaded = [load_model_dir(m) for m in s.models]
    late = next((n for n, lm in zip(names[1:], loaded[1:]) if not lm.is_compact), None)
    if loaded[0].is_compact and late is not None:  # speedups are over the first model: the original goes first
        raise PrunekitError(f"give the original model first: {s.models[0]} is a compact model, {late} an original")
    vocab = {lm.config.vocab_size for lm in loaded}
    if len(vocab) > 1:
        raise PrunekitError(f"the models have different vocabularies ({sorted(vocab)}): compare models of one base model")
    batches = _batches(s, loaded, device)
    sentences = sum(b["input_ids"].shape[0] for b in batches)
    models_info = []
    for name, lm in zip(names, loaded):
        models_info.append({"name": name, "path": str(lm.path), "compact": lm.is_compact, "kind": lm.kind,
                            "params": sum(p.numel() for p in lm.compact_view.parameters()),
                            "heads_per_layer": list(lm.config.num_heads_per_layer),
                            "ffn_per_layer": list(lm.config.intermediate_sizes),
                            "flops": _flops(lm, batches, s.fvcore, notes, name)})
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    runners = _time(s, backends, names, loaded, batches, notes)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    rows = _rows(runners, models_info, names, len(batches), sentences, notes)
    return {"settings": asdict(s), "system": system_info(device), "threads": torch.get_num_threads(),
            "load_average": {"start": load_start, "end": load_end}, "mode": "real-lengths" if s.real_lengths else "fixed",
            "batches": [list(b["input_ids"].shape) for b in batches], "sentences_per_repeat": sentences,
            "models": models_info, "rows": rows, "best": best_vs_best(rows, names),
            "latency_targets": latency_targets(rows, loaded, names, batches), "notes": notes}


def latency_targets(rows: list, loaded: list, names: list, batches: list) -> list:
    """For each model searched with ``--cost latency``: the latency ratio its search predicted on its
    backend beside the one measured here (compact over the first model, on that backend), and whether
    this bench ran at the batch and length the latency was profiled at."""
    out = []
    for name, lm in zip(names[1:], loaded[1:]):
        path = Path(lm.path) / "architecture.json" if Path(lm.path).is_dir() else None
        meta = read_json(path, "architecture file", "compact the model again") if path is not None and path.is_file() else {}
        if not isinstance(meta, dict) or meta.get("cost") != "latency":
            continue
        model = meta.get("latency_model") or {}
        backend = model.get("backend")
        mine = next((r for r in rows if r["model"] == name and r["backend"] == backend), None)
        measured = 1.0 / mine["speedup"] if mine and mine.get("speedup") else None
        predicted = meta.get("predicted_latency_ratio")
        shape = list(batches[0]["input_ids"].shape)
        out.append({"model": name, "backend": backend, "predicted_ratio": predicted, "measured_ratio": measured,
                    "error": None if measured is None or not predicted else measured / predicted - 1.0,
                    "profiled_at": [model.get("batch"), model.get("seq_len")], "benched_at": shape,
                    "same_shape": len(batches) == 1 and shape == [model.get("batch"), model.get("seq_len")]})
    return out


def format_latency_target(t: dict) -> str:
    if t["measured_ratio"] is None:
        return (f"{t['model']}: searched for latency on {t['backend']} (predicted ratio {t['predicted_ratio']:.3f}); "
                f"bench it with --backend {t['backend']} to measure it")
    where = "" if t["same_shape"] else (f" (profiled at batch x length {t['profiled_at'][0]} x {t['profiled_at'][1]}, "
                                        f"benched at {t['benched_at'][0]} x {t['benched_at'][1]}: not the same work)")
    return (f"{t['model']} on {t['backend']}: latency ratio predicted {t['predicted_ratio']:.3f}, measured "
            f"{t['measured_ratio']:.3f} ({t['error']:+.1%}; {1 / t['measured_ratio']:.2f}x faster){where}")


def noise_notes(rows: list, limit: float = 1.5) -> list[str]:
    """A note when some row's p90 is over ``limit`` x its median: the machine was busy while it ran."""
    noisy = [f"{r['model']} {r['backend']} ({r['latency_p90_ms'] / r['latency_median_ms']:.1f}x)" for r in rows
             if r["latency_median_ms"] > 0 and r["latency_p90_ms"] > limit * r["latency_median_ms"]]
    if not noisy:
        return []
    return [f"noisy timings: p90 over {limit:g}x the median for {', '.join(noisy)}; other work on the machine? "
            f"compare the medians, or rerun quieter / with more --repeats"]


def best_vs_best(rows: list, names: list) -> list:
    """Per model after the first: its fastest backend against the first model's fastest backend
    (what a user compares: the best they get from the original on this machine)."""
    def best(name):
        mine = [r for r in rows if r["model"] == name]
        return max(mine, key=lambda r: r["sentences_per_s"]) if mine else None

    ref = best(names[0]) if names else None
    out = []
    for name in names[1:]:
        b = best(name)
        if ref is None or b is None:
            continue
        out.append({"model": name, "backend": b["backend"], "sentences_per_s": b["sentences_per_s"],
                    "reference": names[0], "reference_backend": ref["backend"],
                    "reference_sentences_per_s": ref["sentences_per_s"],
                    "speedup": b["sentences_per_s"] / ref["sentences_per_s"]})
    return out


def format_best(best: dict) -> str:
    return (f"best compact vs best original: {best['sentences_per_s']:.1f} sent/s ({best['model']}, {best['backend']}) vs "
            f"{best['reference_sentences_per_s']:.1f} sent/s ({best['reference']}, {best['reference_backend']}) "
            f"= {best['speedup']:.2f}x")


def _unique_names(paths: list) -> list[str]:
    """Each model's name in the tables: its dir's name, with as many parent dirs as it takes to tell
    it from the others (``search-0.3-S/distilled``, ``search-0.1-S/distilled``); a path given twice
    gets primes."""
    parts = [Path(p).parts or (str(p),) for p in paths]
    depth = [1] * len(paths)

    def named() -> list[str]:
        return ["/".join(parts[i][-depth[i]:]) for i in range(len(paths))]

    while True:
        names = named()
        grow = [i for i, n in enumerate(names) if names.count(n) > 1 and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    out = []
    for n in named():
        while n in out:
            n = n + "'"
        out.append(n)
    return out


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
def format_table(res: dict) -> str:
    cpu = res["system"]["cpu"]
    isa = ", ".join(k for k, v in cpu["isa"].items() if v) or "-"
    s = res["settings"]
    la = res["load_average"]
    load = "-" if la["start"] is None else f"{la['start']:.2f} -> {la['end']:.2f}"
    mode = "real lengths" if res["mode"] == "real-lengths" else "fixed length"
    where = f"{cpu['model']} [{isa}]"
    if res["system"].get("gpu"):  # the GPU ran the models; the CPU only fed them
        where = f"{res['system']['gpu']} (host {cpu['model']})"
    head = (f"{mode}, batches {res['batches'][0]}{' ...' if len(res['batches']) > 1 else ''}, "
            f"{res['threads']} threads, {s['device']}; {where}; torch {res['system']['torch']}, "
            f"onnxruntime {res['system']['onnxruntime']}; load average {load}")
    cols = ("model", "backend", "dtype", "GFLOPs/seq", "params", "size MB", "median ms", "p90 ms", "sent/s", "speedup", "FLOPs x", "meas/FLOPs")
    lines = [head, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res["rows"]:
        f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        lines.append("| " + " | ".join([
            r["model"], r["backend"], r.get("dtype", "-"), f(r["flops_analytic"] / 1e9, ".3f"), f"{r['params']:,}", f(r["size_bytes"] / 1e6, ".1f"),
            f(r["latency_median_ms"], ".2f"), f(r["latency_p90_ms"], ".2f"), f(r["sentences_per_s"], ".1f"),
            f(r["speedup"], ".2f"), f(r["flops_speedup"], ".2f"), f(r["speedup_over_flops_speedup"], ".2f")]) + " |")
    for m in res["models"]:
        fv = m["flops"]["fvcore"]
        lines.append(f"- {m['name']}: FLOPs/seq analytic {m['flops']['analytic'] / 1e9:.3f} G, fvcore (matmuls, x2) "
                     f"{'-' if fv is None else f'{fv / 1e9:.3f} G'}; heads {m['heads_per_layer']}")
    lines += [format_best(b) for b in res.get("best", [])]
    lines += [format_latency_target(t) for t in res.get("latency_targets", [])]
    lines += [f"- {n}" for n in res["notes"]]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(dict.fromkeys(r["backend"] for r in res["rows"]))
    models = [m["name"] for m in res["models"]]
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(backends), 3.4))
    for i, m in enumerate(models):
        vals = [next((r["sentences_per_s"] for r in res["rows"] if r["model"] == m and r["backend"] == b), 0) for b in backends]
        ax.bar([j + i * width for j in range(len(backends))], vals, width, label=m)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(backends))], backends)
    where = res["system"].get("gpu") or f"{res['system']['cpu']['model'][:48]}, {res['threads']} threads"
    ax.set(ylabel="sentences / s", title=f"{where}, {res['mode']} lengths")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_results(res: dict, out: Path, force: bool = False) -> None:
    """bench.json, bench.md and bench.png in ``out`` (written atomically as a directory). When the
    write fails the timings are not lost: bench.json is kept in the system's temp dir, and the
    error says where."""
    data = (json.dumps(res, indent=2) + "\n").encode("utf-8")
    try:
        with atomic_output_dir(Path(out), force) as work:
            (work / "bench.json").write_bytes(data)
            (work / "bench.md").write_text(format_table(res) + "\n")
            plot(res, work / "bench.png")
    except PrunekitError as e:
        kept = rescue(data, "bench")
        if kept is None:
            raise
        raise PrunekitError(f"{e}; what bench measured is kept in {kept} (the table above)") from None
