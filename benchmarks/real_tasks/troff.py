"""Plain text from a gzipped man page: its sections as paragraphs, troff markup removed.

A module, not a benchmark (it writes nothing): ``build.py`` reads the man pages under
/usr/share/man with it. No groff is run (one process per page would take minutes for the
~20,000 pages here); this handles what the pages on this machine use: the ``man`` macros
(.SH, .PP, .TP, .B, .BR, ...), the BSD ``mdoc`` macros (.Sh, .Nd, .Pp, .Nm, .Fl, .Xr, ...)
and the common inline escapes (fonts, sizes, special characters, strings). Tables, equations
and macro definitions are skipped, as are pages that only point to another (``.so``).
"""
from __future__ import annotations

import gzip
import re
import shlex

# \(xx and \[name] special characters worth keeping, as ASCII; any other becomes nothing.
_SPECIAL = {
    "em": "-", "en": "-", "hy": "-", "mi": "-", "aq": "'", "oq": "'", "cq": "'", "lq": '"', "rq": '"',
    "dq": '"', "Do": "$", "bu": "*", "co": "(c)", "rg": "(R)", "tm": "(TM)", "mu": "x", "pl": "+",
    "eq": "=", ">=": ">=", "<=": "<=", "ti": "~", "ha": "^", "ga": "`", "ul": "_", "rs": "\\",
    "sl": "/", "ba": "|", "or": "|", "at": "@", "sh": "#", "lB": "[", "rB": "]", "lC": "{", "rC": "}",
    "Lq": '"', "Rq": '"', "R": "(R)", "Tm": "(TM)", "ua": "^", "da": "v", "->": "->", "<-": "<-",
}
_ESCAPES = re.compile(
    r"""\\(?:
        f(?:\[[^\]]*\]|\(..|.)          # font
      | s(?:[-+]?\d|\([-+]?\d\d|\[[^\]]*\]|'[^']*')  # size
      | \*(?:\[(?P<s1>[^\]]*)\]|\((?P<s2>..)|(?P<s3>.))   # string
      | \((?P<c1>..)                     # special character \(xx
      | \[(?P<c2>[^\]]*)\]               # special character \[name]
      | n(?:\[[^\]]*\]|\(..|[-+]?.)      # number register
      | [hvwoDlLXZNbCRSx]'[^']*'          # motions, widths, overstrikes, device controls
      | k.                                # mark
      | "[^\n]*                           # comment to the end of the line
      | (?P<lit>.)                        # any other single-character escape
    )""",
    re.VERBOSE,
)
_LITERAL = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`", ".": ".", "t": " "}

_PARAGRAPH = {"PP", "P", "LP", "Pp", "TP", "TQ", "IP", "HP", "sp", "RS", "RE", "nf", "fi", "EX", "EE",
              "Bl", "El", "It", "Bd", "Ed", "SS", "Ss", "in", "ti", "TS", "TE", "UR", "UE", "MT", "ME"}
# man font macros whose arguments alternate fonts and are written with no space between them.
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}
_FONT = {"B", "I", "R", "SM", "SB", "Em", "Sy", "Nm", "Ar", "Cm", "Pa", "Va", "Ev", "Er", "Dv", "Ic",
         "Li", "Ql", "Ft", "Fa", "Fn", "No", "Ns", "Lk", "Mt", "St", "Tn", "Ux", "At", "Bx", "Nx", "Fx",
         "Ox", "Lb", "Ms", "Ad", "An", "Op", "Oo", "Oc", "Dq", "Sq", "Qq", "Pq", "Po", "Pc", "Do",
         "Dc", "Sc", "So", "Qo", "Qc", "Bq", "Brq", "Aq", "Fl", "Xr", "Nd", "Ot", "Sx", "Ta", "Eo", "Ec"}
_MDOC_QUOTES = {"Dq": ('"', '"'), "Sq": ("'", "'"), "Qq": ('"', '"'), "Pq": ("(", ")"), "Op": ("[", "]"),
                "Aq": ("<", ">"), "Bq": ("[", "]"), "Brq": ("{", "}")}
_PUNCT = {".", ",", ";", ":", ")", "]", "?", "!"}


def inline(text: str) -> str:
    """Resolve the inline escapes of one line of troff text."""

    def sub(m: re.Match) -> str:
        if m.group("lit") is not None:
            return _LITERAL.get(m.group("lit"), "")
        name = m.group("c1") or m.group("c2") or m.group("s1") or m.group("s2") or m.group("s3")
        return _SPECIAL.get(name, "") if name else ""

    return _ESCAPES.sub(sub, text)


def _args(rest: str) -> list[str]:
    try:
        return shlex.split(rest.replace("\\", "\x00"), posix=True)  # backslashes survive shlex
    except ValueError:
        return rest.split()


def _macro_text(name: str, rest: str, page_name: str = "") -> str:
    args = [a.replace("\x00", "\\") for a in _args(rest)]
    if name == "Nm" and not args:  # mdoc: a bare .Nm repeats the page's name
        return page_name
    if name in _ALTERNATING:
        return inline("".join(args))
    if name == "Fl":
        return inline(" ".join("-" + a if a not in _PUNCT else a for a in args) or "-")
    if name == "Xr" and len(args) >= 2:
        return inline(f"{args[0]}({args[1]})" + " ".join(args[2:]))
    words: list[str] = []
    for a in args:
        if a in _FONT:  # nested mdoc macros on one line: .Nm foo Ns Ar bar
            continue
        if a in _PUNCT and words:
            words[-1] += a
        else:
            words.append(a)
    out = inline(" ".join(words))
    if name == "Nd":  # mdoc's NAME description, after .Nm
        return "- " + out
    if name in _MDOC_QUOTES:
        left, right = _MDOC_QUOTES[name]
        out = f"{left}{out}{right}"
    return out


def sections(source: str) -> dict[str, list[str]] | None:
    """Section name (upper case) -> its paragraphs as plain text; None for a page that is only a
    pointer to another (``.so``)."""
    out: dict[str, list[str]] = {}
    section = ""
    para: list[str] = []
    skip_until: str | None = None
    page_name = ""

    def flush() -> None:
        text = re.sub(r"\s+", " ", " ".join(para)).strip()
        if text and section:
            out.setdefault(section, []).append(text)
        para.clear()

    for raw in source.split("\n"):
        line = raw.rstrip()
        if skip_until is not None:
            if line.startswith(skip_until) or (skip_until == r"\}" and r"\}" in line):
                skip_until = None
            continue
        if line.startswith((".\\\"", "'\\\"", ".\\#", '\\"')) or line in (".", "'"):
            continue
        if line.startswith((".", "'")):
            m = re.match(r"^[.']\s*(\S+)\s*(.*)$", line)
            if not m:
                continue
            name, rest = m.group(1), m.group(2)
            if name == "so":
                return None
            if name in ("de", "de1", "am", "ig"):
                skip_until = ".."
                continue
            if name in ("TS", "EQ"):
                flush()
                skip_until = ".TE" if name == "TS" else ".EN"
                continue
            if name in ("if", "ie", "el"):
                if r"\{" in rest and r"\}" not in rest:
                    skip_until = r"\}"
                continue
            if name in ("SH", "Sh"):
                flush()
                section = re.sub(r"\s+", " ", inline(" ".join(_args(rest)).replace("\x00", "\\"))).strip().upper()
                continue
            if name in _PARAGRAPH:
                flush()
                if name in ("IP", "TP") and rest:  # .IP tag: the tag starts the paragraph
                    para.append(_macro_text("I", rest.split('"')[1] if rest.startswith('"') else rest.split()[0]))
                continue
            if name in _FONT or name in _ALTERNATING:
                if name == "Nm" and rest and not page_name:
                    page_name = _macro_text("B", rest)
                para.append(_macro_text(name, rest, page_name))
            continue  # any other request (TH, Dd, ne, ad, br, ...) carries no prose
        para.append(inline(line))
    flush()
    return out


def read_page(path: str) -> dict[str, list[str]] | None:
    """`sections` of a man page file (gzipped or not); None for a pointer page or unreadable file."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            return sections(f.read())
    except (OSError, EOFError, UnicodeDecodeError):
        return None


def name_description(secs: dict[str, list[str]]) -> str:
    """The NAME line's description: what follows the dash in 'ls - list directory contents'."""
    name = " ".join(secs.get("NAME", []))
    parts = re.split(r"\s+-+\s+|\s-(?=\S)", name, maxsplit=1)
    return parts[1].strip() if len(parts) == 2 else ""
