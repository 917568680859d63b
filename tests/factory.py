"""What the tests make themselves and check with (imported by conftest and the test files): tiny
random BERT models and sentences, compact models and search run dirs cut from them, and the check
that a command failed with one clear error line."""
from __future__ import annotations

import random
from pathlib import Path

WORDS = (
    "the a model small large fast slow river stone light dark green red blue runs jumps sleeps reads "
    "writes quickly slowly over under near far city forest music paper window garden bird fish tree "
    "happy sad bright quiet loud old new cold warm good bad"
).split()

# Tiny configs with the structure of the shapes prunekit supports (layers; heads of a width that is
# not a power of two, as TinyBERT's 26).
TINY_SHAPES = {
    "tinybert4": dict(num_hidden_layers=4, hidden_size=36, num_attention_heads=12, intermediate_size=48),
    "minilm6": dict(num_hidden_layers=6, hidden_size=32, num_attention_heads=4, intermediate_size=64),
    "bert12": dict(num_hidden_layers=12, hidden_size=24, num_attention_heads=4, intermediate_size=40),
}


def make_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(n)]


def make_tiny_model(path: Path, shape: str = "tinybert4", kind: str = "embedding", num_labels: int = 2, seed: int = 0) -> Path:
    """A random BERT of a tiny shape, saved as a Hugging Face model dir with its own tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # positional: transformers 5 ignores vocab_file= here and builds a 5-token vocabulary
    tok = BertTokenizerFast(str(path / "vocab.txt"))
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=64, **TINY_SHAPES[shape])
    torch.manual_seed(seed)
    if kind == "embedding":
        config.architectures = ["BertModel"]
        model = BertModel(config, add_pooling_layer=False)
    else:
        config.num_labels = 1 if kind == "regression" else num_labels
        if kind == "regression":
            config.problem_type = "regression"
        model = BertForSequenceClassification(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# Distillation worlds: a teacher with weights away from the init, and a student compacted from it.
SEQ = 32


def real_tokenizer(path: Path) -> Path:
    """Re-save a model dir's tokenizer from its vocab.txt, so that it knows every word (transformers 5
    ignores ``vocab_file=``, and a tokenizer built that way maps every word to [UNK]; augmentation and
    vocabulary checks need the real words)."""
    from transformers import BertTokenizerFast

    for f in ("tokenizer.json", "tokenizer_config.json"):
        (path / f).unlink(missing_ok=True)
    BertTokenizerFast(str(path / "vocab.txt")).save_pretrained(path)  # positional: `vocab` in 5.x, `vocab_file` in 4.x
    return path


def scrambled_teacher_dir(path: Path, kind: str, seed: int = 0) -> Path:
    """A tiny teacher with weights well away from the init (outputs of size ~1, peaked attention)."""
    make_tiny_model(path, "minilm6", kind, seed=seed)
    real_tokenizer(path)
    import torch

    from prunekit.models import load_teacher

    t = load_teacher(path)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in t.model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "LayerNorm.weight" in name else 0.15 * noise)
    t.model.save_pretrained(path)
    return path


def kept_arch(layers: int = 6):
    """Heads 1 and 3 of 4 everywhere (never 0, 1: a wrong mapping cannot pass by accident), half the FFN."""
    import torch

    from prunekit.architecture import Architecture

    g = torch.Generator().manual_seed(1)
    heads = torch.zeros(layers, 4)
    heads[:, [1, 3]] = 1.0
    ffn = (torch.rand(layers, 64, generator=g) < 0.5).float()
    return Architecture.from_masks(heads, ffn)


def make_compact_dir(root: Path, teacher_dir: Path, arch, name: str = "compact") -> Path:
    from prunekit.compact import compact_to_dir
    from prunekit.models import load_teacher

    t = load_teacher(teacher_dir)
    arch.save(root / f"{name}-arch.json", t.shape, SEQ)
    out = root / name
    compact_to_dir(None, root / f"{name}-arch.json", out, model=str(teacher_dir), measure_fvcore=False)
    return out


def labelled_csv(path: Path, n: int = 48, seed: int = 1) -> Path:
    sents = make_sentences(n, seed=seed)
    path.write_text("text,label\n" + "\n".join(f"{s},{int('river' in s or 'tree' in s)}" for s in sents) + "\n")
    return path


# Compact models with uneven heads, search run dirs, random batches.
def scramble(model, seed: int) -> None:
    """Weights well away from the tiny init (std 0.02), so that parity is tested on outputs of size ~1."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if "LayerNorm.weight" in name else 0.3 * noise)


