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
