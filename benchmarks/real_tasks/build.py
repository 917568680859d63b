"""Build the real text-classification tasks of issue 16 from text that ships on this machine.

Writes ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` (one ``{"text": ..., "label": ...}`` per
line, the label a class name) and ``counts.json`` (examples per class and split, and how the data
was made) into ``<out>/<task>/`` (default ``runs/real_tasks/<task>/``, git-ignored: the data is
rebuilt from this machine's files, never committed or redistributed), and the counts also to
``benchmarks/results/real_tasks/data_<task>.{json,md}``. From the repo root:

    .venv/bin/python benchmarks/real_tasks/build.py                    # every task (~2 min on 2 cores)
    .venv/bin/python benchmarks/real_tasks/build.py --task docstrings  # one task

Tasks (``--help`` lists them):

docstrings
    CPython standard-library docstrings (module, class and function), labelled by the module
    family they come from (asyncio, email, internet, gui, ...: the table ``FAMILIES``). Source
    files are parsed with ``ast`` and never imported (``prunekit.corpus`` reads them the same way
    and its walk is reused: test suites, idlelib, turtledemo, ensurepip, ... are skipped; tkinter
    is read here as well). Doctest blocks are dropped. NB prunekit's shipped corpus
    (``prunekit/assets/corpus.txt``) is made of sentences from the same docstrings and is what
    ``prunekit search`` reads unlabelled by default; a run on this task should pass ``--data``.
manpages
    The English man pages of this machine (/usr/share/man/man1..man8, gzipped troff, read with
    ``troff.py``): text = the NAME line's description and the first paragraphs of DESCRIPTION,
    label = the Debian section of the package that owns the page (dpkg's file lists and status),
    sections with too few pages dropped. Symlinked and ``.so`` pages (one page under several
    names) are read once. The ~16,600 pages of google-cloud-cli (one generator, all section
    "misc") are left out. Only ~3,000 pages remain, and each section is mostly one to three
    packages (doc: the Linux man-pages project and git; utils: openssl and coreutils), so this
    task is small (~2,200 examples) and its labels say as much about packaging as about content.
pylibs
    Docstrings of ten Python libraries installed in the project's virtual environment (torch,
    transformers, scipy, sympy, sklearn, ...; the table ``LIBRARIES``), labelled by library: the
    same reading as ``docstrings`` (``ast``, nothing imported, doctests dropped), test suites and
    vendored code skipped. Big enough for the full 4,500/600/1,200 split; stands in for
    ``manpages`` as the second task (README.md). The versions read are recorded with the counts.
signatures
    A two-segment task (rows with ``text_pair``): the first paragraph of a public stdlib function's
    or method's docstring, paired once with that function's own signature (``fmean(data, weights)``,
    label ``match``) and once with another function's of the same top-level module (``mismatch``).
    The docstrings are split first and paired within their split, so a function's signature is only
    ever seen in its own docstring's split and neither segment alone tells the label: a bag of
    words must see what the two share. A docstring found under two signatures is dropped;
    ``--min-words`` defaults to 5 here. The third task (issue 16): one where word overlap is not
    enough and the fine-tuned encoder has to do better than TF-IDF.
params
    The second two-segment task, from the libraries of ``pylibs``: a parameter's description in a
    numpydoc ``Parameters`` or Google-style ``Args:`` section, paired with its own entry (``n_components
    : int, default=None``, label ``match``) and with another parameter's entry of the same module
    (``mismatch``). A description found under two names is dropped, one repeated under the same name
    (numpy's ``out``) kept once; at most 12 per module. The splits are whole modules (the modules in
    an order by a hash), so the test set's modules are not seen in training.

Every task: texts are cut to ``--max-words`` words, de-duplicated (a text found under two labels
is dropped), each class capped at ``--cap`` examples (default: an even share of ``--train +
--dev + --test``, and at most twice the median class size), classes with fewer than
``--min-class`` dropped, and the rest split per class (stratified) in the proportions of
``--train/--dev/--test``; where a source is short of that total, test and dev still get 25% and
12.5% of it (at most ``--test`` and ``--dev``). The selection and the order depend only on the
texts and ``--seed`` (a hash, not the walk order).
"""
from __future__ import annotations

