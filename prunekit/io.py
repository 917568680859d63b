"""Atomic file and directory writes (nothing half-written is ever left where a user looks), with the
permissions a plain open()/mkdir would give; the lock that keeps two processes off one output; and
JSON reads that fail in one line."""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import PrunekitError

log = logging.getLogger(__name__)


def _umask_at_import() -> int:
    """The umask, read once while nothing else runs yet (setting it is the only portable way to read it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask_at_import()


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status; elsewhere the one at import)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK


def file_mode() -> int:
    """The mode open() gives a new file (0o666 less the umask): what mkstemp's 0o600 is changed to."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode mkdir gives a new dir (0o777 less the umask): what mkdtemp's 0o700 is changed to."""
    return 0o777 & ~current_umask()


def give_plain_modes(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain open()/mkdir would have (see
    :func:`file_mode`), before it is published: files written through a temp file are created 0o600
    (mkstemp; safetensors' ``save_file``, hence ``save_pretrained``'s weights), dirs by mkdtemp 0o700."""
    fmode, dmode = file_mode(), dir_mode()
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, dmode)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, fmode)


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new uniquely named dir in ``parent`` (as tempfile.mkdtemp) with a plain mkdir's mode, so an
    output published by renaming it is as readable as any other dir the user makes."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        os.chmod(path, dir_mode())
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


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
            if hasattr(os, "fchmod"):  # mkstemp makes it 0o600: give it the mode a plain open() would
                os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse to overwrite an existing output unless ``force`` (after finishing a replacement a crash interrupted);
    a file there is refused even with ``force``, so that is said first."""
    recover_output(out)
    check_not_a_file(out)
    if out.exists() and not force:
        raise PrunekitError(f"output directory {out} already exists: pass --force to overwrite it or choose another --output")


def check_not_a_file(out: Path) -> None:
    """An output dir's path must not be an existing file (--force does not replace one)."""
    if out.exists() and not out.is_dir():
        raise PrunekitError(f"output path {out} exists and is not a directory: choose another --output")


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
        if journal.exists():  # (no write at all otherwise: a read-only folder refuses even the unlink of nothing)
            journal.unlink()
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
    """Move a finished work dir into place as ``out``, durably, with plain modes (:func:`give_plain_modes`).

    An existing ``out`` is renamed aside, the new one renamed in, then the old one deleted; a crash
    between the two renames is repaired by :func:`recover_output` when a command next writes ``out``
    (every one checks its output first), so ``out`` is always either the old or the new output."""
    out, work = Path(out), Path(work)
    recover_output(out)
    give_plain_modes(work)
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


# ------------------------------------------------------------------------------------------------
# The one way a verb writes an output
# What to do about a write that failed, by errno.
WRITE_FIXES = {
    errno.ENOSPC: "free space on that file system, or write elsewhere (-o)",
    errno.EDQUOT: "free space within your disk quota, or write elsewhere (-o)",
    errno.EROFS: "that file system is read-only: write elsewhere (-o)",
    errno.EACCES: "no permission to write there: choose another -o, or fix the folder's permissions",
    errno.EPERM: "no permission to write there: choose another -o, or fix the folder's permissions",
    errno.EFBIG: "the file is larger than that file system allows: write elsewhere (-o)",
    errno.EIO: "the disk reported an I/O error: check it, or write elsewhere (-o)",
}


def write_error(e: BaseException, target: Path) -> PrunekitError | None:
    """The one line for ``e`` when it is a failed write (a full disk, a read-only or unwritable
    folder, ...): the path, the cause and the fix, and that ``target`` was left as it was. None for
    any other error. Knows OSError and safetensors' errors (which carry the OS error in their text)."""
    code = getattr(e, "errno", None) if isinstance(e, OSError) else None
    if code is None and type(e).__name__ == "SafetensorError":
        import re

        m = re.search(r"os error (\d+)", str(e))
        code = int(m.group(1)) if m else None
    if code not in WRITE_FIXES:
        return None
    path = getattr(e, "filename", None) or target
    return PrunekitError(f"cannot write {path}: {os.strerror(code)}; {WRITE_FIXES[code]}. "
                         f"Nothing was written in place of {target}")


@contextlib.contextmanager
def output_writes(target: Path) -> Iterator[None]:
    """Writes for the output ``target``: a failed one is :func:`write_error`'s one line."""
    try:
        yield
    except Exception as e:
        err = write_error(e, Path(target))
        if err is None:
            raise
        raise err from None


