"""A training run's directory through its life: checked against the command (``--force``,
``--resume`` and what a resume may change), locked for one writer, started in ``<out>.partial/``
with its settings, and kept or removed when the run fails. Used by search and distill; what a
checkpoint inside it holds is :mod:`prunekit.checkpoint`'s.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .checkpoint import checkpoint_dirs
from .io import fsync_path


def resume_free_settings(options: tuple[str, ...], *silent: str) -> frozenset[str]:
    """The settings a --resume may change: those of the command-line ``options`` (``--stage1-lr``:
    ``stage1_lr``), the output dir, and the ``silent`` ones that have no option (the library's)."""
    return frozenset({"output_dir", *silent, *(o.lstrip("-").replace("-", "_") for o in options)})


def prepare_work_dir(out: Path, settings, *, force: bool, resume: bool, resume_free: frozenset[str] | set[str],
                     options: tuple[str, ...] = ()) -> dict:
    """Check the ``<out>.partial`` dir a run writes into until it is published as ``out``.

    With ``resume`` it must exist and hold the same settings (except ``resume_free``, which may
    change: a lower learning rate after NaN steps, another device; the refusal names ``options``,
    the command-line options among them); returns the resume-free settings that changed, as
    ``{name: [before, now]}``, for the run log. Without ``resume``, an existing output needs
    ``force`` and a leftover interrupted run is cleared only with ``force``. A file at ``out`` is
    refused first (``force`` does not replace one).
    """
    from dataclasses import MISSING, asdict, fields

    from .errors import PrunekitError
    from .io import check_not_a_file, check_output_dir, partial_dir, recover_output

    work = partial_dir(out)
    if resume:
        recover_output(out)
        check_not_a_file(out)
        if not work.is_dir():
            raise PrunekitError(f"nothing to resume: {work} does not exist (run without --resume to start)")
        try:
            saved = json.loads((work / "settings.json").read_text())
        except (OSError, UnicodeDecodeError, RecursionError, ValueError):
            raise PrunekitError(f"{work}/settings.json is missing or corrupt: start over with --force instead of --resume") from None
        if not isinstance(saved, dict):
            raise PrunekitError(f"{work}/settings.json is missing or corrupt: start over with --force instead of --resume")
        current = json.loads(json.dumps(asdict(settings)))
        # a setting added after the interrupted run was made is read as its default there, or as the value
        # such runs had where the default has changed since (the settings class's OLDER_RUNS)
        defaults = {f.name: f.default for f in fields(settings) if f.default is not MISSING}
        defaults = json.loads(json.dumps({**defaults, **getattr(settings, "OLDER_RUNS", {})}))
        saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
        diff = [k for k in current if k not in resume_free and saved.get(k) != current[k]]
        if diff:
            free = ", ".join(options[:-1]) + f" and {options[-1]}" if len(options) > 1 else "".join(options) or "none"
            was = "; ".join(f"{k}: {json.dumps(saved.get(k))} there, {json.dumps(current[k])} now" for k in diff)
            raise PrunekitError(f"--resume with different settings than the interrupted run ({was}): use the same options "
                                f"(only {free} may change)")
        return {k: [saved.get(k), current[k]] for k in current if k in resume_free and k != "output_dir" and saved.get(k) != current[k]}
    recover_output(out)
    check_not_a_file(out)
    if work.exists() and out.exists() and not force:  # e.g. a run that crashed while replacing its output
        raise PrunekitError(f"{out} exists and an interrupted run is in {work}: pass --resume to finish that run "
                            f"(it replaces {out}), or --force to discard it and start over")
    check_output_dir(out, force)
    if work.exists():
        if not force:
            raise PrunekitError(f"an interrupted run is in {work}: pass --resume to continue it or --force to start over")
        shutil.rmtree(work)
    return {}


def start_work_dir(work: Path, settings_json: str) -> None:
    """Create the work dir with its settings.json in one rename (or update the settings of a resumed one).

    A run killed at any moment thus leaves either no work dir or one that ``--resume`` can read.
    """
    from .io import atomic_write_text

    work = Path(work)
    if work.is_dir():
        atomic_write_text(work / "settings.json", settings_json)
        return
    tmp = work.with_name(f".{work.name}.new")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_write_text(tmp / "settings.json", settings_json)
    fsync_path(tmp)
    os.replace(tmp, work)
    fsync_path(work.parent)


@contextlib.contextmanager
def run_work_dir(out: Path, settings, world, *, force: bool, resume: bool, resume_free: frozenset[str],
                 options: tuple[str, ...], resumable: tuple[str, ...] = ()) -> Iterator[dict]:
    """Around a whole run that writes ``out`` through its ``<out>.partial`` work dir (rank 0 of ``world``
    does the file work): the lock that keeps a second process off ``out`` (:func:`prunekit.io.lock_output`,
    taken before anything is touched, held to the end), then :func:`prepare_work_dir` (its result is
    yielded). A fresh run (not ``resume``) that fails before its first checkpoint removes the work dir
    it made: there is nothing in it to resume, and it would only block the corrected command. A
    ``KeyboardInterrupt`` (Ctrl-C, told to resume) or a :class:`ResumableError` keeps it, and so do
    the caller's ``resumable`` files in it (work a --resume reuses, such as distill's augmented data)."""
    from .distributed import on_main
    from .errors import ResumableError
    from .io import lock_output, partial_dir

    lock = on_main(world, lambda: lock_output(out))
    try:
        changed = on_main(world, lambda: prepare_work_dir(out, settings, force=force, resume=resume, resume_free=resume_free,
                                                          options=options))
        try:
            yield changed
        except Exception as e:
            if world.main and not resume and not isinstance(e, ResumableError):
                work = partial_dir(out)
                kept = checkpoint_dirs(work / "checkpoints") or any((work / name).is_file() for name in resumable)
                if work.is_dir() and not kept:
                    shutil.rmtree(work, ignore_errors=True)
            raise
    finally:
        if lock is not None:
            lock.release()