import argparse
import ast
import glob
import hashlib
import json
import os
import re
import sys
import sysconfig
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import troff

from prunekit.corpus import clean, docstrings, iter_stdlib_sources
from prunekit.io import atomic_write_text

REPO = Path(__file__).resolve().parents[2]

# Module family -> the top-level stdlib modules/packages it holds. Each family is a package or a
# group of modules that the Python Library Reference documents together (its chapters: Internet
# Protocols, Concurrent Execution, File and Directory Access + Data Compression, Debugging and
# Profiling, ...). Modules in no family are not used.
FAMILIES: dict[str, tuple[str, ...]] = {
    "asyncio": ("asyncio", "selectors", "asynchat", "asyncore"),
    "concurrency": ("multiprocessing", "threading", "concurrent", "queue", "subprocess", "sched",
                    "_threading_local"),
    "debugging": ("pdb", "bdb", "trace", "traceback", "profile", "cProfile", "pstats", "tracemalloc",
                  "timeit", "inspect", "dis"),
    "email": ("email", "mailbox", "smtplib", "imaplib", "poplib", "mimetypes", "quopri", "mailcap", "smtpd"),
    "files": ("pathlib", "os", "shutil", "tarfile", "zipfile", "gzip", "bz2", "lzma", "tempfile", "glob",
              "fnmatch", "filecmp", "fileinput", "_pyio", "io", "stat", "ntpath", "posixpath", "genericpath",
              "shelve", "dbm"),
    "gui": ("tkinter", "turtle"),
    "imports": ("importlib", "pkgutil", "zipimport", "runpy", "modulefinder", "imp", "site", "py_compile",
                "compileall", "zipapp", "sysconfig"),
    "internet": ("http", "urllib", "ftplib", "nntplib", "telnetlib", "socketserver", "wsgiref", "xmlrpc",
                 "ssl", "socket", "cgi", "cgitb", "webbrowser", "ipaddress"),
    "logging": ("logging",),
    "markup": ("xml", "html", "_markupbase"),
    "numeric": ("_pydecimal", "fractions", "statistics", "random", "numbers", "secrets", "colorsys"),
    "testing": ("unittest", "doctest"),
}
_FAMILY_OF = {mod: fam for fam, mods in FAMILIES.items() for mod in mods}

# Debian section -> class of the manpages task; sections not named here keep their own name.
SECTION_CLASSES = {"libs": "libdevel", "oldlibs": "libdevel"}
MANPAGE_SKIP_PACKAGES = {"google-cloud-cli"}


def _key(text: str, seed: int) -> bytes:
    return hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=8).digest()


def _norm(text: str) -> str:
    """The de-duplication key: words with a capital or a digit (names: BertModel, Bert, int64) masked,
    so templated texts that differ only in the names they mention count as one."""
    return re.sub(r"\W+", " ", re.sub(r"\b\w*[A-Z0-9]\w*\b", "#", text).lower()).strip()


def cut_words(text: str, max_words: int) -> str:
    """The first `max_words` words; where a sentence ends in the last third of them, cut there."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    head = " ".join(words[:max_words])
    end = max(head.rfind(". "), head.rfind("? "), head.rfind("! "))
    if end > 0 and len(head[: end + 1].split()) >= 2 * max_words // 3:
        return head[: end + 1]
    return head


# ---------------------------------------------------------------- docstrings

def stdlib_sources() -> Iterator[tuple[str, Path]]:
    """prunekit.corpus's walk of the stdlib sources, plus tkinter (which the corpus leaves out)."""
    yield from iter_stdlib_sources()
    tk = Path(sysconfig.get_paths()["stdlib"]) / "tkinter"
    if (tk / "__init__.py").is_file():
        yield "tkinter", tk / "__init__.py"
        for name, src in iter_stdlib_sources(tk):
            yield f"tkinter.{name}", src


def _drop_doctests(doc: str) -> str:
    """Remove doctest blocks: a '>>>' line and everything up to the next blank line."""
    out, in_block = [], False
    for line in doc.split("\n"):
        if line.lstrip().startswith(">>>"):
            in_block = True
        elif not line.strip():
            in_block = False
        if not in_block:
            out.append(line)
    return "\n".join(out)


