"""Tiny random BERT models and sentences the tests make themselves (imported by conftest and tests)."""
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


def stop_after(n: int):
    """An ``on_step`` callback for search and distill that stops the run like a kill (KeyboardInterrupt)
    once step ``n`` is done (its checkpoint, if due, written)."""

    def on_step(step: int) -> None:
        if step >= n:
            raise KeyboardInterrupt

    return on_step