def check_output_file(out: Path, force: bool) -> None:
    """A file output (an .onnx, a report): not a dir, and replaced only with ``force``."""
    if out.is_dir():  # before "already exists": --force would not help
        raise PrunekitError(f"{out} is a directory: give a file name, such as {out / 'model.onnx'} for an export")
    if out.exists() and not force:
        raise PrunekitError(f"{out} already exists: pass --force to overwrite it or choose another -o")


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove what a killed writer of ``out`` left beside it (its temp dirs and temp files); call only
    while holding ``out``'s lock, so no live writer's files are touched. Returns what was removed."""
    out = Path(out)
    stale = [*out.parent.glob(f".{out.name}.tmp.*"), *out.parent.glob(f".{out.name}.*.tmp")]
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
    if stale:
        log.info("removed %d temp file(s) a killed run left beside %s", len(stale), out)
    return stale


@contextlib.contextmanager
def output_slot(out: Path, force: bool, kind: str = "dir") -> Iterator[Path]:
    """Everything a verb needs to write ``out`` (a ``dir`` or a ``file``) safely, in one place:
    the one-writer lock (:func:`lock_output`), the ``--force`` rule, the removal of a killed run's
    leftovers, and a fresh work dir beside ``out`` (same file system, so publishing is a rename),
    removed at the end whatever happens. A failed write anywhere inside is :func:`write_error`'s
    one line. The caller builds the output in the work dir and publishes it (a rename) before the
    block ends."""
    out = Path(out)
    with output_writes(out):
        lock = lock_output(out)
    try:
        with output_writes(out):
            if kind == "dir":
                check_output_dir(out, force)
            else:
                check_output_file(out, force)
            remove_stale_temps(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            work = make_temp_dir(out.parent, f".{out.name}.tmp.")
        try:
            with output_writes(out):
                yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def atomic_output_dir(out: Path, force: bool) -> Iterator[Path]:
    """Yield a work dir (see :func:`output_slot`); on success it becomes ``out``, on failure it is removed."""
    out = Path(out)
    with output_slot(out, force, "dir") as work:
        yield work
        publish_dir(work, out)


def write_output_file(out: Path, data: bytes, force: bool) -> None:
    """Write a one-file output (a report) the way :func:`output_slot` writes everything."""
    out = Path(out)
    with output_slot(out, force, "file") as work:
        atomic_write_bytes(work / out.name, data)
        os.replace(work / out.name, out)


def rescue(data: bytes, name: str) -> Path | None:
    """Keep ``data`` (results that took long to make) in the system's temp dir after the output's
    write failed, so that only the copy has to be redone; None when that fails too."""
    try:
        fd, path = tempfile.mkstemp(prefix=f"prunekit-{name}-", suffix=Path(name).suffix or ".json")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return Path(path)
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------
# One process at a time on an output
def lock_path(out: Path) -> Path:
    """The lock file of an output: beside it, hidden, so it is neither in the output nor in its work dir."""
    out = Path(out)
    return out.with_name(f".{out.name}.lock")


class OutputLock:
    """An exclusive ``flock`` on :func:`lock_path`, held by this process until :meth:`release` (or its
    death: the kernel drops it, so a kill -9 leaves nothing that blocks a --resume)."""

    def __init__(self, path: Path, fd: int, made: list | None = None):
        self.path, self.fd = path, fd
        self.made = made or []  # directories the lock made for the output, deepest first

    def release(self) -> None:
        """Delete the lock file (while still holding it: a process that opened it meanwhile sees it gone
        and makes a new one), then unlock."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1
        for d in self.made:  # a run refused or failed before it made anything: leave no empty parents
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty


def lock_output(out: Path) -> OutputLock | None:
    """Take the exclusive lock on writing ``out`` (without waiting), or raise the one-line error that
    names the process holding it. None where there is no ``fcntl`` (Windows) or the file system
    cannot lock (then the run goes on unlocked, with a warning)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks of this kind
        return None
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise PrunekitError(f"-o {out} names no directory of its own: give a new directory, e.g. {Path(out, 'run')}")
    path = lock_path(out)
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, out) or PrunekitError(f"cannot create the directory of {out}: {e.strerror or e}") from None
    for _ in range(100):  # a retry only when the holder deleted the file between our open and our lock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0),
                         file_mode())
        except OSError as e:
            why = "it is a symbolic link: remove it" if e.errno == errno.ELOOP else (e.strerror or str(e))
            raise write_error(e, out) or PrunekitError(
                f"cannot create the lock file {path} (to keep other processes off {out}): {why}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = int(os.pread(fd, 32, 0).decode("ascii", "replace").strip() or 0)
            except (OSError, ValueError):
                pid = 0
            os.close(fd)
            who = f" (pid {pid})" if pid > 0 else ""
            raise PrunekitError(f"another prunekit process{who} is writing {out}; wait for it to finish or stop it") from None
        except OSError as e:  # e.g. ENOLCK: a network file system without locks
            os.close(fd)
            log.warning("cannot lock %s (%s): running without the lock that keeps other processes off %s",
                        path, e.strerror or e, out)
            return None
        try:
            same = os.lstat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # released and deleted by its holder after we opened it: lock the new one
            os.close(fd)
            continue
        lock = OutputLock(path, fd, missing)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except BaseException:  # a full disk: no lock file (nor the dirs made for it) is left behind
            lock.release()
            raise
        return lock
    raise PrunekitError(f"cannot lock {path}: it keeps being replaced by other processes")