def docstring_examples(max_words: int) -> Iterator[tuple[str, str]]:
    for module, src in stdlib_sources():
        family = _FAMILY_OF.get(module.split(".")[0])
        if family is None:
            continue
        for doc in docstrings(src):
            yield cut_words(clean(_drop_doctests(doc)), max_words), family


# ---------------------------------------------------------------- manpages

def dpkg_owners(prefix: str = "/usr/share/man/") -> dict[str, str]:
    """File path -> the package that installed it, from dpkg's file lists."""
    owner: dict[str, str] = {}
    for lst in sorted(glob.glob("/var/lib/dpkg/info/*.list")):
        package = os.path.basename(lst)[: -len(".list")].split(":")[0]
        with open(lst, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(prefix):
                    owner[line.rstrip("\n")] = package
    return owner


def dpkg_sections(status: str = "/var/lib/dpkg/status") -> dict[str, str]:
    """Package -> its Debian section (without an archive area such as contrib/)."""
    sections: dict[str, str] = {}
    package = None
    with open(status, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("Package:"):
                package = line.split()[1]
            elif line.startswith("Section:") and package:
                sections[package] = line.split()[1].split("/")[-1]
    return sections


def man_pages(root: str = "/usr/share/man") -> dict[str, list[str]]:
    """Real page file -> the names (paths) it is installed under, man1..man8 only (no translations)."""
    pages: dict[str, list[str]] = defaultdict(list)
    for d in sorted(glob.glob(os.path.join(root, "man[1-8]"))):
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            real = os.path.realpath(path)
            if os.path.isfile(real):
                pages[real].append(path)
    return pages


def page_text(secs: dict[str, list[str]], max_words: int) -> str:
    """NAME's description, then DESCRIPTION's paragraphs up to the first option entry ('-x ...')."""
    parts = [troff.name_description(secs)]
    if parts[0] and parts[0][-1] not in ".!?":
        parts[0] += "."
    for para in secs.get("DESCRIPTION", []):
        if para.startswith("-") and len(parts) > 1:
            break
        parts.append(para)
        if sum(len(p.split()) for p in parts) >= max_words:
            break
    return cut_words(" ".join(p for p in parts if p), max_words)


def manpage_examples(max_words: int) -> Iterator[tuple[str, str]]:
    owner, section_of = dpkg_owners(), dpkg_sections()
    for real, names in man_pages().items():
        package = owner.get(real) or next((owner[n] for n in names if n in owner), None)
        if package is None or package in MANPAGE_SKIP_PACKAGES or package not in section_of:
            continue
        secs = troff.read_page(real)
        if not secs or "DESCRIPTION" not in secs:
            continue
        section = section_of[package]
        yield page_text(secs, max_words), SECTION_CLASSES.get(section, section)


# ---------------------------------------------------------------- pylibs

# Ten libraries of this virtual environment (requirements.lock pins their versions) with more than
# 630 docstrings each, from several fields: deep learning (torch, transformers, huggingface_hub),
# scientific computing (numpy, scipy, sympy), machine learning, graphs, plotting and fonts.
LIBRARIES = ("fontTools", "huggingface_hub", "matplotlib", "networkx", "numpy", "scipy", "sklearn", "sympy",
             "torch", "transformers")
# Test suites and code a library bundles from other projects.
_LIB_SKIP_DIRS = {"test", "tests", "testing", "_vendor", "vendor", "vendored", "externals", "extern", "_extern"}


def library_sources() -> Iterator[tuple[str, Path]]:
    """(dotted module name, source file) of ``LIBRARIES`` in this environment, test suites and
    vendored code skipped, in a fixed order."""
    site = Path(sysconfig.get_paths()["purelib"])
    for lib in LIBRARIES:
        for src in sorted((site / lib).rglob("*.py")):
            rel = src.relative_to(site)
            if not _LIB_SKIP_DIRS.intersection(rel.parts[:-1]):
                yield ".".join(rel.with_suffix("").parts), src


def pylib_examples(max_words: int) -> Iterator[tuple[str, str]]:
    for module, src in library_sources():
        for doc in docstrings(src):
            yield cut_words(clean(_drop_doctests(doc)), max_words), module.split(".")[0]


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    dists = {"fontTools": "fonttools", "sklearn": "scikit-learn", "huggingface_hub": "huggingface-hub"}
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = version(dists.get(lib, lib))
        except PackageNotFoundError:
            out[lib] = "not installed"
    return out


# ---------------------------------------------------------------- signatures (a two-segment task)

def _signature(node) -> str:
    """``name(a, b, *args, key, **kw)``: the parameters a caller passes (no self/cls, no defaults)."""
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args] + ([f"*{a.vararg.arg}"] if a.vararg else []) \
        + [x.arg for x in a.kwonlyargs] + ([f"**{a.kwarg.arg}"] if a.kwarg else [])
    return f"{node.name}({', '.join(n for n in names if n not in ('self', 'cls'))})"


def _definitions(src: Path, *kinds: type) -> Iterator:
    """The nodes of ``kinds`` (``ast.FunctionDef``, ...) in a source file, parsed and never imported;
    none for a file that does not parse."""
    try:
        tree = ast.parse(src.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return
    yield from (node for node in ast.walk(tree) if isinstance(node, kinds))


def documented_functions(max_words: int) -> Iterator[tuple[str, str, str]]:
    """(top-level module, signature, docstring's first paragraph) of every public function and method
    of the stdlib sources that has a docstring (``ast``, nothing imported, doctests dropped)."""
    for module, src in stdlib_sources():
        for node in _definitions(src, ast.FunctionDef, ast.AsyncFunctionDef):
            if not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                if doc:
                    first = re.split(r"\n\s*\n", _drop_doctests(doc).strip())[0]
                    yield module.split(".")[0], _signature(node), cut_words(clean(first), max_words)


def _by_text(items: Iterator[tuple[str, str, str]], min_words: int) -> tuple[dict[str, set[tuple[str, str]]], dict[str, str], int]:
    """(group, pair, text) items of a two-segment task by their text's de-duplication key (``_norm``):
    (key -> every (group, pair) it was found with, key -> its first text, items read); texts under
    ``min_words`` left out."""
    by_text: dict[str, set[tuple[str, str]]] = defaultdict(set)
    first: dict[str, str] = {}
    read = 0
    for group, pair, text in items:
        read += 1
        if len(text.split()) >= min_words:
            k = _norm(text)
            by_text[k].add((group, pair))
            first.setdefault(k, text)
    return by_text, first, read


def signature_docs(max_words: int, min_words: int) -> tuple[list[tuple[str, str, str]], dict]:
    """(docstring, its function's signature, top-level module) once per docstring; a docstring found
    under two signatures is dropped, one found with the same signature in two modules (``keys()`` of
    collections and _collections_abc) is kept in the first module by name (so the result does not
    depend on the process's string hashing)."""
    by_doc, first, read = _by_text(documented_functions(max_words), min_words)
    ambiguous = sum(len({sig for _, sig in v}) > 1 for v in by_doc.values())
    docs = sorted((first[k], min(v)[1], min(v)[0]) for k, v in by_doc.items() if len({sig for _, sig in v}) == 1)
    return docs, {"read": read, "ambiguous_texts_dropped": ambiguous}


def _function_name(signature: str) -> str:
    return signature.split("(")[0]


def pair_rows(docs: list[tuple[str, str, str]], seed: int, name: Callable[[str], str] = _function_name
              ) -> tuple[list[dict], int]:
    """Each docstring twice: with its own signature (``match``) and with another function's of the
    same module among ``docs`` (``mismatch``, picked by a hash of the docstring and ``seed``; ``name``
    tells two functions apart, or two parameters for ``params``). Given one split's docstrings, every
    signature of the split is a match once and a mismatch about once, and a mismatch's signature is
    a match of the same split, so neither segment alone tells the label. A docstring with no other
    function of its module in ``docs`` is left out; returns (rows, how many)."""
    pool: dict[str, list[str]] = defaultdict(list)
    for _, sig, module in docs:
        pool[module].append(sig)
    rows, alone = [], 0
    for doc, sig, module in docs:
        others = [o for o in pool[module] if name(o) != name(sig)]
        if not others:
            alone += 1
            continue
        other = others[int.from_bytes(_key(doc, seed + 2), "big") % len(others)]
        rows += [{"text": doc, "text_pair": sig, "label": "match"}, {"text": doc, "text_pair": other, "label": "mismatch"}]
    return rows, alone


def build_pairs(task: str, out_dir: Path, args: argparse.Namespace) -> dict:
    """A two-segment task: the docstrings split first (by a hash), in the proportions of
    --train/--dev/--test (counted in rows, two per docstring), then paired within their split."""
    t0 = time.perf_counter()
    sizes = {"train": args.train, "dev": args.dev, "test": args.test}
    spec = PAIR_TASKS[task]
    docs, info = spec.docs(args.max_words, args.min_words)
    docs.sort(key=lambda d: (_key(d[2], args.seed) if spec.whole_groups else b"", _key(d[0], args.seed)))
    n = min(len(docs), -(-sum(sizes.values()) // 2))
    splits: dict[str, list[dict]] = {}
    alone = 0
    for split, (a, b) in split_bounds(n, split_shares(sizes, 2 * n)).items():  # sizes are in rows
        rows, left_out = pair_rows(docs[a:b], args.seed, spec.name)
        alone += left_out
        splits[split] = sorted(rows, key=lambda r: _key(r["text"] + "\x00" + r["text_pair"], args.seed + 1))
    return write_task(out_dir, {s: splits[s] for s in sizes}, {
        "task": task, "what": spec.what, "python": sys.version.split()[0], "seed": args.seed, "cap_per_class": n,
        "min_class": 0, "min_words": args.min_words, "max_words": args.max_words, "examples_read": info["read"],
        "available_per_class": {"match": len(docs), "mismatch": len(docs)}, "classes_dropped": [],
        "ambiguous_texts_dropped": info["ambiguous_texts_dropped"], "docstrings_used": n - alone,
        "docstrings_without_a_partner": alone, "modules": len({d[2] for d in docs[:n]}),
        **({"library_versions": library_versions()} if task == "params" else {}),
        "build_seconds": round(time.perf_counter() - t0, 1)})


# ---------------------------------------------------------------- params (a two-segment task)

# A parameter entry of a docstring's parameter section: numpydoc (``name : type`` at the section's
# indent, the description indented below; scipy, numpy, sklearn, ...) or Google style (``name (type):
# description`` one indent in; transformers, torch, huggingface_hub). ``*args``-style names are kept.
_NUMPY_SECTIONS = {"Parameters", "Other Parameters"}
_GOOGLE_SECTIONS = {"Args:", "Arguments:", "Parameters:", "Keyword Args:", "Keyword Arguments:"}
_NAME = r"\*{0,2}[A-Za-z_]\w*"
_NUMPY_ENTRY = re.compile(rf"({_NAME}(?:\s*,\s*{_NAME})*)\s*(?::\s*(.*))?")
_GOOGLE_ENTRY = re.compile(rf"({_NAME})\s*(?:\((.*)\))?\s*:(?:\s+(.*))?")
_RULE = re.compile(r"-{3,}|={3,}")
_GOOGLE_END = re.compile(r"(Returns?|Raises|Yields?|Examples?|Notes?|Warnings?|See Also|References|Attributes|Todo)\s*:")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def doc_params(doc: str) -> list[tuple[str, str, str]]:
    """(name, type as written or '', description's first paragraph) of each entry of a docstring's
    numpydoc ``Parameters`` / ``Other Parameters`` and Google-style ``Args:`` sections. An entry
    naming several parameters (``x, y : array_like``) is left out: its description is shared."""
    lines, out, i = doc.splitlines(), [], 0
    while i < len(lines):
        head, nxt = lines[i].strip(), lines[i + 1].strip() if i + 1 < len(lines) else ""
        numpy = head in _NUMPY_SECTIONS and _RULE.fullmatch(nxt)
        if not numpy and head not in _GOOGLE_SECTIONS:
            i += 1
            continue
        base, i = _indent(lines[i]), i + (2 if numpy else 1)
        entry_indent, cur = None, None
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                if cur is not None:
                    cur[2].append("")
                i += 1
                continue
            ind = _indent(line)
            if ind < base or (not numpy and (ind == base or _GOOGLE_END.fullmatch(line.strip()))) \
                    or (ind == base and i + 1 < len(lines) and _RULE.fullmatch(lines[i + 1].strip())):
                break  # the section's end: a dedent, the next numpydoc heading or a Google one (at any indent)
            if entry_indent is None:
                entry_indent = ind
            m = (_NUMPY_ENTRY if numpy else _GOOGLE_ENTRY).fullmatch(line.strip()) if ind <= entry_indent else None
            if m:  # an entry (at the first entry's indent or less: some docstrings indent the first one more)
                cur = None if "," in m.group(1) else [m.group(1), (m.group(2) or "").strip(), [] if numpy else [m.group(3) or ""]]
                out += [cur] if cur else []
            elif ind <= entry_indent and not (cur and cur[2] and cur[2][-1]):
                cur = None  # not an entry, and no description line right above it that it could continue
            elif cur is not None:
                cur[2].append(line.strip())
            i += 1
    return [(name, typ, " ".join(re.split(r"\n\s*\n", "\n".join(desc).strip())[0].split()))
            for name, typ, desc in out]


def documented_params(max_words: int) -> Iterator[tuple[str, str, str]]:
    """(module, ``name : type``, description) of every parameter documented in the docstrings of
    ``LIBRARIES`` (the files ``pylib_examples`` reads; ``ast``, nothing imported)."""
    for module, src in library_sources():
        for node in _definitions(src, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef):
            doc = ast.get_docstring(node)
            for name, typ, desc in doc_params(doc) if doc else ():
                header = clean(f"{name} : {typ}" if typ else name)
                yield module, header, cut_words(clean(_drop_doctests(desc)), max_words)


# Descriptions per module at most (the first by a hash): transformers' modelling files document ~50
# parameters each, and a split is whole modules (``PairTask.whole_groups``), so a few big modules would
# otherwise make up a split.
PARAMS_PER_MODULE = 12


def param_docs(max_words: int, min_words: int) -> tuple[list[tuple[str, str, str]], dict]:
    """(description, its entry's ``name : type``, module) once per description; a description found
    under two parameter names is dropped, one found under the same name in several places (numpy's
    ``out``) is kept once, in the first module by name. At most ``PARAMS_PER_MODULE`` per module, and
    only modules with two parameter names or more (a mismatch needs another name of the module)."""
    by_doc, first, read = _by_text(documented_params(max_words), min_words)
    names = {k: {_param_name(h) for _, h in v} for k, v in by_doc.items()}
    ambiguous = sum(len(n) > 1 for n in names.values())
    per_module: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for k, v in by_doc.items():
        if len(names[k]) == 1:
            module, header = min(v)
            per_module[module].append((first[k], header, module))
    docs = []
    for ds in per_module.values():
        ds = sorted(ds, key=lambda d: _key(d[0], 0))[:PARAMS_PER_MODULE]
        if len({_param_name(d[1]) for d in ds}) > 1:
            docs += ds
    return sorted(docs), {"read": read, "ambiguous_texts_dropped": ambiguous, "descriptions": len(by_doc) - ambiguous}


def _param_name(header: str) -> str:
    return header.split(" : ")[0]


TASKS: dict[str, tuple[Callable[[int], Iterator[tuple[str, str]]], str]] = {
    "docstrings": (docstring_examples, "CPython stdlib docstrings -> module family"),
    "manpages": (manpage_examples, "man pages (NAME + DESCRIPTION) -> Debian section of the owning package"),
    "pylibs": (pylib_examples, "docstrings of ten Python libraries in the venv -> library"),
}
class PairTask(NamedTuple):
    docs: Callable[[int, int], tuple[list[tuple[str, str, str]], dict]]  # (text, pair, group) and counts
    what: str
    name: Callable[[str], str]  # the name in a pair: a mismatch's pair names something else of the group
    whole_groups: bool  # splits are whole groups (modules), not docstrings drawn from everywhere


PAIR_TASKS: dict[str, PairTask] = {
    "signatures": PairTask(signature_docs, "a stdlib docstring and a function signature -> match / mismatch",
                           _function_name, whole_groups=False),
    "params": PairTask(param_docs, "a library parameter's description and a parameter entry (name : type) "
                       "-> match / mismatch", _param_name, whole_groups=True),
}


# ---------------------------------------------------------------- splits

# Where the source is short of --train + --dev + --test, dev and test still get at least these shares
# (up to their full sizes): the test set is what the comparisons of issue 16 are read off.
MIN_SHARES = {"dev": 0.125, "test": 0.25}


def split_bounds(n: int, shares: dict[str, float]) -> dict[str, tuple[int, int]]:
    """[start, end) of test, dev and train among ``n`` ordered items: test and dev their share
    (rounded), train the rest."""
    bounds, start = {}, 0
    for split in ("test", "dev"):
        bounds[split] = (start, start + round(n * shares[split]))
        start = bounds[split][1]
    bounds["train"] = (start, n)
    return bounds


def write_task(out_dir: Path, splits: dict[str, list[dict]], info: dict) -> dict:
    """``<split>.jsonl`` of every split and ``counts.json``: ``info`` with the rows per label and split,
    the split sizes and the median words per text added; returns that."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    words = sorted(len(r["text"].split()) for rows in splits.values() for r in rows)
    info = {**info, "words_median": words[len(words) // 2] if words else 0,
            "per_split": {split: dict(sorted(Counter(r["label"] for r in rows).items())) for split, rows in splits.items()},
            "sizes": {split: len(rows) for split, rows in splits.items()}}
    (out_dir / "counts.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def split_shares(sizes: dict[str, int], n: int) -> dict[str, float]:
    """Fractions of the data that go to dev and test: as in `sizes`, or more when `n` is short."""
    total = sum(sizes.values())
    return {s: min(sizes[s], max(n * sizes[s] / total, n * MIN_SHARES[s])) / max(n, 1) for s in ("dev", "test")}


def make_splits(examples: list[tuple[str, str]], sizes: dict[str, int], cap: int, min_class: int,
                min_words: int, seed: int) -> tuple[dict[str, list[dict]], dict]:
    """De-duplicate, cap and drop classes, and split each class in the proportions of `sizes`."""
    by_text: dict[str, set[str]] = defaultdict(set)
    first: dict[str, str] = {}
    for text, label in examples:
        if len(text.split()) < min_words:
            continue
        k = _norm(text)
        by_text[k].add(label)
        first.setdefault(k, text)
    ambiguous = sum(len(labels) > 1 for labels in by_text.values())
    per_class: dict[str, list[str]] = defaultdict(list)
    for k, labels in by_text.items():
        if len(labels) == 1:
            per_class[next(iter(labels))].append(first[k])
    available = {c: len(t) for c, t in sorted(per_class.items())}
    kept = {c: sorted(t, key=lambda s: _key(s, seed))[:cap] for c, t in per_class.items() if len(t) >= min_class}
    shares = split_shares(sizes, sum(len(t) for t in kept.values()))
    splits: dict[str, list[dict]] = {s: [] for s in sizes}
    for label, texts in sorted(kept.items()):  # per class (stratified)
        for split, (a, b) in split_bounds(len(texts), shares).items():
            splits[split].extend({"text": t, "label": label} for t in texts[a:b])
    for split in splits:
        splits[split].sort(key=lambda ex: _key(ex["text"], seed + 1))  # labels mixed: --max-examples N takes a sample
    info = {"available_per_class": available, "ambiguous_texts_dropped": ambiguous,
            "classes_dropped": sorted(c for c in per_class if c not in kept)}
    return splits, info


def build(task: str, out_dir: Path, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    sizes = {"train": args.train, "dev": args.dev, "test": args.test}
    examples = list(TASKS[task][0](args.max_words))
    n_classes_guess = len({label for _, label in examples})
    cap = args.cap
    splits, info = make_splits(examples, sizes, cap or 10**9, args.min_class, args.min_words, args.seed)
    if not cap:  # an even share of the total, and at most twice the median class
        kept = sorted(n for c, n in info["available_per_class"].items() if c not in info["classes_dropped"])
        n_classes = len(kept) or n_classes_guess
        cap = -(-sum(sizes.values()) // n_classes)
        if kept:
            cap = min(cap, 2 * kept[len(kept) // 2])
        splits, info = make_splits(examples, sizes, cap, args.min_class, args.min_words, args.seed)
    return write_task(out_dir, splits, {
        "task": task, "what": TASKS[task][1], "python": sys.version.split()[0], "seed": args.seed, "cap_per_class": cap,
        "min_class": args.min_class, "min_words": args.min_words, "max_words": args.max_words, "examples_read": len(examples),
        **({"library_versions": library_versions()} if task == "pylibs" else {}), **info,
        "build_seconds": round(time.perf_counter() - t0, 1)})


def counts_markdown(info: dict) -> str:
    per = info["per_split"]
    lines = [f"# Real task `{info['task']}`: {info['what']}", "",
             f"Written by `benchmarks/real_tasks/build.py` (Python {info['python']}, seed {info['seed']}); the data itself "
             "is rebuilt from this machine's files into `runs/real_tasks/`, never committed.", "",
             f"- texts read: {info['examples_read']}; texts under two labels dropped: {info['ambiguous_texts_dropped']}",
             f"- words per text: {info['min_words']} to {info['max_words']}, median {info['words_median']}",
             f"- cap per class: {info['cap_per_class']}; classes with fewer than {info['min_class']} texts dropped: "
             + (", ".join(f"{c} ({info['available_per_class'][c]})" for c in info["classes_dropped"]) or "none")]
    if info.get("library_versions"):
        lines.append("- library versions: " + ", ".join(f"{k} {v}" for k, v in info["library_versions"].items()))
    lines += ["", "| class | available | train | dev | test |", "|---|---:|---:|---:|---:|"]
    for c in sorted(set().union(*per.values())):
        lines.append(f"| {c} | {info['available_per_class'][c]} | " + " | ".join(str(per[s].get(c, 0)) for s in ("train", "dev", "test")) + " |")
    lines.append("| **total** | | " + " | ".join(str(info["sizes"][s]) for s in ("train", "dev", "test")) + " |")
    return "\n".join(lines) + "\n"


def print_counts(info: dict) -> None:
    per = info["per_split"]
    classes = sorted(set().union(*per.values()))
    print(f"\n{info['task']}: {info['what']}")
    print(f"  {info['examples_read']} texts read, {info['ambiguous_texts_dropped']} under two labels dropped, "
          f"cap {info['cap_per_class']}/class, median {info['words_median']} words, {info['build_seconds']} s")
    if info["classes_dropped"]:
        dropped = ", ".join(f"{c} ({info['available_per_class'][c]})" for c in info["classes_dropped"])
        print(f"  classes with < {info['min_class']} texts dropped: {dropped}")
    print(f"  {'class':<16}{'available':>10}{'train':>7}{'dev':>6}{'test':>6}")
    for c in classes:
        print(f"  {c:<16}{info['available_per_class'][c]:>10}" + "".join(
            f"{per[s].get(c, 0):>{w}}" for s, w in (("train", 7), ("dev", 6), ("test", 6))))
    print(f"  {'total':<16}{'':>10}" + "".join(f"{info['sizes'][s]:>{w}}" for s, w in (("train", 7), ("dev", 6), ("test", 6))))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(TASKS | PAIR_TASKS), action="append", help="repeatable; default: every task")
    ap.add_argument("--out", default=str(REPO / "runs" / "real_tasks"), help="tasks go to OUT/<task>/")
    ap.add_argument("--train", type=int, default=4500)
    ap.add_argument("--dev", type=int, default=600)
    ap.add_argument("--test", type=int, default=1200)
    ap.add_argument("--cap", type=int, default=0, help="examples per class at most (0: even share of the total)")
    ap.add_argument("--min-class", type=int, default=80, help="drop classes with fewer texts")
    ap.add_argument("--min-words", type=int, default=None,
                    help="drop shorter texts (default 8; 5 for the two-segment tasks, whose texts are short)")
    ap.add_argument("--max-words", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "real_tasks"),
                    help="class counts go to RESULTS/data_<task>.{json,md} ('' for none)")
    args = ap.parse_args(argv)
    for task in args.task or sorted(TASKS | PAIR_TASKS):
        default = 5 if task in PAIR_TASKS else 8
        a = argparse.Namespace(**{**vars(args), "min_words": default if args.min_words is None else args.min_words})
        info = (build_pairs if task in PAIR_TASKS else build)(task, Path(args.out) / task, a)
        print_counts(info)
        if args.results:
            results = Path(args.results)
            results.mkdir(parents=True, exist_ok=True)
            atomic_write_text(results / f"data_{task}.json", json.dumps(info, indent=1) + "\n")
            atomic_write_text(results / f"data_{task}.md", counts_markdown(info))


if __name__ == "__main__":
    main()
