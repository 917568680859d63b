"""Build the shipped corpus: English sentences from the docstrings of Python's standard library.

The default teacher is a sentence-embedding model, and the demo must run offline on real
prose that nobody wrote for our tests. CPython's docstrings are such prose (written by its
developers, PSF license) and every Python install carries them. Modules are never imported
(imports can have side effects, or fail): each source file is parsed with `ast` and its
module, class and function docstrings are read from the tree.

    python -m prunekit.corpus            # rewrites prunekit/assets/corpus.txt
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import logging
import os
import pkgutil
import re
import sys
import sysconfig
import tokenize
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# Test suites, GUI and demo code, bundled third-party code and generated tables: not prose we want,
# or not the stdlib's own.
SKIP = {
    "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
    "site-packages", "dist-packages", "__pycache__", "__phello__", "antigravity", "this",
    "encodings", "msilib", "distutils", "venv",
}

_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Mr.", "Dr.", "approx.", "resp.", "No.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_FIELD_LINE = re.compile(r"^\s*(:\w+|[\w*]+\s*(\([^)]*\))?\s*(--|:)(\s|$)|[-*+]\s|\d+[.)]\s|Args|Returns|Raises)")
_CODEISH = re.compile(r"[_(){}\[\]=<>#|\\@$%^~`]|\w\.\w|::|--|^\W|\.\.\.")
_ROLE = re.compile(r":\w+:`([^`]*)`")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_stdlib_sources(root: Path | None = None) -> Iterator[tuple[str, Path]]:
    """(module name, source file) for every pure-Python stdlib module, found with pkgutil
    on the file system (`iter_modules` on a path imports nothing)."""
    root = root or stdlib_dir()

    def walk(path: Path, prefix: str) -> Iterator[tuple[str, Path]]:
        for info in sorted(pkgutil.iter_modules([str(path)]), key=lambda m: m.name):
            if info.name in SKIP or info.name.startswith("_test") or info.name.startswith("test_"):
                continue
            name = prefix + info.name
            if info.ispkg:
                pkg = path / info.name
                init = pkg / "__init__.py"
                if init.is_file():
                    yield name, init
                yield from walk(pkg, name + ".")
            else:
                src = path / f"{info.name}.py"
                if src.is_file():  # iter_modules also lists extension modules (.so): no source
                    yield name, src

    yield from walk(root, "")


def docstrings(source: Path) -> Iterator[str]:
    """Module, class and function docstrings of one file, without importing it."""
    try:
        with tokenize.open(source) as f:  # honours the file's encoding cookie
            tree = ast.parse(f.read(), filename=str(source))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError) as e:
        log.debug("skipping %s: %s", source, e)
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def _prose_paragraphs(doc: str) -> Iterator[str]:
    """Paragraphs of running text: drop indented blocks (code, examples), doctests, field lists,
    bullet lists, and the paragraph that introduces a literal block (ends with '::')."""
    for para in re.split(r"\n\s*\n", doc):
        lines = [ln for ln in para.split("\n") if ln.strip()]
        if not lines:
            continue
        if any(ln.startswith((" ", "\t")) for ln in lines):
            continue
        if any(ln.lstrip().startswith((">>>", "...", "$ ", "%")) for ln in lines):
            continue
        if sum(bool(_FIELD_LINE.match(ln)) for ln in lines) > 0:
            continue
        text = " ".join(ln.strip() for ln in lines)
        if text.rstrip().endswith("::"):
            continue
        yield text


def split_sentences(text: str) -> list[str]:
    protected = text
    for i, abbr in enumerate(_ABBREVIATIONS):
        protected = protected.replace(abbr, f"\x00{i}\x00")
    parts = _SENTENCE_END.split(protected)
    out = []
    for part in parts:
        for i, abbr in enumerate(_ABBREVIATIONS):
            part = part.replace(f"\x00{i}\x00", abbr)
        out.append(part.strip())
    return out


def clean(sentence: str) -> str:
    s = _ROLE.sub(r"\1", sentence)  # :func:`open` -> open
    s = re.sub(r"`([^`']*)'", r"'\1'", s)  # old-style `quote' -> 'quote'
    s = s.replace("`", "").replace("*", "")
    return re.sub(r"\s+", " ", s).strip()


def is_prose(s: str, min_words: int = 6, max_words: int = 40) -> bool:
    """A sentence of plain English: 6-40 words, capitalised, ends like a sentence, mostly
    letters, at most one word that looks like code (a call, a dotted or snake_case name)."""
    words = s.split()
    if not min_words <= len(words) <= max_words:
        return False
    if not s[0].isupper() or s[-1] not in ".!?":
        return False
    if not s.isascii() or ">>>" in s or "http" in s or "'" * 3 in s or '"' * 3 in s:
        return False
    if s.endswith((":.", "..")) or s.count('"') % 2 or s.count("(") != s.count(")"):
        return False
    letters = sum(ch.isalpha() for ch in s)
    if letters < 0.8 * sum(not ch.isspace() for ch in s):
        return False
    if sum(bool(_CODEISH.search(w)) for w in words) > 1:
        return False
    if sum(w[0].isupper() for w in words[1:]) > 0.4 * len(words):  # headings, titles, tables
        return False
    return True


def _shuffle_key(sentence: str, seed: int) -> bytes:
    # A hash, not random.shuffle: the order then depends only on the sentences and the seed,
    # not on the walk order or the Python version's random generator.
    return hashlib.blake2b(f"{seed}\x00{sentence}".encode(), digest_size=8).digest()


def collect_sentences(root: Path | None = None) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    n_files = 0
    for _, src in iter_stdlib_sources(root):
        n_files += 1
        for doc in docstrings(src):
            for para in _prose_paragraphs(doc):
                for sent in split_sentences(para):
                    sent = clean(sent)
                    key = re.sub(r"\W+", " ", sent.lower()).strip()
                    if key in seen or not is_prose(sent):
                        continue
                    seen.add(key)
                    out.append(sent)
    log.info("read %d stdlib source files, kept %d distinct prose sentences", n_files, len(out))
    return out


def build_corpus(out_path: str | os.PathLike, max_sentences: int = 5000, seed: int = 0) -> int:
    """Write up to `max_sentences` stdlib docstring sentences to `out_path`, one per line,
    de-duplicated and shuffled deterministically; return how many were written."""
    sentences = collect_sentences()
    sentences.sort(key=lambda s: _shuffle_key(s, seed))
    sentences = sentences[:max_sentences]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    os.replace(tmp, out)
    return len(sentences)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prunekit.corpus", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "assets" / "corpus.txt"))
    parser.add_argument("--max-sentences", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    n = build_corpus(args.out, args.max_sentences, args.seed)
    size = Path(args.out).stat().st_size
    print(f"wrote {n} sentences ({size / 1024:.0f} KiB) to {args.out} from Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
