"""Hostile inputs: malformed architecture.json, config.json and data files, fed to every verb.

Each must end in one clear `error: ...` line and exit status 2 that says what is wrong with the
input (every case names the fragment its message must hold): never a traceback, never a hang,
never a huge allocation (sizes are checked before anything is built: the address space is capped
while the cases run, so an attempt shows up as a failure, and every case has a time limit). A
MemoryError is a failure however it surfaces: raised, or caught and re-worded as an error line
(the exception chain is searched for it), so a loader that wraps it cannot hide an allocation.
"""
from __future__ import annotations

import contextlib
import json
import resource
import shutil
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory import SEQ, assert_one_line_error, kept_arch, make_compact_dir, make_sentences, make_tiny_model
from prunekit.architecture import Architecture
from prunekit.cli import cli
from prunekit.models import load_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

HUGE = 10**12
TIME_LIMIT_S = 60


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    teacher = make_tiny_model(root / "teacher", "minilm6", "classification")
    student = make_compact_dir(root, teacher, kept_arch())
    t = load_teacher(teacher)
    run = root / "run"
    run.mkdir()
    arch = kept_arch()
    arch.meta = {"base_model": {"name_or_path": str(teacher), "kind": "classification"}}
    arch.save(run / "architecture.json", t.shape, SEQ)
    data = root / "data.csv"
    data.write_text("text,label\n" + "\n".join(f"{s},{i % 2}" for i, s in enumerate(make_sentences(24))) + "\n")
    return {"root": root, "teacher": teacher, "student": student, "run": run, "data": data}


