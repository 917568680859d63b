"""What ``gpu_e2e.py``, ``gpu_probe.py`` and ``gpu_kernels.py`` share (a module they import, not a
script: it writes nothing): the log with elapsed time, the output folder, the environment record,
relative error, a markdown table, the random-weight BERT teachers of gpu_e2e.py and their batches,
a CUDA-graph capture of the original model and a per-kernel profile (the architectures come from
``random_models.random_arch``).

Importing it needs torch only: no CUDA, Triton, transformers or prunekit (those are imported inside
the functions, after ``checkout_imports.use_checkout`` has made the checkout importable), so the
GPU scripts still import, and show ``--help``, on a machine without a GPU.
"""
from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from checkout_imports import REPO

T0 = time.time()  # the scripts' clock: log times, time budgets and the total are counted from here


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def out_dir(arg: Path | None, sub: str = "") -> Path:
    """Where results go: ``--out`` if given, else ``$OUT/<sub>`` when ``$OUT`` is set (the lent
    machine's folder that comes back), else ``benchmarks/results/<sub>``."""
    if arg is not None:
        return Path(arg)
    base = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks" / "results"
    return base / sub if sub else base


def environment() -> dict:
    """Versions, device and threads, for the results file."""
    env = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
               platform=platform.platform(), threads=torch.get_num_threads(),
               triton_interpret=os.environ.get("TRITON_INTERPRET", "0"))
    for mod in ("triton", "transformers"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            env[mod] = f"unavailable ({exc})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), sm=f"{p.major}.{p.minor}",
                   sms=p.multi_processor_count, gpu_mem_gib=round(p.total_memory / 2**30, 1))
    else:
        interpreted = " (Triton interpreter)" if env["triton_interpret"] == "1" else ""
        env["device"] = f"cpu{interpreted}"
    return env


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``||x - ref|| / ||ref||`` in float64 (the absolute norm when ``ref`` is zero)."""
    x, ref = x.double(), ref.double()
    den = ref.norm().item()
    num = (x - ref).norm().item()
    return num / den if den > 0 else num


def fmt_cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.2e}"
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    return str(v)


def md_table(rows: list[dict], cols: list[str], fmt: Callable[[object], str] = fmt_cell) -> str:
    """A markdown table of ``cols`` from ``rows`` (a missing key is ``-``)."""
    if not rows:
        return "_(none)_\n"
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------
# Random-weight models and batches (gpu_e2e.py times them; gpu_probe.py probes its first one)
# ------------------------------------------------------------------------------------------------
def model_configs(quick: bool) -> dict:
    """The models (random weights) and shapes of gpu_e2e.py; ``quick``: tiny ones for a CPU smoke test."""
    if quick:
        models = {
            "bert-tiny": dict(kind="classification", num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128),
            "minilm-tiny": dict(kind="embedding", num_hidden_layers=3, hidden_size=48, num_attention_heads=4, intermediate_size=96),
        }
        return dict(quick=True, models=models, vocab=120, max_pos=64, seq_len=16, batches=[1, 4], target=0.3,
                    check_batch=3, warmup=5, rep=20, budget=240)
    models = {
        # BERT-base: 12 layers, 12 heads of 64, FFN 3072 (a GLUE classifier).
        "bert-base": dict(kind="classification", num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
        # all-MiniLM-L6-v2: 6 layers, 12 heads of 32, FFN 1536 (a sentence-embedding model).
        "minilm-l6": dict(kind="embedding", num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    }
    return dict(quick=False, models=models, vocab=30522, max_pos=512, seq_len=128, batches=[1, 32, 128], target=0.3,
                check_batch=16, warmup=25, rep=100, budget=200)


def set_attn(model, name: str):
    """Switch a transformers model's attention implementation (older transformers: via its config)."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name
    return model


def build_teacher(name: str, spec: dict, cfg: dict, dev: str):
    """A prunekit ``Teacher`` around a random-weight BERT of ``spec`` (eager attention, no grads)."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    from prunekit.flops import ModelShape
    from prunekit.models import Teacher

    spec = dict(spec)
    kind = spec.pop("kind")
    config = BertConfig(vocab_size=cfg["vocab"], max_position_embeddings=cfg["max_pos"], **spec)
    torch.manual_seed(0)
    with torch.device(dev):
        if kind == "embedding":
            model = BertModel(config, add_pooling_layer=False)
        else:
            config.num_labels = 2
            model = BertForSequenceClassification(config)
    set_attn(model.eval(), "eager")
    for p in model.parameters():
        p.requires_grad_(False)
    shape = ModelShape.from_config(config, num_labels=0 if kind == "embedding" else 2)
    return Teacher(model=model, tokenizer=None, kind=kind, name_or_path=name, shape=shape)


def mixed_lengths(batch: int, max_len: int, mean_frac: float = 1.0 / 3.0) -> torch.Tensor:
    """Lengths with mean ~ ``mean_frac * max_len`` (exponential-ish, like GLUE sentences), one at
    ``max_len``; drawn from torch's global generator."""
    lens = torch.distributions.Exponential(1.0 / (mean_frac * max_len)).sample((batch,))
    lens = lens.clamp(1, max_len).round().long()
    lens[0] = max_len
    return lens


def make_batch(batch: int, seq_len: int, vocab: int, mixed: bool, dev: str, seed: int) -> dict:
    """Random token ids; ``mixed``: :func:`mixed_lengths`, else every sequence ``seq_len`` long."""
    g = torch.Generator().manual_seed(seed)
    lens = mixed_lengths(batch, seq_len) if mixed else torch.full((batch,), seq_len)
    mask = (torch.arange(seq_len)[None, :] < lens[:, None]).long()
    ids = torch.randint(1000 if vocab > 2000 else 5, vocab, (batch, seq_len), generator=g) * mask
    return {"input_ids": ids.to(dev), "attention_mask": mask.to(dev), "token_type_ids": torch.zeros_like(ids).to(dev),
            "mean_len": float(lens.float().mean())}


def inputs(batch: dict) -> dict:
    """The model's inputs of a :func:`make_batch` batch."""
    return {k: v for k, v in batch.items() if k != "mean_len"}


def graph_original(model, feed: dict, with_mask: bool):
    """The original model replayed from a CUDA graph (what a user could do to it too). Inputs as
    transformers would use them without syncing: no mask (its own eager choice when nothing is
    padded), or the key-padding mask already 4-D ([B, 1, 1, T], True = attend), which its mask
    code returns as is (no data-dependent check inside the capture)."""
    mask = feed["attention_mask"]
    static = {"input_ids": feed["input_ids"].clone(), "token_type_ids": feed["token_type_ids"].clone()}
    if with_mask:
        static["attention_mask"] = mask[:, None, None, :].bool().clone()
    from prunekit.cuda_graphs import capture_graph

    graph, out = capture_graph(lambda: model(**static), torch.device("cuda"))

    def run(input_ids, attention_mask, token_type_ids):
        static["input_ids"].copy_(input_ids)
        static["token_type_ids"].copy_(token_type_ids)
        if "attention_mask" in static:
            static["attention_mask"].copy_(attention_mask[:, None, None, :].bool())
        graph.replay()
        return out

    return run, out


def kernels_by_name(fn, reps: int = 5) -> list[dict]:
    """Each CUDA kernel of one forward (torch.profiler over ``reps`` forwards): name, launches and
    microseconds per forward, the longest first."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        if us is None:
            us = getattr(e, "self_cuda_time_total", 0)
        if us:
            rows.append(dict(kernel=e.key, launches=e.count / reps, us=us / reps))
    return sorted(rows, key=lambda r: -r["us"])
