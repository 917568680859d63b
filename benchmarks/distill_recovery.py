"""Does distillation recover what compaction loses, and does the searched architecture beat a random one?

The task (prunekit's own, built from the shipped corpus of standard-library docstring sentences):
**word order**. Half the sentences are kept as written (label 1); in the other half two words of
different spelling swap places (label 0), e.g. "Return the number of items in the list" ->
"Return the items of number in the list". The words are the same, so only word order and
syntax tell them apart: a task for attention, learnable, and not solved by keywords.

Pipeline, all on CPU:

1. fine-tune a classifier teacher from the packaged all-MiniLM-L6-v2 encoder (a new pooler and
   classification head, 4 epochs on 3,400 sentences);
2. ``prunekit search`` to 30% of the FLOPs on the training sentences (self-distillation on the
   teacher's logits, no labels), and a random architecture at the same FLOPs;
3. ``prunekit compact`` both (the teacher's own weights);
4. ``prunekit eval`` on the held-out test sentences: teacher, both compact models before distillation;
5. ``prunekit distill`` both with the same settings (two stages of 2 epochs at lr 1e-4, one
   embedding-neighbour augmented copy per sentence, best checkpoint by dev accuracy on 500
   separate sentences), then ``prunekit eval`` again on the 1,000 test sentences.

Writes ``benchmarks/results/distill_recovery.{json,md}`` (``--out`` for another path stem;
``--quick`` writes ``distill_recovery_quick.*``) and leaves the models and data in ``--runs``
(default ``runs/bench-distill``) for ``precision_accuracy.py`` and ``int8_agreement.py``.
``benchmarks/results/distill_longer.md`` is a longer distillation of the same student through the
CLI; the commands are in that file. From the repo root:

    .venv/bin/python benchmarks/distill_recovery.py --threads 1   # the published numbers (one torch thread; ~25 min)
    .venv/bin/python benchmarks/distill_recovery.py --quick       # a smoke run (~2 min)
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch


def make_task(out: Path, n_train: int, n_dev: int, n_test: int, seed: int) -> dict[str, Path]:
    """Write train/dev/test JSONL files of the word-order task; disjoint sentences per split."""
    from prunekit.data import default_corpus_path

    rng = random.Random(seed)
    sents = [s.strip() for s in default_corpus_path().read_text(encoding="utf-8").splitlines()]
    sents = sorted({s for s in sents if 6 <= len(s.split()) <= 30})
    rng.shuffle(sents)
    need = n_train + n_dev + n_test
    if len(sents) < need:
        raise SystemExit(f"the corpus has {len(sents)} usable sentences, {need} asked for")
    out.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        rows = []
        for s in sents[start : start + n]:
            words = s.split()
            label = int(rng.random() < 0.5)
            if label == 0:
                while True:
                    i, j = sorted(rng.sample(range(len(words)), 2))
                    if words[i].lower() != words[j].lower():
                        break
                words[i], words[j] = words[j], words[i]
            rows.append(json.dumps({"text": " ".join(words), "label": label}))
        start += n
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("\n".join(rows) + "\n", encoding="utf-8")
    return paths


def finetune_teacher(out: Path, train_path: Path, epochs: float, lr: float, batch_size: int, seed: int) -> Path:
    """A classifier from the packaged MiniLM encoder: plain fine-tuning with cross-entropy."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from prunekit.batching import encode, iterate_batches
    from prunekit.data import load_data
    from prunekit.distill import lr_factor
    from prunekit.models import default_model_path

    base = default_model_path()
    tok = AutoTokenizer.from_pretrained(str(base))
    torch.manual_seed(seed)
    hf_logging.set_verbosity_error()  # "some weights newly initialized": the head, as intended
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=2, id2label={0: "swapped", 1: "original"},
                                                               label2id={"swapped": 0, "original": 1})
    hf_logging.set_verbosity_warning()
    data = encode(load_data(str(train_path)), tok, 128)
    steps = int(math.ceil(epochs * math.ceil(len(data) / batch_size)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    batches = iterate_batches(data, batch_size, seed)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(step, steps, 0.1)
        _, batch = next(batches)
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  teacher step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _cpu() -> str:
    """The CPU's model name and its widest vector ISA (figures are only comparable on the same one)."""
    from prunekit.system import cpu_info

    info = cpu_info()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if info["isa"][f]]
    return f"{info['model']} ({', '.join(isa) or 'no AVX2'})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=3400)
    ap.add_argument("--dev", type=int, default=500)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--teacher-epochs", type=float, default=4.0)
    ap.add_argument("--teacher-lr", type=float, default=1e-4)
    ap.add_argument("--search-epochs", type=float, default=2.0)
    ap.add_argument("--target", type=float, default=0.3)
    # Fewer epochs than the study's (20 + 3) to fit a CPU; a higher learning rate to make up for it.
    ap.add_argument("--stage1-epochs", type=float, default=2.0)
    ap.add_argument("--stage2-epochs", type=float, default=2.0)
    ap.add_argument("--stage1-lr", type=float, default=1e-4)
    ap.add_argument("--stage2-lr", type=float, default=1e-4)
    ap.add_argument("--augment-copies", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--runs", default="runs/bench-distill")
    ap.add_argument("--out", default="benchmarks/results/distill_recovery")
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny data and epochs (numbers mean nothing)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.train, args.dev, args.test = 160, 64, 64
        args.teacher_epochs = args.search_epochs = args.stage1_epochs = args.stage2_epochs = 1.0
        args.out = args.out + "_quick"

    from prunekit.compact import compact_to_dir
    from prunekit.distill import DistillSettings, distill
    from prunekit.evaluate import EvalSettings, evaluate, format_table
    from prunekit.io import atomic_write_text
    from prunekit.models import load_teacher
    from prunekit.search import SearchSettings, search

    runs = Path(args.runs)
    t_all = time.time()
    timings: dict[str, float] = {}

    def phase(name, fn, *a, **kw):
        t0 = time.time()
        print(f"== {name}", flush=True)
        r = fn(*a, **kw)
        timings[name] = round(time.time() - t0, 1)
        print(f"   {name}: {timings[name]} s", flush=True)
        return r

    paths = make_task(runs / "data", args.train, args.dev, args.test, args.seed)
    teacher_dir = phase("fine-tune teacher", finetune_teacher, runs / "teacher", paths["train"], args.teacher_epochs, args.teacher_lr, 32, args.seed)
    teacher = load_teacher(teacher_dir)

    # random batches, as the recorded results were made (before grouping was the default)
    common = dict(model=str(teacher_dir), data=str(paths["train"]), seed=args.seed, checkpoint_every=100_000, group_by_length=False)
    found = phase("search", search, SearchSettings(output_dir=str(runs / "search"), target=args.target, epochs=args.search_epochs, **common),
                  force=True, teacher=teacher, progress=False)
    rand = phase("random architecture", search, SearchSettings(output_dir=str(runs / "random"), method="random",
                 target=max(args.target, round(found.achieved_ratio, 4)), **common), force=True, teacher=teacher, progress=False)
    compacts = {}
    for name, run in (("search", found), ("random", rand)):
        compacts[name] = runs / f"{name}-compact"
        phase(f"compact {name}", compact_to_dir, run.output_dir, out_dir=compacts[name], force=True, measure_fvcore=False)

    def ev(models):
        return evaluate(EvalSettings([str(m) for m in models], data=str(paths["test"]), max_length=128))

    before = phase("eval before distillation", ev, [teacher_dir, compacts["search"], compacts["random"]])
    print(format_table(before), flush=True)
    distilled, reports = {}, {}
    for name in ("search", "random"):
        s = DistillSettings(
            student=str(compacts[name]), data=str(paths["train"]), dev_data=str(paths["dev"]), output_dir=str(runs / f"{name}-distilled"),
            stage1_epochs=args.stage1_epochs, stage2_epochs=args.stage2_epochs, stage1_lr=args.stage1_lr, stage2_lr=args.stage2_lr,
            augment_copies=args.augment_copies, seed=args.seed, group_by_length=False,
            checkpoint_every=100_000,
        )
        r = phase(f"distill {name}", distill, s, force=True, teacher=teacher, progress=False)
        distilled[name] = r.output_dir
        reports[name] = json.loads((r.output_dir / "distill_report.json").read_text())
    after = phase("eval after distillation", ev, [teacher_dir, distilled["search"], distilled["random"]])
    print(format_table(after), flush=True)

    def acc(report, i):
        return report["models"][i]["results"]["dev"]["metrics"]["accuracy"]

    t_acc = acc(before, 0)
    rows = [{"model": "teacher (fine-tuned MiniLM-L6)", "flops_ratio": 1.0, "params": before["models"][0]["params"], "accuracy": t_acc}]
    for i, name in ((1, "search"), (2, "random")):
        b, a = acc(before, i), acc(after, i)
        rows.append({
            "model": f"{name} architecture", "flops_ratio": round(before["models"][i]["flops_ratio"], 4), "params": before["models"][i]["params"],
            "heads_per_layer": before["models"][i]["heads_per_layer"], "ffn_per_layer": before["models"][i]["ffn_per_layer"],
            "accuracy_compacted": b, "accuracy_distilled": a, "f1_distilled": after["models"][i]["results"]["dev"]["metrics"].get("f1"),
            "recovered_fraction": (a - b) / (t_acc - b) if t_acc != b else None,
            "best_step": reports[name]["best"]["step"], "best_stage": reports[name]["best"]["stage"],
        })
    meta = {
        "task": "word order (corpus sentences, two words swapped in half of them)", "train": args.train, "dev": args.dev, "test": args.test,
        "teacher_epochs": args.teacher_epochs, "teacher_lr": args.teacher_lr, "search_epochs": args.search_epochs, "target": args.target,
        "stage1_epochs": args.stage1_epochs, "stage2_epochs": args.stage2_epochs, "stage1_lr": args.stage1_lr, "stage2_lr": args.stage2_lr,
        "augment_copies": args.augment_copies,
        "augmented_examples": reports["search"]["augmented_examples"], "seed": args.seed,
        "cpu": _cpu(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "seconds": timings, "total_seconds": round(time.time() - t_all, 1),
    }
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"),
                      json.dumps({"meta": meta, "rows": rows, "eval_before": before, "eval_after": after}, indent=1) + "\n")
    lines = [
        "| model | FLOPs ratio (T=128) | params | test accuracy compacted | test accuracy distilled | recovered |",
        "|---|---|---|---|---|---|",
        f"| {rows[0]['model']} | 1.000 | {rows[0]['params'] / 1e6:.1f}M | {t_acc:.4f} | - | - |",
    ]
    for r in rows[1:]:
        rec = "-" if r["recovered_fraction"] is None else f"{100 * r['recovered_fraction']:.0f}%"
        lines.append(f"| {r['model']} | {r['flops_ratio']:.3f} | {r['params'] / 1e6:.1f}M | {r['accuracy_compacted']:.4f} | {r['accuracy_distilled']:.4f} | {rec} |")
    lines.append("")
    for r in rows[1:]:
        lines.append(f"- {r['model']}: heads per layer {r['heads_per_layer']}, FFN widths {r['ffn_per_layer']}")
    md = "\n".join(lines) + "\n\n" + ", ".join(f"{k}: {v}" for k, v in meta.items()) + "\n"
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
