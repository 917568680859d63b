"""Atomic file and directory writes (nothing half-written is ever left where a user looks), and JSON reads that fail in one line."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import PrunekitError


def read_json(path: str | os.PathLike, what: str = "", fix: str = "") -> Any:
    """A JSON file's content; anything wrong with it (missing, not UTF-8, not JSON, nested too deep,
    a number too long to convert) is one :class:`PrunekitError` naming the file and ``fix``."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise PrunekitError(f"{what or 'file'} not found: {path}" + (f"; {fix}" if fix else "")) from None
    except IsADirectoryError:
        raise PrunekitError(f"{path} is a directory, not a JSON file") from None
    except UnicodeDecodeError as e:
        raise PrunekitError(f"{path} is not UTF-8 text (bad byte at offset {e.start})" + (f"; {fix}" if fix else "")) from None
    try:
        return json.loads(text)
    except RecursionError:
        reason = "nested too deeply"
    except ValueError as e:  # JSONDecodeError, and Python's limit on the digits of an integer
        reason = str(e).split(";")[0][:120] or "empty"
    raise PrunekitError(f"{path} is not valid JSON ({reason})" + (f"; {fix}" if fix else ""))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse to overwrite an existing output unless ``force`` (after finishing a replacement a crash interrupted)."""
    recover_output(out)
    if out.exists() and not force:
        raise PrunekitError(f"output directory {out} already exists: pass --force to overwrite it or choose another --output")
    if out.exists() and not out.is_dir():
        raise PrunekitError(f"output path {out} exists and is not a directory")


def partial_dir(out: Path) -> Path:
    """Where a run writes until it is complete (kept across a kill, for --resume)."""
    return out.with_name(out.name + ".partial")


def _replaced(out: Path) -> Path:
    """Where :func:`publish_dir` moves an output it replaces, until the new one is in place."""
    return out.with_name(f".{out.name}.old")


def fsync_path(path: Path) -> None:
    """Make a file's content, or a dir's entries (files created, renamed or removed in it), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _journal(out: Path) -> Path:
    """Written by :func:`publish_dir` before it moves anything: the inode of the new output."""
    return out.with_name(f".{out.name}.publishing")


def recover_output(out: Path) -> None:
    """Undo what a crash inside :func:`publish_dir` left: the old output moved aside and the new one not
    yet in place (the old one is put back; the new one is still in its work dir), or both in place
    (the old one is deleted — only when ``out`` is the very dir the journal names: anything else
    there, made after the crash, leaves both untouched and is one error naming them)."""
    out = Path(out)
    old, journal = _replaced(out), _journal(out)
    if not old.exists():
        journal.unlink(missing_ok=True)
        return
    if not out.exists():
        os.replace(old, out)
        fsync_path(out.parent)
    else:
        try:
            published = int(journal.read_text().strip()) == os.stat(out).st_ino
        except (OSError, ValueError):
            published = False
        if not published:
            raise PrunekitError(f"{out} and {old} both exist and a replacement of {out} was interrupted: keep the one "
                                f"you want as {out} and delete the other")
        shutil.rmtree(old, ignore_errors=True)
    journal.unlink(missing_ok=True)


def publish_dir(work: Path, out: Path) -> None:
    """Move a finished work dir into place as ``out``, durably.

    An existing ``out`` is renamed aside, the new one renamed in, then the old one deleted; a crash
    between the two renames is repaired by :func:`recover_output` when a command next writes ``out``
    (every one checks its output first), so ``out`` is always either the old or the new output."""
    out, work = Path(out), Path(work)
    recover_output(out)
    if out.exists():
        old, journal = _replaced(out), _journal(out)
        atomic_write_text(journal, str(os.stat(work).st_ino))  # a rename keeps the inode
        os.replace(out, old)
        os.replace(work, out)
        fsync_path(out.parent)
        shutil.rmtree(old, ignore_errors=True)
        journal.unlink(missing_ok=True)
    else:
        os.replace(work, out)
        fsync_path(out.parent)


@contextlib.contextmanager
def atomic_output_dir(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temp dir beside ``out``; on success it becomes ``out``, on failure it is removed."""
    out = Path(out)
    check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp."))
    try:
        yield work
        publish_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
