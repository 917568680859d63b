"""A training step in fp32 against the same step in bf16 autocast on this CPU, side by side (issue 16:
accuracy per hour). The step is what search and distill run: the model's forward, a loss, the backward
and an AdamW update, on a batch of ``--batch`` x ``--seq-len`` tokens; the two precisions alternate in
every repeat; the times are medians and the speedup is the median of each repeat's paired ratio
(prunekit.timing: the drift of a shared machine cancels). On a CPU with bf16 matrix instructions (AVX512-BF16, AMX)
bf16 is expected to be faster; elsewhere it is emulated (slower). Whether bf16 keeps the accuracy is
measured by the real-task pipeline (`benchmarks/real_tasks/pipeline.py --distill-args="--mixed-precision bf16"`).

    .venv/bin/python benchmarks/train_precision.py runs/real_tasks/docstrings/teacher \
        runs/real_tasks/docstrings/pipeline/search-0.3-Gaug/distilled --threads 2 --out benchmarks/results/train_precision

Each model is a local dir: an original (any BERT-family HF dir) or a compact dir. Writes ``<out>.json``
and ``<out>.md`` naming the CPU and its ISA flags.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from prunekit.io import atomic_write_text
from prunekit.loading import load_model
from prunekit.models import model_output
from prunekit.system import cpu_info
from prunekit.timing import paired_ratio


def _loss(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "classification":
        return torch.nn.functional.cross_entropy(out.float(), target)
    return (out.float() - target).pow(2).mean()


def time_model(path: str, batch: int, seq_len: int, repeats: int, warmup: int) -> dict:
    lm = load_model(path, need_tokenizer=False, onnx_files=False)
    model = lm.model.train()
    for p in model.parameters():  # loaded for inference
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    inputs = {"input_ids": torch.randint(min(1000, vocab // 2), vocab, (batch, seq_len), generator=g),  # past the special tokens
              "attention_mask": torch.ones(batch, seq_len, dtype=torch.long)}
    with torch.no_grad():
        shape = model_output(model.eval(), lm.kind, inputs).shape
    model.train()
    target = (torch.randint(0, shape[-1], (batch,), generator=g) if lm.kind == "classification"
              else torch.randn(shape, generator=g))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)  # a real update, small enough to leave the model as it is

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = _loss(lm.kind, model_output(model, lm.kind, inputs), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for _ in range(warmup):
        step(False), step(True)
    times = {"fp32": [], "bf16": []}
    for r in range(repeats):
        order = (False, True) if r % 2 == 0 else (True, False)  # alternate which goes first
        for bf16 in order:
            times["bf16" if bf16 else "fp32"].append(step(bf16))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": path, "kind": lm.kind, "params": sum(p.numel() for p in model.parameters()),
            "fp32_s": med["fp32"], "bf16_s": med["bf16"], "bf16_speedup": paired_ratio(times["fp32"], times["bf16"]),
            "fp32_range": [min(times["fp32"]), max(times["fp32"])], "bf16_range": [min(times["bf16"]), max(times["bf16"])],
            "times": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None, help="writes OUT.json and OUT.md")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cpu = cpu_info()
    rows = [time_model(m, a.batch, a.seq_len, a.repeats, a.warmup) for m in a.models]
    isa = ", ".join(k for k, v in cpu["isa"].items() if v) or "unknown"
    lines = [f"# A training step in fp32 vs bf16 autocast ({time.strftime('%Y-%m-%d', time.gmtime())})", "",
             f"Made by `benchmarks/train_precision.py`: CPU {cpu['model']} ({isa}), {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}; batch {a.batch} x {a.seq_len} tokens; forward + loss + backward + AdamW; "
             f"median of {a.repeats} alternating repeats (range in brackets); speedup: median of the paired ratios.", "",
             "| model | params | fp32 s/step | bf16 s/step | bf16 speedup |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['fp32_s']:.3f} [{r['fp32_range'][0]:.3f}-{r['fp32_range'][1]:.3f}] | "
                     f"{r['bf16_s']:.3f} [{r['bf16_range'][0]:.3f}-{r['bf16_range'][1]:.3f}] | {r['bf16_speedup']:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        out = Path(a.out)
        atomic_write_text(out.with_suffix(".json"), json.dumps({"cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
                                                                "batch": a.batch, "seq_len": a.seq_len, "rows": rows}, indent=1) + "\n")
        atomic_write_text(out.with_suffix(".md"), text)


if __name__ == "__main__":
    main()
