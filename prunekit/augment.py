"""TinyBERT-style data augmentation: copies of each example with some whole words replaced.

For every word of a text that the vocabulary holds as one token, a list of ``top_k`` replacement
candidates is made; each augmented copy then replaces each such word with probability ``prob`` by
one of its candidates, drawn at random. Candidates come from

* a masked-LM model when one is given (``mlm_dir``): the word is masked in its sentence and the
  model's most likely whole-word tokens fill it (TinyBERT's method);
* otherwise the teacher's own input-embedding space: the ``top_k`` tokens nearest to the word by
  cosine similarity (TinyBERT used GloVe for this; the teacher's embeddings need no download).

Only whole words are replaced, by whole words: a word the tokenizer splits into pieces is kept,
sub-word pieces (``##ing``) and special tokens (``[SEP]``, ``<s>``, ...) are never candidates, and
special-token strings written in a text are never touched. A copy therefore has the same number
of words as its original. Everything is drawn from ``seed``: the same inputs give the same copies.
"""
from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import PrunekitError

log = logging.getLogger(__name__)

WORD = re.compile(r"(?<!\w)[^\W\d_]+(?!\w)")  # letters only, not glued to digits or "_" (7bit, x_1 stay)


def _match_case(word: str, like: str) -> str:
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


@dataclass
class AugmentedData:
    """The originals followed by their copies; ``origin[i]`` is the index of the original of example i."""

    dataset: object  # a TextDataset
    origin: list[int]
    is_original: list[bool]


