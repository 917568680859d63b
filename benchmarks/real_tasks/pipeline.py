"""prunekit's whole pipeline on a real task (issue 16): search -> compact -> distill -> eval on test.

For one task, FLOPs target and method (search, uniform, random, ...), runs the CLI steps as
subprocesses, each timed, into ``runs/real_tasks/<task>/pipeline/<method>-<target>[-<tag>]/``:

    prunekit search  --model <teacher> --data train.jsonl --target T --method M --seed S -o search  <--search-args>
    prunekit compact search -o compact                                                              <--compact-args>
    prunekit distill compact --teacher <teacher> --data train.jsonl --dev-data dev.jsonl --seed S -o distilled  <--distill-args>
    prunekit eval    distilled --data test.jsonl --compare <teacher> --json eval.json               <--eval-args>

Every other option of a step goes in its ``--<step>-args`` string (written with ``=`` when it is a
single option: ``--distill-args=--quiet``), so the recipe under study can be varied; the run's
``--tag`` tells two recipes apart. Each stage's output goes to ``<stage>.log`` in the run dir.
Writes ``benchmarks/results/real_tasks/pipeline_<task>_<method>_<target>[_<tag>].json`` (commands,
seconds per stage, test accuracy of the distilled model and of the teacher, FLOPs ratio, params)
and rewrites ``benchmarks/results/real_tasks/pipeline_<task>.md`` from every such JSON of the task,
next to the teacher's and the TF-IDF baseline's results, naming the machine. From the repo root,
after ``build.py``, ``tfidf.py`` and ``teacher.py --task <task>``:

    nice -n 10 .venv/bin/python benchmarks/real_tasks/pipeline.py --task docstrings --target 0.3 --method search
    nice -n 10 .venv/bin/python benchmarks/real_tasks/pipeline.py --task docstrings --target 0.3 --method uniform
    nice -n 10 .venv/bin/python benchmarks/real_tasks/pipeline.py --task docstrings --target 0.1 --method search \\
        --distill-args="--budget 40m" --tag 40m
    .venv/bin/python benchmarks/real_tasks/pipeline.py --task docstrings --report   # only rewrite the .md

The distillation's defaults are `--recipe short` (one epoch of stage 1, then 5 of stage 2, over the
data and one augmented copy of each example, batches grouped by length; ~25 min for the whole pipeline
on `signatures` on 2 AVX-512 EPYC cores); pass `--budget` in `--distill-args` to bound it instead.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from prunekit.io import atomic_write_text
from prunekit.system import cpu_info

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "real_tasks"
STAGES = ("search", "compact", "distill", "eval")


def _fmt_target(t: float) -> str:
    return f"{t:g}"


def run_name(method: str, target: float, tag: str | None) -> str:
    return f"{method}-{_fmt_target(target)}" + (f"-{tag}" if tag else "")


def commands(a: argparse.Namespace, run_dir: Path, data_dir: Path, teacher: str) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "prunekit"]
    return {
        "search": [*cli, "search", "--model", teacher, "--data", str(data_dir / "train.jsonl"),
                   "--target", _fmt_target(a.target), "--method", a.method, "--seed", str(a.seed),
                   "-o", str(run_dir / "search"), "--force", *shlex.split(a.search_args)],
        "compact": [*cli, "compact", str(run_dir / "search"), "-o", str(run_dir / "compact"), "--force",
                    *shlex.split(a.compact_args)],
        "distill": [*cli, "distill", str(run_dir / "compact"), "--teacher", teacher,
                    "--data", str(data_dir / "train.jsonl"), "--dev-data", str(data_dir / "dev.jsonl"),
                    "--seed", str(a.seed), "-o", str(run_dir / "distilled"), "--force", *shlex.split(a.distill_args)],
        "eval": [*cli, "eval", str(run_dir / "distilled"), "--data", str(data_dir / "test.jsonl"),
                 "--compare", teacher, "--json", str(run_dir / "eval.json"), "--force", *shlex.split(a.eval_args)],
    }


def shown(cmd: list[str]) -> str:
    """The command as a reader would type it from the repo root."""
    rel = []
    for c in cmd:
        if c == sys.executable:
            c = ".venv/bin/python"
        elif c.startswith(str(REPO) + os.sep):
            c = os.path.relpath(c, REPO)
        rel.append(shlex.quote(c))
    return " ".join(rel)


def run_stage(name: str, cmd: list[str], log: Path, env: dict) -> tuple[float, int]:
    """Run one stage, its output to `log` and (progress bars aside) to this terminal."""
    print(f"\n== {name}: {shown(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        f.write(shown(cmd) + "\n\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                text=True, errors="replace", bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            if "\r" not in line and "it/s]" not in line and "s/it]" not in line:
                print("   " + line, end="", flush=True)
        rc = proc.wait()
    seconds = time.perf_counter() - t0
    print(f"== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc}), see {log}'} in {seconds:.1f} s", flush=True)
    return seconds, rc


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def summarise(run_dir: Path) -> dict:
    """What the stages left: the searched ratio, the distillation's best dev score, the test scores."""
    out: dict = {}
    arch = _read_json(run_dir / "search" / "architecture.json") or {}
    out["search"] = {k: arch[k] for k in ("achieved_flops_ratio", "projected", "gate_ratio", "skipped_steps") if k in arch}
    rep = _read_json(run_dir / "distilled" / "distill_report.json") or {}
    out["distill"] = {k: rep.get(k) for k in ("teacher_dev", "before", "best", "steps", "train_examples",
                                              "augmented_examples", "dev_examples")}
    ev = _read_json(run_dir / "eval.json") or {}
    models = ev.get("models") or []
    for role, row in zip(("distilled", "teacher"), models):
        res = next(iter((row.get("results") or {}).values()), {})
        out[role] = {"model": row.get("model"), "accuracy": (res.get("metrics") or {}).get("accuracy"),
                     "metrics": res.get("metrics"), "examples": res.get("examples"), "params": row.get("params"),
                     "flops": row.get("flops"), "flops_ratio": row.get("flops_ratio")}
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _delta(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{100 * (a - b):+.2f}"


def _dev(run: dict) -> float | None:
    """The distillation's best dev accuracy (the checkpoint it kept was picked on it: optimistic)."""
    best = (run.get("distill") or {}).get("best") or {}
    return (best.get("metrics") or {}).get("accuracy")


def recipe(tag: str | None) -> str:
    """A run's recipe: its tag without the seed suffix (``S-s1`` -> ``S``)."""
    return re.sub(r"-s\d+$", "", tag or "")


def _seed_means(runs: list[dict]) -> list[str]:
    """Per recipe run with more than one seed: the mean and spread of test and dev accuracy."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if (r.get("distilled") or {}).get("accuracy") is not None:
            groups.setdefault((r["method"], r["target"], recipe(r.get("tag"))), []).append(r)
    rows = []
    for (method, target, tag), rs in groups.items():
        if len(rs) < 2:
            continue
        test = [100 * r["distilled"]["accuracy"] for r in rs]
        dev = [100 * v for r in rs if (v := _dev(r)) is not None]
        n = (rs[0].get("distilled") or {}).get("examples")
        dev_mean = f"{statistics.mean(dev):.2f}" if dev else "-"
        rows.append(f"| {method} | {_fmt_target(target)} | {tag} | {len(rs)} | {statistics.mean(test):.2f} "
                    f"| {statistics.stdev(test):.2f} | {dev_mean} | {', '.join(f'{x:.2f}' for x in test)} | {n or '-'} |")
    if not rows:
        return []
    return ["Recipes run with more than one seed (tags `X`, `X-s1`, `X-s2`, ...): mean and standard deviation over the "
            "seeds. A single test accuracy on ~1,000 examples has a binomial standard error of ~1.1 points, so "
            "the difference of two single runs has one of ~1.6 and needs ~3 points to be told from noise (95%).", "",
            "| method | target | recipe | seeds | test mean | test sd | dev mean | test per seed | test examples |",
            "|---|---:|---|---:|---:|---:|---:|---|---:|", *rows, ""]


def write_report(task: str, results: Path) -> Path:
    """pipeline_<task>.md from every pipeline_<task>_*.json under `results`, with the teacher and TF-IDF."""
    runs = [r for p in sorted(results.glob(f"pipeline_{task}_*.json")) if (r := _read_json(p)) and r.get("task") == task]
    runs.sort(key=lambda r: (-r["target"], r["method"], r.get("tag") or ""))
    teacher = _read_json(results / f"teacher_{task}.json")
    tfidf = _read_json(results / f"tfidf_{task}.json")
    tfidf_acc = tfidf.get("test_accuracy") if tfidf else None
    lines = [f"# prunekit's pipeline on the real task `{task}` (issue 16)", "",
             f"Written by `benchmarks/real_tasks/pipeline.py` from the `pipeline_{task}_*.json` beside this file; "
             "accuracy on the task's test split (percent), Δ in points. The commands each row records ran under the "
             "defaults of their day: until 2026-12-04 (commit e0df86b) search and distill batched at random and "
             "`--recipe short` was 1 stage-1 + 3 stage-2 epochs without augmentation; to replay such a row today add "
             "`--no-group-by-length` to search and `--stage1-epochs 1 --stage2-epochs 3 --stage1-share 0.25 "
             "--augment-copies 0 --no-group-by-length` to distill where the row does not give them.", ""]
    if teacher or tfidf:
        lines.append("| reference | test accuracy | notes |")
        lines.append("|---|---:|---|")
    else:
        lines.append("No teacher or TF-IDF result yet (teacher.py, tfidf.py).")
    if teacher:
        lines.append(f"| fine-tuned teacher (all-MiniLM-L6-v2) | {_pct(teacher.get('test_accuracy'))} | "
                     f"epoch {teacher.get('best_epoch')} of {len(teacher.get('epochs', []))} by dev "
                     f"({_pct(teacher.get('dev_accuracy'))}), {teacher.get('wall_seconds', 0) / 60:.0f} min |")
    if tfidf:
        what = "of each segment, their product, cosine and shared words " if tfidf.get("segments") == 2 else ""
        lines.append(f"| word TF-IDF (1-2 grams) {what}+ LinearSVC | {_pct(tfidf_acc)} | C={tfidf.get('C')} by dev "
                     f"({_pct(tfidf.get('dev_accuracy'))}) |")
        if "overlap_rule" in tfidf:
            rule = tfidf["overlap_rule"]
            lines.append(f"| rule without learning: match when the segments share {rule['min_shared_words']}+ words "
                         f"(3+ letters) | {_pct(rule['test_accuracy'])} | k by dev ({_pct(rule['dev_accuracy'])}) |")
    lines.append("")
    if runs:
        lines.append("| method | target | tag | FLOPs ratio | params | dev acc (best) | test acc | teacher acc | Δ teacher | Δ TF-IDF "
                     "| search s | compact s | distill s | eval s | total min |")
        lines.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in runs:
            d, t = r.get("distilled") or {}, r.get("teacher") or {}
            secs = {s["stage"]: s["seconds"] for s in r["stages"]}
            params = f"{d['params'] / 1e6:.2f}M" if d.get("params") else "-"
            ratio = f"{d['flops_ratio']:.3f}" if d.get("flops_ratio") is not None else "-"
            failed = [s["stage"] for s in r["stages"] if s["rc"] != 0]
            lines.append(
                f"| {r['method']} | {_fmt_target(r['target'])} | {r.get('tag') or ''}{' (FAILED: ' + ', '.join(failed) + ')' if failed else ''} "
                f"| {ratio} | {params} | {_pct(_dev(r))} | {_pct(d.get('accuracy'))} | {_pct(t.get('accuracy'))} "
                f"| {_delta(d.get('accuracy'), t.get('accuracy'))} | {_delta(d.get('accuracy'), tfidf_acc)} | "
                + " | ".join(f"{secs[s]:.0f}" if s in secs else "-" for s in STAGES)
                + f" | {sum(secs.values()) / 60:.1f} |")
        lines.append("")
        lines.extend(_seed_means(runs))
        lines.append("## Commands")
        for r in runs:
            lines.append("")
            lines.append(f"`{run_name(r['method'], r['target'], r.get('tag'))}` ({r['finished']}, prunekit at "
                         f"{r.get('git_commit', '?')[:10]}{' + local changes' if r.get('git_dirty') else ''}):")
            lines.append("")
            lines.append("```")
            lines.extend(s["command"] for s in r["stages"])
            lines.append("```")
        lines.append("")
        machines = sorted({json.dumps(r.get("machine"), sort_keys=True) for r in runs})
        lines.append("## Machine")
        lines.append("")
        for m in machines:
            info = json.loads(m) or {}
            isa = ", ".join(k for k, v in (info.get("isa") or {}).items() if v)
            lines.append(f"- {info.get('model', '?')}, {info.get('logical_cpus', '?')} logical CPUs ({isa}); "
                         f"torch threads {runs[0].get('threads')}, runs under nice {runs[0].get('nice')}")
    else:
        lines.append("No pipeline run yet: `benchmarks/real_tasks/pipeline.py --task " + task + " ...` (README.md).")
    lines.append("")
    out = results / f"pipeline_{task}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help="a task built by build.py")
    ap.add_argument("--target", type=float, default=0.3, help="FLOPs ratio for search")
    ap.add_argument("--method", default="search", help="search's --method: search, uniform, random, head-importance, magnitude")
    ap.add_argument("--tag", default=None, help="names the recipe (run dir and result file suffix)")
    ap.add_argument("--seed", type=int, default=42, help="--seed of search and distill")
    ap.add_argument("--data", default=str(REPO / "runs" / "real_tasks"), help="the tasks' folder (build.py --out)")
    ap.add_argument("--teacher", default=None, help="default: DATA/<task>/teacher (teacher.py)")
    ap.add_argument("--runs", default=None, help="run dirs go under RUNS (default DATA/<task>/pipeline)")
    ap.add_argument("--search-args", default="", help="more options of `prunekit search`, one string")
    ap.add_argument("--compact-args", default="", help="more options of `prunekit compact`")
    ap.add_argument("--distill-args", default="", help="more options of `prunekit distill`")
    ap.add_argument("--eval-args", default="", help="more options of `prunekit eval`")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run (default: all; "
                    "a later stage reuses the run dir's earlier outputs)")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the stages")
    ap.add_argument("--results", default=str(RESULTS), help="where the JSON and the .md go")
    ap.add_argument("--report", action="store_true", help="only rewrite pipeline_<task>.md from the JSONs")
    a = ap.parse_args(argv)

    results = Path(a.results)
    if a.report:
        print(f"wrote {write_report(a.task, results)}")
        return
    data_dir = Path(a.data) / a.task
    teacher = a.teacher or str(data_dir / "teacher")
    for need in (data_dir / "train.jsonl", Path(teacher) / "config.json"):
        if not need.exists():
            raise SystemExit(f"{need} is missing: run build.py and teacher.py --task {a.task} first (README.md)")
    name = run_name(a.method, a.target, a.tag)
    run_dir = Path(a.runs or data_dir / "pipeline") / name
    run_dir.mkdir(parents=True, exist_ok=True)
    wanted = [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = set(wanted) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    cmds = commands(a, run_dir, data_dir, teacher)
    stages = []
    t0 = time.perf_counter()
    for stage in STAGES:
        if stage not in wanted:
            continue
        seconds, rc = run_stage(stage, cmds[stage], run_dir / f"{stage}.log", env)
        stages.append({"stage": stage, "command": shown(cmds[stage]), "seconds": round(seconds, 1), "rc": rc})
        if rc != 0:
            break
    report = {
        "task": a.task, "method": a.method, "target": a.target, "tag": a.tag, "seed": a.seed,
        "teacher_dir": shown([teacher]), "run_dir": shown([str(run_dir)]), "stages": stages,
        "total_seconds": round(time.perf_counter() - t0, 1), **summarise(run_dir),
        "machine": cpu_info(), "threads": a.threads, "nice": os.nice(0),
        "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(_git("status", "--porcelain", "--", "prunekit")),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shown([sys.executable, *sys.argv]) if argv is None else None,
    }
    out = results / f"pipeline_{a.task}_{a.method}_{_fmt_target(a.target)}{'_' + a.tag if a.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    md = write_report(a.task, results)
    d, t = report.get("distilled") or {}, report.get("teacher") or {}
    print(f"\n{name}: test accuracy {_pct(d.get('accuracy'))} (teacher {_pct(t.get('accuracy'))}), "
          f"FLOPs ratio {d.get('flops_ratio')}, {report['total_seconds'] / 60:.1f} min -> {out}, {md}")
    if any(s["rc"] != 0 for s in stages):
        sys.exit(1)


if __name__ == "__main__":
    main()
