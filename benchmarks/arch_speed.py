"""The speed of searched architectures, their weights aside (issue 20): `architecture.json` files
(tens of KB each) are cut out of a random-weight original of their shape and timed side by side with
`prunekit bench`, so a search made on one machine is timed on another (a lent GPU, where the real
models do not travel: the packaged MiniLM alone is 87 MB) without its weights, which do not change
the time. On the GPU machine prunekit comes from the checkout through ``PYTHONPATH`` (gpu_session.sh
sets it); on the CPU from the project's environment.

    .venv/bin/python benchmarks/arch_speed.py S=runs/.../search-0.3-S/search/architecture.json \
        H=runs/.../search-0.3-H/search/architecture.json --backends torch-sdpa ort-opt --out /tmp/arch_speed
    bash benchmarks/gpu_session.sh hidden    # on a lent GPU: triton-fp16-graph and torch-fp16-graph, batch 64

Each NAME=PATH is one architecture (heads, FFN neurons and, from `search --prune-hidden`, hidden
dimensions kept); all must share one shape (layers, hidden, heads, FFN). The compact models keep the
narrow output (`--narrow-output`: a classifier has no map back to the teacher's width either).
``--pairs B:A`` prints B's speedup over A's (the ratio of their speedups over the original, each a
median of paired repeats). ``--rounds K`` times everything K times (a fresh bench each: new
sessions, compiles and memory layout, which move a CPU's figures by several percent from one run to
the next) and prints each figure as the median of the rounds with their range. Writes
``<out>.json`` and ``<out>.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from random_models import make_original

from prunekit.architecture import Architecture
from prunekit.bench import BenchSettings, bench
from prunekit.compact import compact
from prunekit.errors import PrunekitError
from prunekit.io import atomic_write_text
from prunekit.models import load_teacher

REPO = Path(__file__).resolve().parents[1]


def _named(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"give architectures as NAME=PATH, got {item!r}")
        if not Path(path).is_file():
            raise SystemExit(f"{path}: no such architecture file (a search run's architecture.json)")
        out[name] = Path(path)
    return out


def _dims(path: Path) -> tuple:
    shape = json.loads(path.read_text()).get("shape") or {}
    try:
        return shape["num_layers"], shape["hidden_size"], shape["num_heads"], shape["intermediate_size"]
    except KeyError:
        raise SystemExit(f"{path}: no 'shape' (layers, hidden, heads, FFN) recorded; re-save it with a current prunekit") from None


def _spread(values: list[float]) -> dict:
    """The median of the rounds' figures (``ratio``) and their range."""
    return {"ratio": statistics.median(values), "min": min(values), "max": max(values), "rounds": len(values)}


def _shown(fig: dict, digits: int) -> str:
    text = f"{fig['ratio']:.{digits}f}x"
    return text + (f" [{fig['min']:.{digits}f}-{fig['max']:.{digits}f}]" if fig["rounds"] > 1 else "")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("archs", nargs="+", help="NAME=path/to/architecture.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backends", nargs="+", default=["torch-sdpa"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--pairs", nargs="*", default=[], help="B:A, B's speedup over A's")
    ap.add_argument("--rounds", type=int, default=1, help="bench runs; figures are their median (and range)")
    ap.add_argument("--runs", default=str(REPO / "runs" / "arch-speed"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "arch_speed"))
    a = ap.parse_args(argv)

    if a.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {a.rounds}")
    archs = _named(a.archs)
    dims = {_dims(p) for p in archs.values()}
    if len(dims) != 1:
        raise SystemExit(f"the architectures are of different shapes {sorted(dims)}: time one shape per run")
    [dims] = dims
    runs = Path(a.runs)
    original = runs / "original-{}x{}x{}x{}".format(*dims)
    if not original.exists():
        make_original(original, dims, seed=0)
    teacher = load_teacher(str(original))
    models, kept = [str(original)], {}
    for name, path in archs.items():
        try:
            arch = Architecture.load(path, teacher.shape)
        except PrunekitError as e:
            raise SystemExit(str(e)) from None
        out = runs / name
        compact(teacher, arch, narrow_output=True).save_pretrained(out)
        teacher.tokenizer.save_pretrained(out)
        models.append(str(out))
        kept[name] = {"heads": arch.head_counts, "ffn": arch.ffn_widths, "hidden": arch.hidden_size or dims[1],
                      "flops_ratio": arch.flops_ratio(teacher.shape, a.seq_len), "source": str(path)}
    settings = BenchSettings(models=models, device=a.device, backends=a.backends, batch=a.batch, seq_len=a.seq_len,
                             repeats=a.repeats, warmup=2, threads=a.threads, fvcore=False)
    results = [bench(settings) for _ in range(a.rounds)]
    res = results[-1]
    # bench names each model by its dir; per round, each (model, backend)'s speedup over the original
    rounds = [{(r["model"], r["backend"]): r["speedup"] for r in one["rows"]} for one in results]
    speed = {k: _spread(v) for k in rounds[-1] if (v := [rd[k] for rd in rounds if rd.get(k)])}
    pairs = []
    for pair in a.pairs:
        b, _, ref = pair.partition(":")
        for backend in dict.fromkeys(r["backend"] for r in res["rows"]):
            ratios = [rd[(b, backend)] / rd[(ref, backend)] for rd in rounds if rd.get((b, backend)) and rd.get((ref, backend))]
            if ratios:
                pairs.append({"pair": f"{b}:{ref}", "backend": backend, **_spread(ratios)})
    system = res["system"]
    cpu = system.get("cpu") or {}
    isa = [k for k in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if (cpu.get("isa") or {}).get(k)]
    machine = system.get("gpu") or f"{cpu.get('model') or '?'}" + (f" ({', '.join(isa)})" if isa else "")
    lines = [f"# Architectures timed with random weights ({machine}, {a.device}, batch {a.batch} x {a.seq_len} tokens, "
             f"threads {res['threads']})", "",
             "Made by `benchmarks/arch_speed.py`: each architecture.json cut out of a random-weight original of its shape "
             "and timed by `prunekit bench` beside it (speedup: over the original on the same backend, median of "
             f"{a.repeats} paired repeats" + (f"; each figure the median of {a.rounds} bench runs, their range in "
                                               "brackets" if a.rounds > 1 else "") + ").", "",
             "| model | hidden | heads per layer | FFN per layer | FLOPs ratio | " + " | ".join(f"{b} speedup" for b in a.backends) + " |",
             "|---|---:|---|---|---:|" + "---:|" * len(a.backends)]
    for name, k in kept.items():
        cells = [_shown(speed[(name, b)], 2) if speed.get((name, b)) else "-" for b in a.backends]
        lines.append(f"| {name} | {k['hidden']} | {' '.join(map(str, k['heads']))} | {' '.join(map(str, k['ffn']))} "
                     f"| {k['flops_ratio']:.3f} | " + " | ".join(cells) + " |")
    if pairs:
        lines += ["", "| pair (B:A) | backend | B's speedup over A's |", "|---|---|---:|"]
        lines += [f"| {p['pair']} | {p['backend']} | {_shown(p, 3)} |" for p in pairs]
    if res.get("notes"):
        lines += [""] + [f"- {n}" for n in res["notes"]]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"settings": vars(a), "archs": kept, "pairs": pairs, "system": system,
                                                            "rows": res["rows"], "rounds": [one["rows"] for one in results]},
                                                           indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