class WordReplacer:
    """Candidates for whole-word replacement and the sampling of augmented copies."""

    def __init__(self, tokenizer, embeddings: torch.Tensor | None = None, mlm=None, mlm_tokenizer=None, top_k: int = 15, prob: float = 0.4):
        if embeddings is None and mlm is None:
            raise ValueError("WordReplacer needs the teacher's input embeddings or a masked-LM model")
        self.tokenizer, self.top_k, self.prob = tokenizer, top_k, prob
        self.mlm, self.mlm_tokenizer = mlm, mlm_tokenizer or tokenizer
        self.specials = [s for s in getattr(tokenizer, "all_special_tokens", []) if s]
        if mlm is not None:
            self.specials += [s for s in getattr(self.mlm_tokenizer, "all_special_tokens", []) if s and s not in self.specials]
        self._word_ids = self._whole_word_ids(self.mlm_tokenizer if mlm is not None else tokenizer)
        self._cache: dict[str, list[str]] = {}
        if embeddings is not None and mlm is None:
            ids = torch.tensor(sorted(self._word_ids), dtype=torch.long)
            self._cand_ids = ids
            e = embeddings.detach().float().cpu()
            self._emb = e
            self._cand_unit = torch.nn.functional.normalize(e[ids], dim=-1)

    # -------------------------------------------------------------- vocabulary
    @staticmethod
    def _whole_word_ids(tokenizer) -> dict[int, str]:
        """Token id -> word, for the tokens that are a whole alphabetic word on their own and not special."""
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special_strs = set(getattr(tokenizer, "all_special_tokens", []) or [])
        vocab = tokenizer.get_vocab()
        words: dict[int, str] = {}
        for tok, i in vocab.items():
            if i in special or tok in special_strs or tok.startswith("[") or tok.startswith("<"):
                continue
            text = tokenizer.convert_tokens_to_string([tok]).strip()
            if text.isalpha() and (len(text) > 1 or text.lower() in ("a", "i")):
                words[i] = text
        if not words:
            return {}
        # Keep only tokens that a lone word tokenises back to (drops "##ing"-style pieces).
        ids, texts = list(words), list(words.values())
        enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return {i: t for i, t, e in zip(ids, texts, enc) if e == [i]}

    def _single_id(self, word: str, tokenizer) -> int | None:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] in self._word_ids:
            return ids[0]
        return None

    # -------------------------------------------------------------- candidates
    def neighbours(self, word: str) -> list[str]:
        """The ``top_k`` whole words nearest to ``word`` in the input-embedding space (cosine)."""
        key = word.lower()
        if key in self._cache:
            return self._cache[key]
        tid = self._single_id(word, self.tokenizer)
        out: list[str] = []
        if tid is not None:
            sims = self._cand_unit @ torch.nn.functional.normalize(self._emb[tid], dim=0)
            order = torch.topk(sims, min(len(sims), self.top_k + 1)).indices.tolist()
            own = self._word_ids[tid].lower()
            out = [self._word_ids[int(self._cand_ids[j])] for j in order if int(self._cand_ids[j]) != tid]
            out = [w for w in out if w.lower() != own][: self.top_k]
        self._cache[key] = out
        return out

    @torch.no_grad()
    def mlm_candidates(self, text: str, spans: list[tuple[int, int]]) -> list[list[str]]:
        """For each word span, the masked-LM's ``top_k`` whole words in its place (empty if not one token)."""
        tok = self.mlm_tokenizer
        mask = tok.mask_token
        out: list[list[str]] = [[] for _ in spans]
        todo = [(k, s, e) for k, (s, e) in enumerate(spans) if self._single_id(text[s:e], tok) is not None]
        if not todo or mask is None:
            return out
        variants = [text[:s] + mask + text[e:] for _, s, e in todo]
        enc = tok(variants, return_tensors="pt", padding=True, truncation=True, max_length=256, return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping")
        device = next(self.mlm.parameters()).device
        logits = self.mlm(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu()
        allowed = torch.full((logits.shape[-1],), float("-inf"))
        allowed[[i for i in self._word_ids if i < logits.shape[-1]]] = 0.0
        for row, (k, s, e) in enumerate(todo):
            pos = [j for j, (a, b) in enumerate(offsets[row].tolist()) if a == s and b == s + len(mask)]
            if not pos:  # the mask fell beyond the truncation
                continue
            scores = logits[row, pos[0]] + allowed
            own = text[s:e].lower()
            best = torch.topk(scores, min(self.top_k + 1, int(torch.isfinite(scores).sum()))).indices.tolist()
            out[k] = [w for w in (self._word_ids[i] for i in best) if w.lower() != own][: self.top_k]
        return out

    def _protected(self, text: str) -> list[tuple[int, int]]:
        spans = []
        for s in self.specials:
            start = text.find(s)
            while start >= 0:
                spans.append((start, start + len(s)))
                start = text.find(s, start + 1)
        return spans

    def word_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the words that may be replaced (special-token strings excluded)."""
        protected = self._protected(text)
        return [(m.start(), m.end()) for m in WORD.finditer(text) if not any(a < m.end() and m.start() < b for a, b in protected)]

    def candidates(self, text: str) -> tuple[list[tuple[int, int]], list[list[str]]]:
        spans = self.word_spans(text)
        if self.mlm is not None:
            return spans, self.mlm_candidates(text, spans)
        return spans, [self.neighbours(text[s:e]) for s, e in spans]

    # -------------------------------------------------------------- sampling
    def copies(self, text: str, n: int, rng: random.Random) -> list[str]:
        """``n`` augmented copies of ``text`` (a copy identical to the text is dropped)."""
        spans, cands = self.candidates(text)
        out = []
        for _ in range(n):
            pieces, last, changed = [], 0, False
            for (s, e), c in zip(spans, cands):
                if c and rng.random() < self.prob:
                    pieces += [text[last:s], _match_case(rng.choice(c), text[s:e])]
                    last, changed = e, True
            if changed:
                out.append("".join(pieces) + text[last:])
        return out


def build_replacer(tokenizer, teacher_model=None, mlm_dir: str | None = None, top_k: int = 15, prob: float = 0.4, device="cpu") -> WordReplacer:
    """A replacer from a masked-LM dir, or from the teacher's input embeddings."""
    if mlm_dir is None:
        if teacher_model is None:
            raise ValueError("need the teacher model for embedding-neighbour augmentation")
        return WordReplacer(tokenizer, embeddings=teacher_model.get_input_embeddings().weight, top_k=top_k, prob=prob)
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    path = Path(mlm_dir)
    if not (path / "config.json").is_file():
        raise PrunekitError(f"--augment-mlm {mlm_dir}: not a model directory with config.json (give a masked-LM model such as bert-base-uncased)")
    try:
        mlm_tok = AutoTokenizer.from_pretrained(str(path))
        mlm = AutoModelForMaskedLM.from_pretrained(str(path)).eval().to(device)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a dir without an MLM head, corrupt weights, ...
        raise PrunekitError(f"--augment-mlm {mlm_dir}: cannot load a masked-LM model ({str(e).splitlines()[0][:160]})") from None
    if mlm_tok.mask_token is None:
        raise PrunekitError(f"--augment-mlm {mlm_dir}: its tokenizer has no mask token; give a masked-LM model")
    return WordReplacer(tokenizer, mlm=mlm, mlm_tokenizer=mlm_tok, top_k=top_k, prob=prob)


def augment_dataset(dataset, replacer: WordReplacer, copies: int, seed: int, progress: bool = False) -> AugmentedData:
    """The originals, then up to ``copies`` augmented copies of each (text and pair both augmented)."""
    from tqdm.auto import tqdm

    from .data import TextDataset

    rng = random.Random(seed)
    texts, pairs, labels, origin = list(dataset.texts), None if dataset.pairs is None else list(dataset.pairs), None, list(range(len(dataset)))
    labels = None if dataset.labels is None else list(dataset.labels)
    for i in tqdm(range(len(dataset)), disable=not progress, desc="augment", unit="ex", dynamic_ncols=True):
        a = replacer.copies(dataset.texts[i], copies, rng)
        if dataset.pairs is not None:
            b = replacer.copies(dataset.pairs[i], copies, rng)
            # pad the shorter list with the unchanged segment so that each copy changes something
            k = max(len(a), len(b))
            a = a + [dataset.texts[i]] * (k - len(a))
            b = b + [dataset.pairs[i]] * (k - len(b))
            pairs += b
        texts += a
        origin += [i] * len(a)
        if labels is not None:
            labels += [dataset.labels[i]] * len(a)
    ds = TextDataset(texts, pairs, labels, dataset.task, dataset.source + f" (+{len(texts) - len(dataset)} augmented)")
    return AugmentedData(ds, origin, [j < len(dataset) for j in range(len(texts))])