@contextlib.contextmanager
def guarded(seconds: int = TIME_LIMIT_S, extra_bytes: int = 3 << 30):
    """Cap this process's address space at what it uses now plus ``extra_bytes``, and interrupt it
    after ``seconds``: a case that tries to build a model of 10**12 neurons, or loops, fails here."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    cap = used + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)

    def alarm(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _exception_chain(e: BaseException | None) -> list[BaseException]:
    chain: list[BaseException] = []
    while e is not None and len(chain) < 32:
        chain.append(e)
        e = e.__cause__ or e.__context__  # `raise ... from None` hides the context from the traceback, not from here
    return chain


def run_capped(args: list[str]):
    """Run the CLI under the caps: it must answer in time and without a MemoryError anywhere in the
    exception chain (then the caller checks its one error line with assert_one_line_error)."""
    with guarded():
        result = CliRunner().invoke(cli, args)
    text = result.output
    assert not isinstance(result.exception, (TimeoutError, MemoryError)), f"{args}: {result.exception!r}"
    wrapped = [e for e in _exception_chain(result.exception) if isinstance(e, MemoryError)]
    assert not wrapped, f"{args}: an attempted huge allocation ({wrapped[0]!r}) was re-worded as: {text}"
    assert "allocate" not in text, text
    return result


# ------------------------------------------------------------------------------------------------
# config.json of a teacher (a Hugging Face BERT) and of a compact model
def _json_edit(**fields):
    def edit(cfg: dict) -> dict:
        return {**cfg, **fields}

    return edit


RAW = {  # the whole file replaced
    "empty": b"",
    "non-utf8": b"\xff\xfe\xfa{\x00\x9c",
    "truncated": b'{"model_type": "bert", "hidden_size": 3',
    "a-list": b"[1, 2, 3]",
    "a-string": b'"bert"',
    "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
    "huge-number": b'{"model_type": "bert", "hidden_size": ' + b"9" * 5000 + b"}",
}
TEACHER_EDITS = {
    "hidden-size-string": _json_edit(hidden_size="large"),
    "layers-float": _json_edit(num_hidden_layers=2.5),
    "heads-null": _json_edit(num_attention_heads=None),
    "negative-hidden": _json_edit(hidden_size=-32),
    "negative-layers": _json_edit(num_hidden_layers=-1),
    "zero-heads": _json_edit(num_attention_heads=0),
    "heads-do-not-divide": _json_edit(num_attention_heads=5),
    "huge-heads": _json_edit(num_attention_heads=HUGE),
    "huge-hidden": _json_edit(hidden_size=HUGE),
    "huge-ffn": _json_edit(intermediate_size=HUGE),
    "huge-vocab": _json_edit(vocab_size=HUGE),
    "huge-layers": _json_edit(num_hidden_layers=10**6),
    "huge-positions": _json_edit(max_position_embeddings=HUGE),
    "huge-labels": _json_edit(num_labels=HUGE, id2label=None, label2id=None),
    "model-type-number": _json_edit(model_type=123),
    "larger-ffn-than-weights": _json_edit(intermediate_size=640),
}
# What each case's error line must say (the same from every verb).
JSON_EXPECT = {
    "empty": "is not valid JSON (Expecting value",
    "non-utf8": "is not UTF-8 text (bad byte at offset 0)",
    "truncated": "is not valid JSON (Expecting ',' delimiter",
    "deep-nesting": "is not valid JSON (nested too deeply)",
    "huge-number": "is not valid JSON (Exceeds the limit (4300 digits)",
}
CONFIG_EXPECT = {
    **JSON_EXPECT,
    "a-list": "is not a model config: a JSON list, not an object",
    "a-string": "is not a model config: a JSON str, not an object",
    "hidden-size-string": "hidden_size must be a whole number in 1..65536, got 'large'",
    "layers-float": "num_hidden_layers must be a whole number in 1..1024, got 2.5",
    "heads-null": "num_attention_heads must be a whole number in 1..4096, got None",
    "negative-hidden": "hidden_size must be a whole number in 1..65536, got -32",
    "negative-layers": "num_hidden_layers must be a whole number in 1..1024, got -1",
    "zero-heads": "num_attention_heads must be a whole number in 1..4096, got 0",
    "heads-do-not-divide": "hidden_size 32 is not a multiple of num_attention_heads 5",
    "huge-heads": f"num_attention_heads must be a whole number in 1..4096, got {HUGE}",
    "huge-hidden": f"hidden_size must be a whole number in 1..65536, got {HUGE}",
    "huge-ffn": f"intermediate_size must be a whole number in 1..1048576, got {HUGE}",
    "huge-vocab": f"vocab_size must be a whole number in 1..8388608, got {HUGE}",
    "huge-layers": "num_hidden_layers must be a whole number in 1..1024, got 1000000",
    "huge-positions": f"max_position_embeddings must be a whole number in 1..1048576, got {HUGE}",
    "huge-labels": f"num_labels must be a whole number in 1..65536, got {HUGE}",
    "model-type-number": 'model_type must be a string such as "bert", got 123',
    "larger-ffn-than-weights": "says intermediate_size = 640, but model.safetensors holds an FFN width of 64",
    "negative-head-count": "num_heads_per_layer must list, for each of the 6 layers, a head count in 0..4",
    "huge-ffn-width": "intermediate_sizes must list, for each of the 6 layers, an FFN width in 0..64",
    "negative-ffn-width": "intermediate_sizes must list, for each of the 6 layers, an FFN width in 0..64",
    "kept-heads-not-lists": "kept_heads must list, for each of the 6 layers, the distinct indices (0..3)",
    "kept-head-out-of-range": "kept_heads must list, for each of the 6 layers, the distinct indices (0..3)",
    "huge-head-dim": f"head_dim must be a whole number in 1..65536, got {HUGE}",
    "widths-a-string": "intermediate_sizes must list, for each of the 6 layers, an FFN width in 0..64",
    "unknown-task-kind": "task_kind must be one of classification, regression, embedding, got 'poetry'",
    "layers-mismatch": "num_heads_per_layer must list, for each of the 7 layers",
}
COMPACT_EDITS = {
    "negative-head-count": _json_edit(num_heads_per_layer=[-1, 2, 2, 2, 2, 2]),
    "huge-ffn-width": _json_edit(intermediate_sizes=[HUGE] * 6),
    "negative-ffn-width": _json_edit(intermediate_sizes=[-4] * 6),
    "kept-heads-not-lists": _json_edit(kept_heads=[1, 3, 1, 3, 1, 3]),
    "kept-head-out-of-range": _json_edit(kept_heads=[[1, HUGE]] * 6),
    "huge-head-dim": _json_edit(head_dim=HUGE),
    "huge-hidden": _json_edit(hidden_size=HUGE),
    "huge-vocab": _json_edit(vocab_size=HUGE),
    "widths-a-string": _json_edit(intermediate_sizes="wide"),
    "unknown-task-kind": _json_edit(task_kind="poetry"),
    "huge-labels": _json_edit(num_labels=HUGE, id2label=None, label2id=None),
    "layers-mismatch": _json_edit(num_hidden_layers=7),
}


def _mutated_model(world, tmp_path: Path, which: str, case: str) -> Path:
    src = world["teacher"] if which == "teacher" else world["student"]
    d = tmp_path / f"{which}-{case}"
    shutil.copytree(src, d)
    cfg = d / "config.json"
    if case in RAW:
        cfg.write_bytes(RAW[case])
    else:
        edits = TEACHER_EDITS if which == "teacher" else COMPACT_EDITS
        cfg.write_text(json.dumps(edits[case](json.loads(cfg.read_text()))))
    return d


def _verb_args(verb: str, world, tmp_path: Path, model: Path) -> list[str]:
    out = str(tmp_path / "out")
    small = ["--batch-size", "8", "--max-length", "16", "--quiet"]
    return {
        "search": ["search", "--model", str(model), "--data", str(world["data"]), "-o", out, "--max-steps", "1", *small],
        "compact": ["compact", "--architecture", str(world["run"] / "architecture.json"), "--model", str(model), "-o", out, "--no-fvcore"],
        "distill": ["distill", str(model), "--data", str(world["data"]), "-o", out, "--stage1-epochs", "1", "--stage2-epochs", "0",
                    "--augment-copies", "0", *small],
        "eval": ["eval", str(model), "--data", str(world["data"]), "--max-length", "16"],
        "export-onnx": ["export-onnx", str(model), "-o", str(tmp_path / "m.onnx")],
        "bench": ["bench", str(model), "--backend", "torch-eager", "--batch", "2", "--seq-len", "16", "--repeats", "1", "--warmup", "0",
                  "--no-fvcore"],
    }[verb]


@pytest.mark.parametrize("case", [*RAW, *TEACHER_EDITS])
@pytest.mark.parametrize("verb", ["search", "compact", "eval", "export-onnx", "bench"])
def test_malformed_teacher_config(world, tmp_path, verb, case):
    model = _mutated_model(world, tmp_path, "teacher", case)
    assert_one_line_error(run_capped(_verb_args(verb, world, tmp_path, model)), CONFIG_EXPECT[case])
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("case", [*RAW, *COMPACT_EDITS])
@pytest.mark.parametrize("verb", ["distill", "eval", "export-onnx", "bench"])
def test_malformed_compact_config(world, tmp_path, verb, case):
    model = _mutated_model(world, tmp_path, "student", case)
    assert_one_line_error(run_capped(_verb_args(verb, world, tmp_path, model)), CONFIG_EXPECT[case])
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------------------
# architecture.json
ARCH_RAW = {**RAW, "deep-nesting": b'{"format": "prunekit-architecture", "layers": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"}


def _arch_edit(fn):
    def edit(doc: dict) -> dict:
        doc = json.loads(json.dumps(doc))
        fn(doc)
        return doc

    return edit


ARCH_EDITS = {
    "no-format": _arch_edit(lambda d: d.pop("format")),
    "layers-a-dict": _arch_edit(lambda d: d.update(layers={"0": d["layers"][0]})),
    "layer-a-list": _arch_edit(lambda d: d["layers"].__setitem__(0, [1, 2])),
    "heads-a-number": _arch_edit(lambda d: d["layers"][0].update(heads=3)),
    "head-index-huge": _arch_edit(lambda d: d["layers"][0].update(heads=[1, HUGE])),
    "head-index-negative": _arch_edit(lambda d: d["layers"][0].update(heads=[-1, 1])),
    "neuron-index-float": _arch_edit(lambda d: d["layers"][0].update(ffn_neurons=[0.5, 1])),
    "neuron-index-bool": _arch_edit(lambda d: d["layers"][0].update(ffn_neurons=[True])),
    "repeated-heads": _arch_edit(lambda d: d["layers"][0].update(heads=[1, 1])),
    "too-many-layers": _arch_edit(lambda d: d["layers"].extend(d["layers"] * 10**4)),
    "too-few-layers": _arch_edit(lambda d: d.update(layers=d["layers"][:2])),
    "huge-neuron-list": _arch_edit(lambda d: d["layers"][0].update(ffn_neurons=list(range(200_000)))),
    "other-hidden-size": _arch_edit(lambda d: d["shape"].update(hidden_size=HUGE)),
    "base-model-a-list": _arch_edit(lambda d: d.update(base_model=["x"])),
    "seq-len-huge": _arch_edit(lambda d: d["flops"].update(seq_len=HUGE)),
}
NOT_ARCH = "is not a prunekit architecture file (missing format/layers)"
ARCH_EXPECT = {
    **JSON_EXPECT,
    "a-list": NOT_ARCH,
    "a-string": NOT_ARCH,
    "no-format": NOT_ARCH,
    "layers-a-dict": NOT_ARCH,
    "layer-a-list": "layer 0 is not an object",
    "heads-a-number": "layer 0 needs lists 'heads' and 'ffn_neurons'",
    "head-index-huge": "layer 0 lists head indices outside 0..3 or repeated",
    "head-index-negative": "layer 0 lists head indices outside 0..3 or repeated",
    "neuron-index-float": "layer 0 has non-integer indices",
    "neuron-index-bool": "layer 0 has non-integer indices",
    "repeated-heads": "layer 0 lists head indices outside 0..3 or repeated",
    "too-many-layers": "has 60006 layers but the model has 6",
    "too-few-layers": "has 2 layers but the model has 6",
    "huge-neuron-list": "layer 0 claims ffn_width 31 but lists 200000 FFN neurons",  # its count disagrees first
    "other-hidden-size": f"was searched for a model with hidden size {HUGE}, this one has 32",
    "base-model-a-list": "base_model and flops must be JSON objects",
    "seq-len-huge": f"flops.seq_len must be a whole number of tokens in 1..1048576, got {HUGE}",
}


@pytest.mark.parametrize("case", [*ARCH_RAW, *ARCH_EDITS])
@pytest.mark.parametrize("form", ["run-dir", "--architecture"])
def test_malformed_architecture(world, tmp_path, case, form):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    path = run / "architecture.json"
    if case in ARCH_RAW:
        path.write_bytes(ARCH_RAW[case])
    else:
        path.write_text(json.dumps(ARCH_EDITS[case](json.loads(path.read_text()))))
    out = str(tmp_path / "out")
    if form == "run-dir":
        args = ["compact", str(run), "-o", out, "--no-fvcore"]
    else:
        args = ["compact", "--architecture", str(path), "--model", str(world["teacher"]), "-o", out, "--no-fvcore"]
    assert_one_line_error(run_capped(args), ARCH_EXPECT[case])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# data files
DATA = {
    "empty.txt": b"",
    "blank-lines.txt": b"\n \n\t\n",
    "non-utf8.txt": b"a fine line\n\xff\xfe bad bytes \x81\n",
    "non-utf8.csv": b"text,label\n\xe9t\xe9,1\n",
    "binary.jsonl": bytes(range(256)) * 4,
    "header-only.csv": b"text,label\n",
    "ragged.csv": b"text,label\nok,1\ntoo,many,fields,0\n",
    "unclosed-quote.csv": b'text,label\n"never closed,1\nnext,0\n',
    "label-missing.csv": b"text,label\nok,1\nno label,\n",
    "not-objects.jsonl": b'["text", "label"]\n',
    "truncated.jsonl": b'{"text": "fine", "label": 1}\n{"text": "cut',
    "text-null.jsonl": b'{"text": null, "label": 1}\n',
    "text-a-dict.jsonl": b'{"text": {"nested": "x"}, "label": 1}\n',
    "huge-number.jsonl": b'{"text": "x", "label": ' + b"9" * 5000 + b"}\n",
    "deep-nesting.jsonl": b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
    "one-class.csv": b"text,label\na,yes\nb,yes\n",
    "labels-objects.jsonl": b'{"text": "a", "label": [1]}\n{"text": "b", "label": 0}\n',
    "unknown.bin": b"text\n",
}
DATA_EXPECT = {
    "empty.txt": "no examples in",
    "blank-lines.txt": "no examples in",
    "non-utf8.txt": "non-utf8.txt is not UTF-8 text (bad byte at line 2)",
    "non-utf8.csv": "non-utf8.csv is not UTF-8 text (bad byte at line 2)",
    "binary.jsonl": "binary.jsonl is not UTF-8 text",
    "header-only.csv": "has a header but no rows",
    "ragged.csv": "malformed CSV at line 3: 4 fields but the header has 2",
    "unclosed-quote.csv": "malformed CSV at line 3: unexpected end of data",
    "label-missing.csv": "line 3 has no value in label column 'label'",
    "not-objects.jsonl": "malformed JSONL at line 1: a list, not an object",
    "truncated.jsonl": "malformed JSONL at line 2: Unterminated string",
    "text-null.jsonl": "line 1 has no text in column 'text'",
    "text-a-dict.jsonl": "line 1: column 'text' holds a dict, not text",
    "huge-number.jsonl": "malformed JSONL at line 1: Exceeds the limit (4300 digits)",
    "deep-nesting.jsonl": "malformed JSONL at line 1: nested too deeply",
    "one-class.csv": "label column 'label' holds one value only ('yes')",
    "labels-objects.jsonl": "line 1: column 'label' holds a list, not text",
    "unknown.bin": "unknown extension '.bin'",
}


@pytest.mark.parametrize("name", list(DATA))
@pytest.mark.parametrize("verb", ["search", "distill", "eval", "bench"])
def test_malformed_data(world, tmp_path, verb, name):
    data = tmp_path / name
    data.write_bytes(DATA[name])
    out = str(tmp_path / "out")
    small = ["--batch-size", "8", "--max-length", "16", "--quiet"]
    args = {
        "search": ["search", "--model", str(world["teacher"]), "--data", str(data), "-o", out, "--max-steps", "1", *small],
        "distill": ["distill", str(world["student"]), "--data", str(data), "-o", out, "--stage1-epochs", "1", "--stage2-epochs", "0",
                    "--augment-copies", "0", *small],
        "eval": ["eval", str(world["student"]), "--data", str(data), "--max-length", "16"],
        "bench": ["bench", str(world["student"]), "--real-lengths", str(data), "--backend", "torch-eager", "--batch", "2", "--seq-len", "16",
                  "--repeats", "1", "--warmup", "0", "--no-fvcore"],
    }[verb]
    assert_one_line_error(run_capped(args), DATA_EXPECT[name])
    assert not (tmp_path / "out").exists()


def test_every_case_says_what_its_message_must_hold():
    assert set(CONFIG_EXPECT) == {*RAW, *TEACHER_EDITS, *COMPACT_EDITS}
    assert set(ARCH_EXPECT) == {*ARCH_RAW, *ARCH_EDITS} and set(DATA_EXPECT) == set(DATA) and set(WEIGHTS_EXPECT) == set(WEIGHTS)


@pytest.mark.parametrize("verb,model", [("search", "teacher"), ("compact", "teacher"), ("distill", "student"), ("eval", "student"),
                                        ("export-onnx", "student"), ("bench", "student")])
def test_the_unmutated_inputs_work(world, tmp_path, verb, model):
    """The fuzz cases fail because of what was mutated: the same commands on the valid files succeed."""
    with guarded():
        result = CliRunner().invoke(cli, _verb_args(verb, world, tmp_path, world[model]))
    assert result.exit_code == 0, (verb, result.output, result.exception)
    assert (tmp_path / "m.onnx").is_file() if verb == "export-onnx" else (tmp_path / "out").is_dir() or verb in ("eval", "bench")
    assert Architecture.load(world["run"]).head_counts == [2] * 6


@pytest.mark.parametrize("verb,option,value,expect", [
    ("search", "--epochs", "1e12", "steps; a run may have at most 1e+09"),
    ("search", "--max-steps", str(10**13), "--max-steps must be in 1..1000000000"),
    ("distill", "--stage1-epochs", "1e12", "steps; a run may have at most 1e+09"),
    ("distill", "--stage2-epochs", "1e12", "steps; a run may have at most 1e+09"),
])
def test_absurd_step_counts(world, tmp_path, verb, option, value, expect):
    """Epochs or steps that come to more steps than a run can take: one line, before any work (a set of
    one entry per epoch, or a loop that would not end, was the outcome)."""
    args = _verb_args(verb, world, tmp_path, world["teacher" if verb == "search" else "student"])
    if option == "--epochs":
        del args[args.index("--max-steps"):args.index("--max-steps") + 2]
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    assert_one_line_error(run_capped(args), expect)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_loaders_let_a_memory_error_through(world, monkeypatch):
    """A MemoryError is not a corrupt input: the loaders re-raise it rather than re-word it (a checkpoint
    that cannot be allocated is not skipped as corrupt, either)."""
    import safetensors.torch
    import transformers

    from prunekit.checkpoint import load_latest_checkpoint, write_checkpoint

    def no_memory(*a, **kw):
        raise MemoryError("simulated")

    with monkeypatch.context() as m:
        m.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", no_memory)
        with pytest.raises(MemoryError):
            load_teacher(world["teacher"])
    import torch

    write_checkpoint(world["root"] / "ckpts", 1, {"x": torch.zeros(2)}, {})
    monkeypatch.setattr(safetensors.torch, "load_file", no_memory)
    with pytest.raises(MemoryError):
        load_latest_checkpoint(world["root"] / "ckpts")


@pytest.mark.parametrize("verb", ["search", "distill", "eval", "eval-teacher", "bench"])
def test_max_length_beyond_the_position_embeddings(world, tmp_path, verb):
    long = tmp_path / "long.txt"
    long.write_text("\n".join(" ".join(make_sentences(15, seed=i)) for i in range(12)) + "\n")  # ~100 tokens a line; the model has 64 positions
    model = world["teacher"] if verb in ("search", "eval-teacher") else world["student"]
    args = _verb_args(verb.split("-")[0], world, tmp_path, model)
    if verb == "bench":
        args[args.index("--seq-len") + 1] = "100"
        assert_one_line_error(run_capped(args), "--seq-len 100: the model takes 1..64 tokens")
        return
    args[args.index("--data") + 1] = str(long)
    args[args.index("--max-length") + 1] = "100"
    assert_one_line_error(run_capped(args), "--max-length 100 is longer than")


def _fewer_positions(src: Path, dst: Path, n: int) -> Path:
    """A copy of a model dir whose position-embedding table has ``n`` rows."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": n}))
    weights = load_file(str(dst / "model.safetensors"))
    for k in weights:
        if "position_embeddings" in k:
            weights[k] = weights[k][:n].contiguous()
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_length_beyond_the_positions_of_a_second_model(world, tmp_path):
    """The limit is every model's, not only the first one's: bench's models, eval's reference, an exported file;
    eval's default --max-length (128) is no error on texts short enough for the model (64 positions)."""
    short = _fewer_positions(world["teacher"], tmp_path / "short", 32)
    bench = ["bench", str(world["teacher"]), str(short), *_verb_args("bench", world, tmp_path, world["teacher"])[2:]]
    bench[bench.index("--seq-len") + 1] = "48"
    assert_one_line_error(run_capped(bench), "--seq-len 48: the model takes 1..32 tokens")
    data = tmp_path / "data.txt"  # ~100 tokens a line: the limit matters only when the texts are that long
    data.write_text("\n".join(" ".join(make_sentences(15, seed=i)) for i in range(4)) + "\n")
    line = assert_one_line_error(run_capped(["eval", str(world["teacher"]), "--data", str(data), "--reference", str(short),
                                             "--max-length", "48"]), "--max-length 48 is longer than")
    assert "short" in line
    onnx = tmp_path / "m.onnx"
    assert CliRunner().invoke(cli, ["export-onnx", str(world["student"]), "-o", str(onnx)]).exit_code == 0
    assert_one_line_error(run_capped(["eval", str(onnx), "--data", str(data), "--reference", str(world["teacher"]),
                                      "--max-length", "100"]), "(64 positions)")
    result = CliRunner().invoke(cli, ["eval", str(world["student"]), "--data", str(world["data"])])
    assert result.exit_code == 0, result.output


WEIGHTS = {
    "cut-short": lambda b: b[: len(b) // 2],
    "header-length-huge": lambda b: (2**60).to_bytes(8, "little") + b[8:],
    "header-not-json": lambda b: b[:8] + b"\xff" * (len(b) - 8),
    "empty": lambda b: b"",
}
WEIGHTS_EXPECT = {
    "cut-short": "is corrupt or incomplete (cut short:",
    "header-length-huge": "is corrupt or incomplete (its header is cut short or of impossible length)",
    "header-not-json": "is corrupt or incomplete (its header is not valid JSON)",
    "empty": "is corrupt or incomplete (its header is cut short or of impossible length)",
}


@pytest.mark.parametrize("case", list(WEIGHTS))
@pytest.mark.parametrize("which,verb", [("teacher", "search"), ("teacher", "export-onnx"), ("student", "distill"), ("student", "eval")])
def test_malformed_weights_file(world, tmp_path, which, verb, case):
    d = tmp_path / which
    shutil.copytree(world[which], d)
    weights = d / "model.safetensors"
    weights.write_bytes(WEIGHTS[case](weights.read_bytes()))
    assert_one_line_error(run_capped(_verb_args(verb, world, tmp_path, d)), WEIGHTS_EXPECT[case])