def edge_architecture(shape, seed: int):
    """Random kept sets, plus: layer 0 keeps everything, layer 1 no heads, layer 2 no FFN, layer 3
    nothing at all, layer 4 (if any) a single head."""
    import torch

    from prunekit.architecture import Architecture

    g = torch.Generator().manual_seed(seed)
    heads = (torch.rand(shape.num_layers, shape.num_heads, generator=g) < 0.5).float()
    ffn = (torch.rand(shape.num_layers, shape.intermediate_size, generator=g) < 0.5).float()
    heads[0], ffn[0] = 1.0, 1.0
    heads[1] = 0.0
    ffn[2] = 0.0
    heads[3], ffn[3] = 0.0, 0.0
    if shape.num_layers > 4:
        heads[4] = 0.0
        heads[4, shape.num_heads - 1] = 1.0
    return Architecture.from_masks(heads, ffn)


def uneven_compact_dir(tiny_models, tmp_path: Path, shape: str, kind: str, seed: int = 3):
    """A compact model with uneven heads (full layer, no heads, no FFN, nothing, single head) cut from
    a scrambled tiny teacher and saved under ``tmp_path``: (its dir, its config)."""
    from prunekit.compact import compact
    from prunekit.models import load_teacher

    teacher = load_teacher(str(tiny_models(shape, kind)))
    scramble(teacher.model, seed)
    model = compact(teacher, edge_architecture(teacher.shape, seed))
    out = tmp_path / f"{shape}-{kind}-compact"
    model.save_pretrained(out)
    return out, model.config


def make_run_dir(path: Path, teacher, arch, seq_len: int = 32) -> Path:
    """A search run dir holding ``arch`` as the search of ``teacher`` would have written it."""
    from prunekit.architecture import config_hash

    path.mkdir(parents=True, exist_ok=True)
    arch.meta = {
        "method": "random",
        "base_model": {
            "name_or_path": teacher.name_or_path,
            "model_type": teacher.config.model_type,
            "kind": teacher.kind,
            "config_hash": config_hash(teacher.shape, teacher.config.vocab_size),
        },
    }
    arch.save(path / "architecture.json", teacher.shape, seq_len)
    return path


def random_batch(vocab: int, batch: int, length: int, seed: int) -> dict:
    """Random token ids with padding (row 0 full length) and random token types."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    lens = torch.randint(1, length + 1, (batch,), generator=g)
    lens[0] = length
    mask = (torch.arange(length)[None, :] < lens[:, None]).long()
    types = (torch.rand(batch, length, generator=g) < 0.5).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types * mask}


# What every bad input must get from the CLI.
def assert_one_line_error(result, *needles: str) -> str:
    """``result`` (a click ``Result``) failed as every bad input must: exit status 2 and exactly one
    non-empty output line, ``error: ...``, holding each of ``needles``; no traceback. Returns the line."""
    out = result.output
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert result.exit_code == 2, f"exit {result.exit_code}, not 2: {out}\n{result.exception!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line:\n{out}"
    assert "Traceback" not in out, out
    for n in needles:
        assert n in lines[0], f"{n!r} not in: {lines[0]}"
    return lines[0]


def stop_after(n: int):
    """An ``on_step`` callback for search and distill that stops the run like a kill (KeyboardInterrupt)
    once step ``n`` is done (its checkpoint, if due, written)."""

    def on_step(step: int) -> None:
        if step >= n:
            raise KeyboardInterrupt

    return on_step


def tiny_roberta_teacher():
    """A scrambled tiny RoBERTa classifier as a Teacher (no tokenizer), and a padded batch of its ids
    (padding is its pad token, 1; its positions count from there)."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from prunekit.flops import ModelShape
    from prunekit.models import Teacher

    config = RobertaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48,
                           max_position_embeddings=40, pad_token_id=1, type_vocab_size=1, num_labels=3)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = RobertaForSequenceClassification(config).eval()
    scramble(hf, 7)
    teacher = Teacher(model=hf, tokenizer=None, kind="classification", name_or_path="tiny-roberta", shape=ModelShape.from_config(config))
    batch = random_batch(40, 4, 12, seed=9)
    batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 1)
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    return teacher, batch


def assert_pair_rows(rows: list[dict], docs: list[tuple[str, str, str]], name) -> None:
    """Rows of a two-segment real task against their (text, pair, group) docs: a match pairs a text with
    its own pair, a mismatch with another name's pair (``name`` reads it) of the same group."""
    own = {d[0]: (d[1], d[2]) for d in docs}
    group_of = {d[1]: d[2] for d in docs}
    for r in rows:
        pair, group = own[r["text"]]
        if r["label"] == "match":
            assert r["text_pair"] == pair
        else:
            assert name(r["text_pair"]) != name(pair) and group_of[r["text_pair"]] == group


def load_real_task_script(name: str):
    """A script of benchmarks/real_tasks imported under a name of its own (``build`` is also pypa's
    package), with that folder on sys.path for their imports of each other (troff, task_files)."""
    import importlib.util
    import sys

    folder = Path(__file__).resolve().parents[1] / "benchmarks" / "real_tasks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"real_tasks_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
