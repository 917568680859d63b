"""Fine-tune the packaged all-MiniLM-L6-v2 into the teacher of a real task (issue 16).

A new classification head (``AutoModelForSequenceClassification``, ``num_labels`` and
``id2label``/``label2id`` from the class names of ``train.jsonl``) on top of the packaged encoder,
trained with a plain torch loop: AdamW (lr 1e-4 for the encoder, 1e-3 for the pooler and the new
classifier), linear warm-up over 10% of the steps then linear decay, 6 epochs, batch 32, max
length 128, batches padded to their longest text, a seeded order. Every epoch is scored on dev;
the best epoch's weights are kept, scored on test and saved as an HF model dir (config with
id2label, model.safetensors, tokenizer files) to ``runs/real_tasks/<task>/teacher`` (git-ignored),
the input of ``pipeline.py``. Writes ``benchmarks/results/real_tasks/teacher_<task>.json``
(per-epoch loss and dev accuracy, test accuracy, wall time, the machine). The first recipe tried,
lr 5e-5 everywhere for 4 epochs, underfitted (``teacher_docstrings_lr5e-5.json``: 76.4 test,
its best epoch the last). From the repo root, after ``build.py``:

    nice -n 10 .venv/bin/python benchmarks/real_tasks/teacher.py --task docstrings
        # 33 min on 2 shared CPU cores; ~4 min an epoch (~3 s a step) when nothing else runs
    nice -n 10 .venv/bin/python benchmarks/real_tasks/teacher.py --task pylibs --group-by-length
        # 141 steps an epoch of ~2x longer texts: ~3.5 min an epoch grouped on 2 AVX-512 EPYC cores
        # (teacher_pylibs.json: 40 min, its first two epochs beside a test run); best epoch 3, test 80.75
    nice -n 10 .venv/bin/python benchmarks/real_tasks/teacher.py --task docstrings --lr 5e-5 --head-lr 5e-5 \
        --epochs 4 --tag lr5e-5      # the first recipe, to teacher-lr5e-5/ and teacher_docstrings_lr5e-5.json
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shlex
import sys
import time
from pathlib import Path

import torch
import transformers
from task_files import read_jsonl
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from prunekit.batching import batch_order
from prunekit.io import atomic_write_text
from prunekit.models import default_model_path
from prunekit.system import cpu_info

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "real_tasks"


class Batches:
    """Tokenised once; each batch padded to its own longest text."""

    def __init__(self, tokenizer, texts: list[str], labels: list[int], max_length: int, pairs: list[str] | None = None):
        self.tokenizer = tokenizer
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)  # a pair: [CLS] text [SEP] pair [SEP]
        self.encoded = enc["input_ids"]
        self.types = enc.get("token_type_ids")
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: list[int]) -> tuple[dict, torch.Tensor]:
        rows = {"input_ids": [self.encoded[i] for i in idx]}
        if self.types is not None:
            rows["token_type_ids"] = [self.types[i] for i in idx]
        feats = self.tokenizer.pad(rows, return_tensors="pt")
        return dict(feats), torch.tensor([self.labels[i] for i in idx])

    def iterate(self, batch_size: int, order: list[int] | None = None):
        order = order if order is not None else list(range(len(self)))
        for i in range(0, len(order), batch_size):
            yield self.batch(order[i:i + batch_size])


@torch.no_grad()
def accuracy(model, data: Batches, batch_size: int) -> float:
    model.eval()
    correct = 0
    for feats, labels in data.iterate(batch_size):
        correct += (model(**feats).logits.argmax(-1) == labels).sum().item()
    return correct / max(len(data), 1)


def _is_head(name: str) -> bool:
    return name.startswith(("classifier.", "bert.pooler."))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help="a task built by build.py (docstrings, manpages, pylibs, signatures)")
    ap.add_argument("--data", default=str(REPO / "runs" / "real_tasks"), help="the tasks' folder (build.py --out)")
    ap.add_argument("--model", default=None, help="encoder to start from (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("-o", "--output", default=None, help="teacher dir (default: DATA/<task>/teacher)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the encoder")
    ap.add_argument("--head-lr", type=float, default=1e-3,
                    help="peak learning rate of the pooler and the new classifier")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps with linear warm-up")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--group-by-length", action="store_true",
                    help="batches of similar lengths in a random order (prunekit's grouping, search/distill "
                         "--group-by-length): fewer padded tokens; the untagged docstrings teacher did without")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--max-examples", type=int, default=None, help="first N examples of each split (a quick check)")
    ap.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many steps (a quick check)")
    ap.add_argument("--tag", default=None, help="a variant's name: RESULTS/teacher_<task>_<tag>.json, "
                    "DATA/<task>/teacher-<tag> (the pipeline's default teacher is the untagged one)")
    ap.add_argument("--results", default=str(RESULTS), help="writes RESULTS/teacher_<task>.json")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    t_start = time.perf_counter()
    data_dir = Path(args.data) / args.task
    out_dir = Path(args.output) if args.output else data_dir / ("teacher" + (f"-{args.tag}" if args.tag else ""))
    model_path = args.model or str(default_model_path())

    (xtr, ytr, ptr), (xdev, ydev, pdev), (xte, yte, pte) = (read_jsonl(data_dir / f"{s}.jsonl", args.max_examples)
                                                            for s in ("train", "dev", "test"))
    names = sorted(set(ytr))
    label2id = {n: i for i, n in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id)
    train, dev, test = (Batches(tokenizer, x, [label2id[v] for v in y], args.max_length, p)
                        for x, y, p in ((xtr, ytr, ptr), (xdev, ydev, pdev), (xte, yte, pte)))

    steps_all = steps_per_epoch = math.ceil(len(train) / args.batch_size)
    grouped = batch_order(len(train), args.batch_size, args.seed, lengths=[len(x) for x in train.encoded]) \
        if args.group_by_length else None
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    total = steps_per_epoch * args.epochs
    groups = []
    for head in (False, True):  # the encoder, then the pooler and the new classifier
        params = [(n, p) for n, p in model.named_parameters() if _is_head(n) == head]
        lr = args.head_lr if head else args.lr
        groups.append({"params": [p for n, p in params if p.ndim >= 2], "weight_decay": args.weight_decay, "lr": lr})
        groups.append({"params": [p for n, p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr})
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=args.lr)
    sched = get_linear_schedule_with_warmup(opt, round(args.warmup * total), total)
    print(f"{args.task}: {len(train)}/{len(dev)}/{len(test)} examples, {len(names)} classes, "
          f"{args.epochs} epochs x {steps_per_epoch} steps of {args.batch_size}", flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    epochs, best, best_state = [], None, None
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0, losses = time.perf_counter(), []
        if args.group_by_length:  # batch s of the run depends on (seed, s) only, as in search/distill
            batches = [next(grouped).tolist() for _ in range(steps_all)]
        else:
            order = torch.randperm(len(train), generator=gen).tolist()
            batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        for step, (feats, labels) in enumerate(map(train.batch, batches), 1):
            loss = torch.nn.functional.cross_entropy(model(**feats).logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if step % 20 == 0 or step == steps_per_epoch:
                rate = (time.perf_counter() - t0) / step
                print(f"  epoch {epoch} step {step}/{steps_per_epoch} loss {sum(losses[-20:]) / len(losses[-20:]):.4f} "
                      f"({rate:.2f} s/step)", flush=True)
            if step >= steps_per_epoch:
                break
        train_s = time.perf_counter() - t0
        dev_acc = accuracy(model, dev, args.eval_batch_size)
        row = {"epoch": epoch, "train_loss": sum(losses) / len(losses), "dev_accuracy": dev_acc,
               "train_seconds": round(train_s, 1), "seconds": round(time.perf_counter() - t0, 1)}
        epochs.append(row)
        print(f"epoch {epoch}: loss {row['train_loss']:.4f} dev accuracy {dev_acc:.4f} ({row['seconds']} s)", flush=True)
        if best is None or dev_acc > best["dev_accuracy"]:
            best, best_state = row, copy.deepcopy(model.state_dict())

    model.load_state_dict(best_state)
    test_acc = accuracy(model, test, args.eval_batch_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    wall = time.perf_counter() - t_start
    report = {
        "task": args.task, "teacher": str(out_dir), "base_model": model_path, "classes": names,
        "n_train": len(train), "n_dev": len(dev), "n_test": len(test),
        "settings": {k: v for k, v in vars(args).items() if k not in ("results",)},
        "epochs": epochs, "best_epoch": best["epoch"], "dev_accuracy": best["dev_accuracy"],
        "test_accuracy": test_acc, "wall_seconds": round(wall, 1),
        "machine": cpu_info(), "torch": torch.__version__, "transformers": transformers.__version__,
        "command": "nice -n 10 .venv/bin/python benchmarks/real_tasks/teacher.py "
                   + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
    }
    out = Path(args.results) / f"teacher_{args.task}{'_' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    print(f"{args.task}: best epoch {best['epoch']} dev {best['dev_accuracy']:.4f} test {test_acc:.4f}, "
          f"{wall / 60:.1f} min -> {out_dir}, {out}", flush=True)


if __name__ == "__main__":
    main()
