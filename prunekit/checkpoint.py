"""Checkpoints as safetensors + JSON (no pickles), shared by the stages that train (search, distill).

A checkpoint is a directory ``<root>/step-NNNNNNN`` with ``state.safetensors`` (every tensor:
weights and optimizer moments) and ``state.json`` (the step, optimizer param groups and scalar
state, and whatever the stage adds). It is written into a temp dir and renamed into place, so a
kill leaves either the old or the new one; the last ``keep`` are kept. ``state.json`` holds the
SHA-256 of ``state.safetensors``: loading takes the newest checkpoint that reads back intact and
matches its checksum, falling back to the one before.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch

log = logging.getLogger(__name__)


def flatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """Add ``opt``'s state to ``tensors`` (its tensors, as ``prefix.<param id>.<key>``) and ``meta``."""
    sd = opt.state_dict()
    scalars = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    meta[prefix] = {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """The inverse of :func:`flatten_optimizer`."""
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta[prefix]["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta[prefix]["param_groups"]})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 23), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(ckpt_root: Path, step: int, tensors: dict, meta: dict, keep: int = 2) -> Path:
    """Write ``tensors`` and ``meta`` (``step`` and the tensors' checksum are added) as checkpoint ``step``.

    Atomic and durable: written into a temp dir, synced, renamed into place; the ``keep`` newest
    are kept, so when the newest turns out unreadable the one before it is still there.
    """
    from safetensors.torch import save_file

    ckpt_root = Path(ckpt_root)
    tmp = ckpt_root / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
    meta = {**meta, "step": step, "sha256": _sha256(tmp / "state.safetensors")}
    (tmp / "state.json").write_text(json.dumps(meta))
    for f in ("state.safetensors", "state.json"):
        _fsync(tmp / f)
    final = ckpt_root / f"step-{step:07d}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync(ckpt_root)
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> tuple[int, dict, dict]:
    """One checkpoint as (step, tensors, meta); raises ValueError (or OSError) when it is corrupt."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, RecursionError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"state.json is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or meta["step"] != int(path.name.split("-")[-1]):
        raise ValueError("state.json does not name this checkpoint's step")
    digest = meta.get("sha256")
    if digest is not None and _sha256(path / "state.safetensors") != digest:  # checkpoints from before checksums have none
        raise ValueError("state.safetensors does not match its checksum")
    try:
        tensors = load_file(str(path / "state.safetensors"))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a bad header
        raise ValueError(f"state.safetensors is unreadable ({str(e).splitlines()[0][:120]})") from None
    return meta["step"], tensors, meta


def load_latest_checkpoint(ckpt_root: Path) -> tuple[int, dict, dict] | None:
    """The newest intact checkpoint as (step, tensors, meta), or None when there is none.

    A corrupt one (cut short, garbled: bad JSON, a safetensors header it cannot read, or tensors
    that no longer match the checksum written with them) is skipped with a warning, and the one
    before it is used.
    """
    for d in sorted(Path(ckpt_root).glob("step-*"), reverse=True):
        try:
            return read_checkpoint(d)
        except (OSError, ValueError) as e:
            log.warning("checkpoint %s is corrupt (%s); using the one before it", d, e)
    return None


@contextlib.contextmanager
def restoring(ckpt_root: Path) -> Iterator[None]:
    """Around putting a checkpoint's state back: a checkpoint that does not fit the model is a one-line error."""
    from .errors import PrunekitError

    try:
        yield
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise PrunekitError(
            f"the checkpoint in {ckpt_root} does not fit this model ({first}); was the model changed? start over with --force"
        ) from None


def read_log(path: Path) -> list[dict]:
    """A JSONL log's records that have a step; a last line cut short by a kill is dropped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if isinstance(r, dict) and "step" in r]


def restart_log(path: Path, step: int) -> list[dict]:
    """A run log cut back to the records up to ``step`` (the steps after it are redone), rewritten atomically."""
    from .io import atomic_write_text

    history = [h for h in read_log(path) if h["step"] <= step] if step and Path(path).exists() else []
    atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in history))
    return history


def prepare_work_dir(out: Path, settings, *, force: bool, resume: bool, resume_free: set[str]) -> Path:
    """The ``<out>.partial`` dir a run writes into until it is published as ``out``.

    With ``resume`` it must exist and hold the same settings (except ``resume_free``); without,
    an existing output needs ``force`` and a leftover interrupted run is cleared only with ``force``.
    """
    from dataclasses import asdict

    from .errors import PrunekitError
    from .io import check_output_dir, partial_dir

    work = partial_dir(out)
    if resume:
        if not work.is_dir():
            raise PrunekitError(f"nothing to resume: {work} does not exist (run without --resume to start)")
        try:
            saved = json.loads((work / "settings.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise PrunekitError(f"{work}/settings.json is missing or corrupt: start over with --force instead of --resume") from None
        current = json.loads(json.dumps(asdict(settings)))
        diff = [k for k in current if k not in resume_free and saved.get(k) != current[k]]
        if diff:
            raise PrunekitError(f"--resume with different settings than the interrupted run ({', '.join(diff)}): use the same options")
    else:
        check_output_dir(out, force)
        if work.exists():
            if not force:
                raise PrunekitError(f"an interrupted run is in {work}: pass --resume to continue it or --force to start over")
            shutil.rmtree(work)
    return work


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
    os.replace(tmp, work)

